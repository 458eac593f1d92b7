"""Task heads against the official definitions (docs/dinov3-semantics.md), on ViT and ConvNeXt backbones."""

import pytest
import torch
import torch.nn.functional as F

from dinov3_deploy.reference.factory import build_task_model, create_backbone
from dinov3_deploy.reference.models.heads import GlobalBatchNorm2d, bins_to_depth, select_layers


def _eval_with_stats(model):
    with torch.no_grad():
        for m in model.head.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
                m.weight.normal_()
                m.bias.normal_()
    return model.eval()


def test_select_layers_official_indices():
    assert select_layers("last", 12) == [11]
    assert select_layers("four_last", 12) == [8, 9, 10, 11]
    assert select_layers("four_even", 12) == [2, 5, 8, 11]
    assert select_layers("four_even", 40) == [9, 19, 29, 39]
    assert select_layers("four_even", 32) == [7, 15, 23, 31]
    # the release hard-codes the paper's ViT-L indices (the formula would give [5, 11, 17, 23])
    assert select_layers("four_even", 24) == [4, 11, 17, 23]
    assert select_layers("four_even", 4) == [0, 1, 2, 3]  # ConvNeXt stages
    with pytest.raises(ValueError):
        select_layers("middle", 12)


@pytest.mark.parametrize("name, n_extra", [("vit_tiny_test", 4), ("convnext_tiny_test", 0)])
def test_get_intermediate_layers_selection_and_packing(name, n_extra):
    """The release's argument rules, the same on both families: int n = the last n blocks (ConvNeXt:
    stages), a sequence = those 0-based indices; results are maps or (map, cls[, extra]) tuples."""
    torch.manual_seed(0)
    model = create_backbone(name).eval()
    depth = model.n_blocks
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        last_two = model.get_intermediate_layers(x, n=2)
        by_index = model.get_intermediate_layers(x, n=[depth - 2, depth - 1])
        assert len(last_two) == 2
        for a, b in zip(last_two, by_index):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(last_two[0], model.get_intermediate_layers(x, n=[depth - 2])[0])  # in block order
        # the last block, normed, is what forward_features returns
        feats = model.forward_features(x)
        (tokens, cls, extra), = model.get_intermediate_layers(x, n=1, return_class_token=True,
                                                               return_extra_tokens=True)
        torch.testing.assert_close(tokens, feats["x_norm_patchtokens"])
        torch.testing.assert_close(cls, feats["x_norm_clstoken"])
        assert extra.shape == (2, n_extra, tokens.shape[-1])
        pairs = model.get_intermediate_layers(x, n=[0], reshape=True, return_class_token=True)
        assert len(pairs) == 1 and len(pairs[0]) == 2 and pairs[0][0].ndim == 4 and pairs[0][1].ndim == 2
        (m, e), = model.get_intermediate_layers(x, n=[depth - 1], return_extra_tokens=True)
        assert e.shape[1] == n_extra and m.shape == tokens.shape
    for bad in (depth + 1, [depth], [-1], []):
        with pytest.raises(ValueError, match="out of range"):
            model.get_intermediate_layers(x, n=bad)


@pytest.mark.parametrize("backbone, layers", [("vit_tiny_test", "four_last"), ("convnext_tiny_test", "four_even"),
                                              ("vit_tiny_swiglu_test", "last")])
def test_linear_seg_head_matches_manual_computation(backbone, layers):
    model = _eval_with_stats(build_task_model("seg", backbone, n_classes=5, layers=layers))
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        maps = model.backbone.get_intermediate_layers(x, n=model.layer_ids, reshape=True, norm=True)
        size = maps[0].shape[-2:]
        feats = torch.cat([F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps], 1)
        bn = model.head.batchnorm_layer
        normed = (feats - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
        normed = normed * bn.weight[:, None, None] + bn.bias[:, None, None]
        expected = F.conv2d(normed, model.head.conv.weight, model.head.conv.bias)
        out = model(x)["logits"]
    # the resolution of the first map read: the ViT patch grid (x/16); ConvNeXt's four_even starts
    # at stage 0, whose map has stride 4 (the release's maps are not resized to a common grid)
    stride = 4 if backbone.startswith("convnext") else 16
    assert out.shape == (2, 5, 64 // stride, 96 // stride)
    assert feats.shape[1] == model.head.conv.in_channels
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    # predict: bilinear (align_corners=False) upsampling of the same logits
    up = model.predict(x)
    torch.testing.assert_close(up, F.interpolate(out, size=(64, 96), mode="bilinear", align_corners=False))
    assert model.predict(x, rescale_to=(10, 20)).shape == (2, 5, 10, 20)


def test_dropout2d_only_in_training_and_drops_whole_channels():
    model = build_task_model("seg", "vit_tiny_test", n_classes=3)
    maps = [torch.ones(4, 64, 3, 3)]
    model.head.train()
    x = model.head.dropout(maps[0])
    per_channel = x.flatten(2)
    assert ((per_channel == 0).all(-1) | (per_channel != 0).all(-1)).all()  # channel-wise
    assert (per_channel == 0).any() and model.head.dropout.p == pytest.approx(0.1)
    model.eval()
    torch.testing.assert_close(model.head.dropout(maps[0]), maps[0])
    # an explicit channel mask replaces the random draw (what the trainer uses)
    mask = torch.ones(4, 64, 1, 1)
    mask[:, :10] = 0
    model.head.train()
    a = model.head(maps, mask)
    b = model.head([maps[0] * mask], torch.ones(4, 64, 1, 1))
    torch.testing.assert_close(a, b)


def test_global_batchnorm_is_batchnorm_in_one_process():
    torch.manual_seed(0)
    ours, ref = GlobalBatchNorm2d(6), torch.nn.BatchNorm2d(6)
    x = torch.randn(4, 6, 5, 7) * 3 + 1
    for _ in range(3):
        torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(ours.running_var, ref.running_var)
    assert ours.state_dict().keys() == ref.state_dict().keys()


def test_classification_head_uses_cls_and_mean_patch():
    model = build_task_model("cls", "vit_tiny_test", n_classes=7)
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        f = model.backbone.forward_features(x)
        feat = torch.cat([f["x_norm_clstoken"], f["x_norm_patchtokens"].mean(1)], -1)
        expected = model.head.linear(feat)
        torch.testing.assert_close(model(x)["logits"], expected)
    assert model.head.linear.in_features == 2 * 64


def test_bins_to_depth():
    centers = torch.linspace(0.001, 10.0, 8)
    # equal logits -> equal weights -> the mean bin centre
    d = bins_to_depth(torch.zeros(1, 8, 2, 2), centers)
    torch.testing.assert_close(d, torch.full((1, 1, 2, 2), float(centers.mean())))
    # one bin dominating -> close to its centre (relu(x) + 0.1 keeps the others slightly on)
    logits = torch.zeros(1, 8, 1, 1)
    logits[0, 5] = 1000.0
    assert abs(float(bins_to_depth(logits, centers)) - float(centers[5])) < 0.01
    # negative logits are clamped by the relu: same as zeros
    torch.testing.assert_close(bins_to_depth(-torch.rand(1, 8, 1, 1), centers), bins_to_depth(torch.zeros(1, 8, 1, 1),
                                                                                                  centers))


@pytest.mark.parametrize("backbone", ["vit_tiny_test", "convnext_tiny_test"])
def test_depth_heads_output_metres_in_range(backbone):
    x = torch.randn(2, 3, 64, 96)
    linear = build_task_model("depth", backbone, n_bins=16, min_depth=0.5, max_depth=4.0)
    y = linear(x)["depth"]
    stride = 32 if backbone.startswith("convnext") else 16  # the last stage / the patch grid
    assert y.shape == (2, 1, 64 // stride, 96 // stride) and (y >= 0.5).all() and (y <= 4.0).all()
    dpt = build_task_model("depth", backbone, head_type="dpt", layers="four_even", n_bins=16, dpt_features=16)
    y = dpt(x)["depth"]
    assert y.shape == (2, 1, 64, 96)  # DPT reassembles to 4x the grid and upsamples twice more
    assert (y >= 0.001).all() and (y <= 10.0).all()
    assert dpt.predict(x, rescale_to=(32, 48)).shape == (2, 1, 32, 48)
    with pytest.raises(ValueError, match="4 layers"):
        build_task_model("depth", backbone, head_type="dpt", layers="last")


def test_seg_model_exports_with_dynamic_batch_and_resolution():
    # The exporter traces TaskModel.forward with dynamic shapes: no data-dependent Python control flow.
    from torch.export import Dim, export

    model = build_task_model("seg", "vit_tiny_test", n_classes=4, layers="four_last")
    dims = {"x": {0: Dim("b", min=1, max=8), 2: 16 * Dim("h", min=2, max=64), 3: 16 * Dim("w", min=2, max=64)}}
    ep = export(model, (torch.randn(2, 3, 64, 48),), dynamic_shapes=dims)
    x = torch.randn(3, 3, 32, 80)
    torch.testing.assert_close(ep.module()(x)["logits"], model(x)["logits"], rtol=1e-4, atol=1e-4)


def test_depth_predict_centre_pads_to_the_patch_multiple():
    model = build_task_model("depth", "vit_tiny_test", n_bins=8)
    x = torch.randn(1, 3, 40, 50)  # pads to 48 x 64: 4 rows top/bottom, 7 left / 7 right
    with torch.no_grad():
        padded = F.pad(x, (7, 7, 4, 4))
        full = F.interpolate(model(padded)["depth"], size=(48, 64), mode="bilinear", align_corners=False)
        torch.testing.assert_close(model.predict(x), full[..., 4:44, 7:57])
    assert model.predict(x, rescale_to=(20, 25)).shape == (1, 1, 20, 25)
