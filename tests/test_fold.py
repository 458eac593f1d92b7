"""Exact folds: the folded model computes what the original does (fp32, relative error <= 1e-6) on
release-like and on outlier weights, never changes the caller's model, and turns the stress model
that a plain fp16 cast breaks into one that runs finite in fp16."""

import copy

import pytest
import torch
from precision_helpers import FP16_MAX, branch_absmax, fp16_parity, rel_err, synthetic_batch, synthetic_pixels
from torch import nn

from dinov3_deploy.reference import create_backbone
from dinov3_deploy.reference.models.convnext import ConvNeXtBlock
from dinov3_deploy.reference.models.fold import (
    PIXEL_CENTRE,
    fold_all,
    fold_batchnorm,
    fold_convnext_gamma,
    fold_layerscale,
    fold_normalization,
)
from dinov3_deploy.reference.models.layers import LayerScale
from dinov3_deploy.reference.models.random_init import release_like_
from dinov3_deploy.reference.models.task_model import HeadSpec, TaskModel

INITS = ["release-like", "outliers"]
EXACT = 1e-6
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NORM_FOLD = 5e-6  # folded vs unfolded, both fp32 (see test_normalization_fold_takes_pixels)


def _backbone(name: str, init: str) -> nn.Module:
    torch.manual_seed(0)
    return create_backbone(name, init=init)


def _seg_model(name: str, init: str) -> TaskModel:
    bb = _backbone(name, init)
    layers = "four_last" if name.startswith("vit") else "last"
    model = TaskModel(bb, HeadSpec("seg", name, n_classes=5, layers=layers))
    torch.manual_seed(1)
    release_like_(model.head)  # non-trivial BatchNorm statistics and affine
    return model.eval()


def _features(model, x) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        f = model.forward_features(x)
    return {k: v for k, v in f.items() if v.numel()}


def _assert_same(a: dict, b: dict, tol: float = EXACT) -> None:
    errs = {k: rel_err(a[k], b[k]) for k in b}
    assert all(e <= tol for e in errs.values()), errs


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _untouched(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def _assert_branches_back_in_range(model, folded, x) -> None:
    """The raw branch outputs that overflowed fp16 are back to the residual update's scale."""
    raw = branch_absmax(model, x)
    assert max(raw.values()) > FP16_MAX
    assert max(branch_absmax(folded, x, list(raw)).values()) < 100


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("name", ["vit_tiny_test", "vit_tiny_swiglu_test"])
def test_layerscale_fold_is_exact(name, init):
    model = _backbone(name, init)
    before = _snapshot(model)
    x = synthetic_batch(64, 80)
    folded = fold_layerscale(model)
    assert not any(isinstance(m, LayerScale) for m in folded.modules())
    _assert_same(_features(folded, x), _features(model, x))
    assert _untouched(model, before) and sum(isinstance(m, LayerScale) for m in model.modules()) == 2 * model.n_blocks
    if init == "outliers":
        _assert_branches_back_in_range(model, folded, x)


@pytest.mark.parametrize("init", INITS)
def test_convnext_gamma_fold_is_exact(init):
    model = _backbone("convnext_tiny_test", init)
    before = _snapshot(model)
    x = synthetic_batch(64, 96)
    folded = fold_convnext_gamma(model)
    blocks = [m for m in folded.modules() if isinstance(m, ConvNeXtBlock)]
    assert blocks and all(bool((b.gamma == 1).all()) for b in blocks)
    _assert_same(_features(folded, x), _features(model, x))
    assert _untouched(model, before)
    if init == "outliers":
        _assert_branches_back_in_range(model, folded, x)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("name", ["vit_tiny_test", "convnext_tiny_test"])
def test_seg_head_batchnorm_fold_is_exact(name, init):
    model = _seg_model(name, init)
    before = _snapshot(model)
    x = synthetic_batch(64, 64)
    folded = fold_batchnorm(model)
    assert isinstance(folded.head.batchnorm_layer, nn.Identity)
    with torch.no_grad():
        _assert_same(folded(x), model(x))
        # The head alone, on maps of the BatchNorm's scale and with the trainer's channel mask
        # (which multiplies before the BatchNorm): the folded conv still computes the same.
        maps = [torch.randn(2, folded.head.conv.in_channels, 4, 5) * 3 + 1]
        mask = (torch.rand(2, maps[0].shape[1], 1, 1) > 0.1).float() / 0.9
        _assert_same({"m": folded.head(maps, mask)}, {"m": model.head(maps, mask)})
    assert _untouched(model, before)


def test_depth_head_batchnorm_fold_is_exact():
    bb = _backbone("vit_tiny_test", "outliers")
    model = TaskModel(bb, HeadSpec("depth", "vit_tiny_test", layers="four_last", n_bins=16))
    torch.manual_seed(1)
    release_like_(model.head)
    model.eval()
    folded, report = fold_all(model)
    assert [str(f) for f in report if f.kind == "batchnorm"] == ["batchnorm: head.batchnorm_layer -> head.conv"]
    x = synthetic_batch(64, 64)
    with torch.no_grad():
        _assert_same(folded(x), model(x))


def test_batchnorm_fold_refuses_training_mode():
    model = _seg_model("vit_tiny_test", "release-like").train()
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(model)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("name", ["vit_tiny_test", "convnext_tiny_test"])
def test_normalization_fold_takes_pixels(name, init):
    """Both first convs have no padding (kernel = stride), so the fold is exact at the borders too;
    the input size is not a multiple of the ViT patch (the stride crops the same pixels).

    Exact in exact arithmetic; in fp32 the folded conv (taking pixels - PIXEL_CENTRE) rounds no
    worse than the unfolded one, both measured against float64 (measured 6.0e-7 vs 5.2e-7 ViT,
    1.8e-7 vs 1.9e-7 ConvNeXt; raw 0..255 pixels, whose sum the bias then cancels, gave 2.1x).
    Folded vs unfolded after the ViT blocks is two such roundings amplified: 1e-6..5e-6 measured
    over seeds and inits, hence NORM_FOLD rather than the scale folds' 1e-6."""
    model = _backbone(name, init)
    before = _snapshot(model)
    pixels = synthetic_pixels(64, 72)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    x = (pixels / 255 - mean) / std
    folded = fold_normalization(model, MEAN, STD)
    _assert_same(_features(folded, pixels - PIXEL_CENTRE), _features(model, x), tol=NORM_FOLD)
    assert _untouched(model, before)

    conv = model.patch_embed.proj if name.startswith("vit") else model.downsample_layers[0][0]
    fconv = folded.patch_embed.proj if name.startswith("vit") else folded.downsample_layers[0][0]
    with torch.no_grad():
        truth = nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(), conv.stride)
        assert rel_err(fconv(pixels - PIXEL_CENTRE), truth) <= max(1.5 * rel_err(conv(x), truth), EXACT / 10)


def test_normalization_fold_refuses_a_padded_first_conv():
    model = _backbone("convnext_tiny_test", "release-like")
    model.downsample_layers[0][0].padding = (1, 1)  # zero padding would read black pixels after folding
    with pytest.raises(ValueError, match="pads"):
        fold_normalization(model, MEAN, STD)


def test_fold_all_reports_what_it_folded():
    model = _seg_model("vit_tiny_swiglu_test", "outliers")
    before = _snapshot(model)
    folded, report = fold_all(model)
    kinds = [f.kind for f in report]
    assert kinds.count("layerscale") == 2 * model.backbone.n_blocks and kinds.count("batchnorm") == 1
    assert "normalization" not in kinds  # changes the input contract: only on request
    assert {"kind": "layerscale", "source": "backbone.blocks.0.ls2", "target": "backbone.blocks.0.mlp.w3"} in [
        f.to_dict() for f in report
    ]
    assert str(report[-1]) == "batchnorm: head.batchnorm_layer -> head.conv"
    assert fold_all(folded)[1] == []  # nothing left to fold
    assert _untouched(model, before)

    folded_px, report_px = fold_all(model, normalization=(MEAN, STD))
    assert [f.target for f in report_px if f.kind == "normalization"] == ["backbone.patch_embed.proj"]
    x = synthetic_batch(64, 64)
    with torch.no_grad():
        _assert_same(folded(x), model(x))
        _assert_same(folded_px(synthetic_pixels(64, 64) - PIXEL_CENTRE), model(x), tol=NORM_FOLD)

    cnx = _seg_model("convnext_tiny_test", "outliers")
    kinds = [f.kind for f in fold_all(cnx)[1]]
    assert kinds.count("convnext_gamma") == sum(cnx.backbone.cfg.depths) and kinds.count("batchnorm") == 1


@pytest.mark.parametrize("name", ["vit_tiny_test", "vit_tiny_swiglu_test", "convnext_tiny_test", "vits16"])
def test_folded_stress_model_runs_finite_in_fp16(name):
    """A plain .half() of the outliers model computes inf; after fold_all the whole model in fp16
    (LayerNorm statistics in fp32, as the layers do) is finite and within the fp16 parity thresholds
    (measured: seg logits rel_fro ~1e-3, min token cosine > 0.99999)."""
    model = _seg_model(name, "outliers")
    x = synthetic_batch(64, 64)
    with torch.no_grad():
        ref = model(x)
        assert not torch.isfinite(copy.deepcopy(model).half()(x.half())["logits"]).all()
        folded, _ = fold_all(model)
        out = folded.half()(x.half())
    assert torch.isfinite(out["logits"]).all()
    rows = fp16_parity(ref, out, task="seg")
    assert all(r.passed for r in rows), [r.to_dict() for r in rows]
