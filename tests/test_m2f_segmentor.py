"""The Mask2Former segmentor: the release's key layout and parameter counts at full size (meta
device), a small vits16 / hidden-256 segmentor on the CPU (forward, semantic inference against its
literal formula, masked attention against torch's MultiheadAttention), and checkpoint round trips
in Meta's layout and ours."""

import math

import pytest
import torch
import torch.nn.functional as F

from dinov3_deploy.errors import CheckpointError, DeployError, InputShapeError
from dinov3_deploy.reference import create_segmentor
from dinov3_deploy.reference.formats.m2f_checkpoint import save_m2f_head
from dinov3_deploy.reference.models.m2f_pixel_decoder import sine_position_encoding
from dinov3_deploy.reference.models.m2f_segmentor import four_even_layers
from dinov3_deploy.reference.models.m2f_transformer_decoder import MASK_BIAS, Attention, attention_bias

pytestmark = pytest.mark.usefixtures("one_thread")


def bn(prefix: str, c: int) -> dict:
    return {f"{prefix}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()}


def norm(prefix: str, c: int) -> dict:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,)}


def linear(prefix: str, cin: int, cout: int) -> dict:
    return {f"{prefix}.weight": (cout, cin), f"{prefix}.bias": (cout,)}


def deform(prefix: str, d: int, levels: int, value: int) -> dict:
    # 16 heads, 4 points
    return (linear(f"{prefix}.sampling_offsets", d, 16 * levels * 4 * 2) | linear(f"{prefix}.attention_weights", d,
            16 * levels * 4) | linear(f"{prefix}.value_proj", d, value) | linear(f"{prefix}.output_proj", value, d))


def release_head_keys(D: int, h: int, C: int) -> dict:
    """The head file's keys and shapes, written from the architecture's description (not from the model)."""
    a, p, t = "segmentation_model.0.", "segmentation_model.1.pixel_decoder.", "segmentation_model.1.predictor."
    keys = {f"{a}level_embed": (3, D), f"{a}up.weight": (D, D, 2, 2), f"{a}up.bias": (D,)}
    for i in (1, 2, 3, 4):
        keys |= bn(f"{a}norm{i}", D)
    for idx, cin in ((0, 3), (3, 64), (6, 64)):
        keys[f"{a}spm.stem.{idx}.weight"] = (64, cin, 3, 3)
        keys |= bn(f"{a}spm.stem.{idx + 1}", 64)
    for name, cin, cout in (("conv2", 64, 128), ("conv3", 128, 256), ("conv4", 256, 256)):
        keys[f"{a}spm.{name}.0.weight"] = (cout, cin, 3, 3)
        keys |= bn(f"{a}spm.{name}.1", cout)
    for i, cin in ((1, 64), (2, 128), (3, 256), (4, 256)):
        keys |= {f"{a}spm.fc{i}.weight": (D, cin, 1, 1), f"{a}spm.fc{i}.bias": (D,)}
    extractors = [f"{a}interactions.{i}.extractor" for i in range(4)]
    extractors += [f"{a}interactions.3.extra_extractors.{j}" for j in range(2)]
    for e in extractors:
        keys |= norm(f"{e}.query_norm", D) | norm(f"{e}.feat_norm", D) | norm(f"{e}.ffn_norm", D)
        keys |= deform(f"{e}.attn", D, 1, D // 2)
        keys |= linear(f"{e}.ffn.fc1", D, D // 4) | linear(f"{e}.ffn.fc2", D // 4, D)
        keys |= {f"{e}.ffn.dwconv.dwconv.weight": (D // 4, 1, 3, 3), f"{e}.ffn.dwconv.dwconv.bias": (D // 4,)}
    for i in range(3):
        keys |= {f"{p}input_convs.{i}.0.weight": (h, D, 1, 1), f"{p}input_convs.{i}.0.bias": (h,)}
        keys |= norm(f"{p}input_convs.{i}.1", h)
    keys[f"{p}encoder.level_encoding"] = (3, h)
    for j in range(6):
        e = f"{p}encoder.encoder.layers.{j}"
        keys |= deform(f"{e}.self_attn", h, 3, h) | norm(f"{e}.norm1", h) | norm(f"{e}.norm2", h)
        keys |= linear(f"{e}.linear1", h, 4096) | linear(f"{e}.linear2", 4096, h)
    keys |= {f"{p}mask_feature.weight": (h, h, 1, 1), f"{p}mask_feature.bias": (h,)}
    keys |= {f"{p}lateral_convs.0.weight": (h, D, 1, 1), f"{p}output_convs.0.weight": (h, h, 3, 3)}
    keys |= norm(f"{p}lateral_convs.0.norm", h) | norm(f"{p}output_convs.0.norm", h)
    for j in range(9):
        for layer, attn in (("transformer_self_attention_layers", "self_attn"),
                            ("transformer_cross_attention_layers", "multihead_attn")):
            x = f"{t}{layer}.{j}"
            keys |= {f"{x}.{attn}.in_proj_weight": (3 * h, h), f"{x}.{attn}.in_proj_bias": (3 * h,)}
            keys |= linear(f"{x}.{attn}.out_proj", h, h) | norm(f"{x}.norm", h)
        x = f"{t}transformer_ffn_layers.{j}"
        keys |= linear(f"{x}.linear1", h, 4096) | linear(f"{x}.linear2", 4096, h) | norm(f"{x}.norm", h)
    keys |= norm(f"{t}post_norm", h) | linear(f"{t}class_embed", h, C + 1)
    keys |= {f"{t}query_feat.weight": (100, h), f"{t}query_embed.weight": (100, h), f"{t}level_embed.weight": (3, h)}
    for i in range(3):
        keys |= linear(f"{t}mask_embed.layers.{i}", h, h)
    return keys


@pytest.mark.parametrize("name,D,total,head,parts", [
    ("vit7b16", 4096, 7643.5, 927.4, (227.1, 233.7, 466.6)),
    ("vitl16", 1024, 995.0, 691.8, None),
])
def test_full_size_counts_and_the_release_head_keys(name, D, total, head, parts):
    model = create_segmentor(name, device="meta")
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    adapter, m2f = model.segmentation_model
    assert round(count(model), 1) == total
    assert round(count(model) - count(model.backbone), 1) == head
    if parts:
        assert (round(count(adapter) - count(model.backbone), 1), round(count(m2f.pixel_decoder), 1),
                round(count(m2f.predictor), 1)) == parts
    got = {k: tuple(v.shape) for k, v in model.head_state_dict().items()}
    assert len(got) == 479
    assert got == release_head_keys(D, 2048, 150)
    assert model.layers == {"vit7b16": [9, 19, 29, 39], "vitl16": [4, 11, 17, 23]}[name]


def test_four_even_layers_of_the_release():
    assert four_even_layers(12) == [2, 5, 8, 11]
    assert four_even_layers(32) == [7, 15, 23, 31]


@pytest.fixture(scope="module")
def small():
    return create_segmentor("vits16", hidden_dim=256)


@pytest.mark.parametrize("hw", [(64, 64), (96, 128)])
def test_small_segmentor_forward_and_predict(small, hw):
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        out = small(x)
        scores = small.predict(x)
    H, W = hw
    assert out["pred_logits"].shape == (1, 100, 151)
    assert out["pred_masks"].shape == (1, 100, H // 4, W // 4)
    assert all(torch.isfinite(v).all() for v in out.values())
    assert out["pred_masks"].std() > 0.1  # random but release-like: not a constant map
    # The literal semantic inference: upsample each query's mask logits, sigmoid, weight by the class
    # probability (softmax over C+1, "no object" dropped), sum over queries.
    probs = out["pred_logits"].softmax(-1)
    masks = F.interpolate(out["pred_masks"], size=hw, mode="bilinear", align_corners=False).sigmoid()
    want = torch.zeros(1, 150, H, W)
    for q in range(100):
        want += probs[:, q, :150, None, None] * masks[:, q, None]
    assert scores.shape == (1, 150, H, W)
    torch.testing.assert_close(scores, want, rtol=1e-5, atol=1e-5)


def test_input_must_be_a_multiple_of_32_and_convnext_is_refused(small):
    with pytest.raises(InputShapeError, match="multiples of 32"):
        small(torch.randn(1, 3, 48, 64))
    with pytest.raises(DeployError, match="ConvNeXt"):
        create_segmentor("convnext_tiny", hidden_dim=256)


def test_masked_cross_attention_matches_torch_multihead_attention():
    """Our attention with the additive finite mask against nn.MultiheadAttention with the release's
    boolean mask, where rows masked everywhere are released by index assignment (its form)."""
    torch.manual_seed(3)
    B, Q, C, heads, h, w = 2, 5, 32, 4, 3, 4
    ours = Attention(C, heads)
    ref = torch.nn.MultiheadAttention(C, heads)
    with torch.no_grad():
        ours.in_proj_weight.normal_(0, 0.3)
        ours.in_proj_bias.normal_(0, 0.1)
        ref.in_proj_weight.copy_(ours.in_proj_weight)
        ref.in_proj_bias.copy_(ours.in_proj_bias)
        ref.out_proj.load_state_dict(ours.out_proj.state_dict())
    mask_logits = torch.randn(B, Q, 2 * h, 2 * w)
    mask_logits[0, 1] = -5.0  # masked everywhere: attends everywhere
    q, kv = torch.randn(B, Q, C), torch.randn(B, h * w, C)
    with torch.no_grad():
        got = ours(q, kv, kv, attention_bias(mask_logits, (h, w)))
        m = F.interpolate(mask_logits, size=(h, w), mode="bilinear", align_corners=False)
        m = (m.sigmoid().flatten(2).unsqueeze(1).repeat(1, heads, 1, 1).flatten(0, 1) < 0.5).bool()
        m[torch.where(m.sum(-1) == m.shape[-1])] = False
        want = ref(q.transpose(0, 1), kv.transpose(0, 1), kv.transpose(0, 1), attn_mask=m)[0].transpose(0, 1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    bias = attention_bias(mask_logits, (h, w))
    assert torch.isfinite(bias).all() and bias.min() == MASK_BIAS and (bias[0, 0, 1] == 0).all()


def test_sine_position_encoding_is_the_literal_formula():
    h, w, c = 3, 5, 8
    pe = sine_position_encoding(h, w, c)
    assert pe.shape == (1, c, h, w)
    half = c // 2
    for i in range(h):
        for j in range(w):
            for axis, (pos, size) in enumerate(((i + 1, h), (j + 1, w))):  # y features first, then x
                v = pos / (size + 1e-6) * 2 * math.pi
                for k in range(half):
                    arg = v / 10000 ** (2 * (k // 2) / half)
                    want = math.sin(arg) if k % 2 == 0 else math.cos(arg)
                    assert abs(float(pe[0, axis * half + k, i, j]) - want) < 1e-5


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_checkpoint_round_trips_meta_layout_and_ours(small, tmp_path):
    head_file, backbone_file, whole = tmp_path / "m2f_head.pth", tmp_path / "backbone.pth", tmp_path / "whole.pth"
    torch.save(small.head_state_dict(), head_file)
    torch.save(small.backbone.state_dict(), backbone_file)
    torch.save({"model": small.state_dict()}, whole)
    from_meta = create_segmentor("vits16", weights=backbone_file, head_weights=head_file)
    assert (from_meta.hidden_dim, from_meta.num_classes) == (256, 150)  # read from the tensors
    assert _same(from_meta, small)
    assert _same(create_segmentor("vits16", weights=whole), small)
    save_m2f_head(tmp_path / "ours", small, backbone="vits16", backbone_seed=0)
    ours = create_segmentor("vits16", head_weights=tmp_path / "ours")  # the recorded random backbone
    assert _same(ours, small)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x)["pred_masks"], small(x)["pred_masks"])


def test_head_that_does_not_fit_names_the_keys(small, tmp_path):
    sd = small.head_state_dict()
    sd.pop("segmentation_model.0.up.bias")
    sd["segmentation_model.1.predictor.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        create_segmentor("vits16", head_weights=sd)
    assert "segmentation_model.0.up.bias" in str(err.value) and "predictor.extra.weight" in str(err.value)
    with pytest.raises(CheckpointError, match="width 384"):
        create_segmentor("vitb16", head_weights=small.head_state_dict())
    save_m2f_head(tmp_path / "ours", small, backbone="vits16", backbone_seed=0)
    with pytest.raises(CheckpointError, match="for 'vits16'"):
        create_segmentor("vitb16", head_weights=tmp_path / "ours")
    torch.save(small.head_state_dict(), tmp_path / "head.pth")
    with pytest.raises(CheckpointError, match="head without its backbone"):
        create_segmentor("vits16", weights=tmp_path / "head.pth")  # the head file in the backbone's place
