"""Independent-implementation parity with timm: `Eva` `vit_*_patch16_dinov3[_qkvb]` and the DINOv3
`convnext_*` weights. Tiny configs, every weight randomised, fp32 CPU, relative error <= 1e-5,
both directions of the conversion."""

import pytest
import torch

timm = pytest.importorskip("timm")

from parity_helpers import randomize_, rel_err  # noqa: E402

from dinov3_deploy.reference import ViTConfig, create_backbone, get_config  # noqa: E402
from dinov3_deploy.reference.formats.checkpoints import detect_source  # noqa: E402
from dinov3_deploy.reference.formats.convert_hf import rope_periods  # noqa: E402
from dinov3_deploy.reference.formats.convert_timm import official_to_timm, timm_to_official  # noqa: E402

TOL = 1e-5


def ours_tokens(f: dict) -> torch.Tensor:
    return torch.cat([f["x_norm_clstoken"][:, None], f["x_storage_tokens"], f["x_norm_patchtokens"]], dim=1)

VIT_7B_TINY = ViTConfig("vit7b_tiny_test", 128, 2, 1, ffn_layer="swiglu", ffn_ratio=3, ffn_align=64,
                        qkv_bias=False, mask_k_bias=False, local_cls_norm=True)

# ours -> (timm variant, kwargs shrinking it to the tiny config)
TIMM = {
    "vit_tiny_test": ("vit_small_patch16_dinov3_qkvb", dict(embed_dim=64, depth=4, num_heads=2)),
    "vit_tiny_swiglu_test": ("vit_small_plus_patch16_dinov3_qkvb", dict(embed_dim=64, depth=4, num_heads=2)),
    "vit7b_tiny": ("vit_7b_patch16_dinov3", dict(embed_dim=128, depth=2, num_heads=1)),
}


def _cfg(name):
    return VIT_7B_TINY if name == "vit7b_tiny" else get_config(name)


def _timm_vit(name, seed):
    variant, kw = TIMM[name]
    return randomize_(timm.create_model(variant, pretrained=False, num_classes=0, **kw), seed=seed).eval()


def _timm_prenorm(model, x):
    """Output of the last block (before the final norm), caught with a hook."""
    seen = {}
    h = model.blocks[-1].register_forward_hook(lambda m, i, o: seen.setdefault("x", o))
    try:
        out = model.forward_features(x)
    finally:
        h.remove()
    return out, seen["x"]


@pytest.fixture(scope="module", params=list(TIMM))
def vit_pair(request):
    torch.manual_seed(0)
    cfg = _cfg(request.param)
    tm = _timm_vit(request.param, seed=5)
    assert detect_source(tm.state_dict()) == "timm"
    return cfg, tm, create_backbone(cfg, tm.state_dict())


@pytest.mark.parametrize("hw", [(32, 48), (48, 48)], ids=["nonsquare", "square"])
def test_timm_vit_to_ours_matches(vit_pair, hw):
    cfg, tm, ours = vit_pair
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        ref, ref_pre = _timm_prenorm(tm, x)
        f = ours.forward_features(x)
    assert rel_err(ours_tokens(f), ref) <= TOL
    assert rel_err(f["x_prenorm"], ref_pre) <= TOL


def test_not_multiple_of_16_is_floor_cropped(vit_pair):
    """timm refuses sides that are not multiples of 16; the official code floor-crops them (the
    patch conv's stride drops the remainder). So ours(50x37) must equal timm(top-left 48x32)."""
    cfg, tm, ours = vit_pair
    x = torch.randn(1, 3, 50, 37)
    with torch.no_grad():
        ref = tm.forward_features(x[..., :48, :32])
        assert rel_err(ours_tokens(ours.forward_features(x)), ref) <= TOL


@pytest.mark.parametrize("name", list(TIMM))
def test_ours_vit_to_timm_matches(name):
    cfg = _cfg(name)
    ours = randomize_(create_backbone(cfg), seed=6).eval()
    tm = timm.create_model(TIMM[name][0], pretrained=False, num_classes=0, **TIMM[name][1]).eval()
    tm.load_state_dict(official_to_timm(ours.state_dict(), cfg), strict=True)
    x = torch.randn(1, 3, 48, 32)
    with torch.no_grad():
        assert rel_err(ours_tokens(ours.forward_features(x)), tm.forward_features(x)) <= TOL


def test_timm_bias_free_variant_is_the_official_net_with_zero_qv_bias():
    """timm's `vit_small_patch16_dinov3` (no `_qkvb`) drops q/v biases, assuming Meta's distilled
    weights have them at zero. Loaded into the official architecture (which has the biases), zeros
    are filled in and the outputs agree."""
    tm = randomize_(timm.create_model("vit_small_patch16_dinov3", pretrained=False, num_classes=0,
                                      embed_dim=64, depth=4, num_heads=2), seed=7).eval()
    assert "blocks.0.attn.q_bias" not in tm.state_dict()
    ours = create_backbone("vit_tiny_test", tm.state_dict())
    assert ours.blocks[0].attn.qkv.bias.abs().sum() == 0
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        assert rel_err(ours_tokens(ours.forward_features(x)), tm.forward_features(x)) <= TOL


def test_timm_periods_are_the_official_formula_in_fp32(vit_pair):
    """timm's periods are a non-persistent fp32 buffer (timm notes Meta's files hold bf16-rounded
    ones and that timm therefore differs slightly); converting from timm recomputes the same values."""
    cfg, tm, ours = vit_pair
    assert torch.equal(tm.rope.periods, rope_periods(cfg))
    assert torch.equal(ours.rope_embed.periods, rope_periods(cfg))
    assert not any(k.startswith("rope.") for k in tm.state_dict())


def test_timm_leaves_out_the_train_time_rope_rescale(vit_pair):
    """timm's DINOv3 models do not set the rescale augmentation (rope_rescale_coords stays None), so
    in train mode timm equals eval while the official model rescales coordinates. Inference is
    unaffected; fine-tuning in timm trains without the augmentation."""
    cfg, tm, ours = vit_pair
    x = torch.randn(1, 3, 32, 48)
    try:
        with torch.no_grad():
            tm.train(), ours.train()
            t_train, o_train = tm.forward_features(x), ours_tokens(ours.forward_features(x))
            tm.eval(), ours.eval()
            t_eval, o_eval = tm.forward_features(x), ours_tokens(ours.forward_features(x))
    finally:
        tm.eval(), ours.eval()
    assert torch.equal(t_train, t_eval)
    assert rel_err(o_train, o_eval) > 10 * TOL


# -- ConvNeXt --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cnx_pair():
    torch.manual_seed(0)
    cfg = get_config("convnext_tiny_test")
    tm = timm.create_model("convnext_tiny", pretrained=False, num_classes=0, depths=cfg.depths, dims=cfg.dims)
    tm = randomize_(tm, seed=8).eval()
    assert detect_source(tm.state_dict()) == "timm"
    return cfg, tm, create_backbone(cfg, tm.state_dict())


@pytest.mark.parametrize("hw", [(64, 96), (64, 64), (70, 100)], ids=["nonsquare", "square", "not_multiple"])
def test_timm_convnext_to_ours_matches(cnx_pair, hw):
    """timm's forward_features is the last stage before the norm; its head norms the pooled map,
    which is the official normed "cls" (LayerNorm is per token)."""
    cfg, tm, ours = cnx_pair
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        feats = tm.forward_features(x)
        pooled = tm.forward_head(feats, pre_logits=True)
        f = ours.forward_features(x)
    assert rel_err(f["x_prenorm"], feats.flatten(2).transpose(1, 2)) <= TOL
    assert rel_err(f["x_norm_clstoken"], pooled) <= TOL


def test_ours_convnext_to_timm_matches():
    cfg = get_config("convnext_tiny_test")
    ours = randomize_(create_backbone(cfg), seed=9).eval()
    tm = timm.create_model("convnext_tiny", pretrained=False, num_classes=0, depths=cfg.depths, dims=cfg.dims)
    tm.load_state_dict(official_to_timm(ours.state_dict(), cfg), strict=True)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        f = ours.forward_features(x)
        assert rel_err(f["x_norm_clstoken"], tm.eval()(x)) <= TOL


def test_timm_round_trip_is_exact_for_weights(cnx_pair, vit_pair):
    for cfg, tm, _ in (cnx_pair, vit_pair):
        back = official_to_timm(timm_to_official(tm.state_dict(), cfg), cfg)
        ref = tm.state_dict()
        assert back.keys() == ref.keys() and all(torch.equal(back[k], ref[k]) for k in ref)
