"""Independent-implementation parity with Hugging Face `DINOv3ViTModel` / `DINOv3ConvNextModel`.

Tiny configs with every weight randomised (LayerScale, norms and biases far from their init, so no
branch is trivially zero or identity), fp32 on CPU, relative Frobenius error <= 1e-5, both
directions of the conversion. Where HF and the release (docs/dinov3-semantics.md) could disagree, a
test states which is right and why.
"""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
from parity_helpers import randomize_, rel_err  # noqa: E402
from transformers import (  # noqa: E402
    DINOv3ConvNextConfig,
    DINOv3ConvNextModel,
    DINOv3ViTConfig,
    DINOv3ViTModel,
)

from dinov3_deploy.reference import ViTConfig, create_backbone, get_config  # noqa: E402
from dinov3_deploy.reference.formats.checkpoints import detect_source  # noqa: E402
from dinov3_deploy.reference.formats.convert_hf import hf_config, hf_to_official, official_to_hf, rope_periods  # noqa: E402

TOL = 1e-5
# vit7b16 in miniature: no qkv bias, SwiGLU aligned to 64, head dim 128, local_cls_norm.
VIT_7B_TINY = ViTConfig("vit7b_tiny_test", 128, 2, 1, ffn_layer="swiglu", ffn_ratio=3, ffn_align=64,
                        qkv_bias=False, mask_k_bias=False, local_cls_norm=True)


def hf_vit_config(cfg: ViTConfig) -> DINOv3ViTConfig:
    """Written by hand from the facts (not from `hf_config`, which is under test)."""
    return DINOv3ViTConfig(
        hidden_size=cfg.embed_dim, intermediate_size=cfg.ffn_hidden, num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads, num_register_tokens=4, use_gated_mlp=cfg.ffn_layer == "swiglu",
        hidden_act="silu" if cfg.ffn_layer == "swiglu" else "gelu",
        query_bias=cfg.qkv_bias, value_bias=cfg.qkv_bias, key_bias=False,
    )


def ours_tokens(f: dict) -> torch.Tensor:
    return torch.cat([f["x_norm_clstoken"][:, None], f["x_storage_tokens"], f["x_norm_patchtokens"]], dim=1)


VIT_CASES = [("vit_tiny_test", None), ("vit_tiny_swiglu_test", None), ("vit7b_tiny", VIT_7B_TINY)]


@pytest.fixture(scope="module", params=VIT_CASES, ids=[c[0] for c in VIT_CASES])
def vit_pair(request):
    torch.manual_seed(0)
    cfg = request.param[1] or get_config(request.param[0])
    hf = randomize_(DINOv3ViTModel(hf_vit_config(cfg)), seed=1).eval()
    ours = create_backbone(cfg, hf.state_dict())  # in-memory transformers-5 keys ("model.layer.N")
    return cfg, hf, ours


# -- HF -> ours ------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", [(32, 48), (48, 48), (50, 37)], ids=["nonsquare", "square", "not_multiple_of_16"])
def test_hf_vit_to_ours_matches(vit_pair, hw):
    cfg, hf, ours = vit_pair
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        ref = hf(x, output_hidden_states=True)
        f = ours.forward_features(x)
        inter = ours.get_intermediate_layers(x, n=[0, cfg.depth - 1], norm=False, return_class_token=True)
    assert f["x_norm_patchtokens"].shape[1] == (hw[0] // 16) * (hw[1] // 16)  # floor-crop
    assert rel_err(ours_tokens(f), ref.last_hidden_state) <= TOL
    assert rel_err(f["x_prenorm"], ref.hidden_states[-1]) <= TOL
    # HF hidden_states[0] is the embedding output; [i + 1] is block i.
    for (patches, cls), i in zip(inter, [0, cfg.depth - 1], strict=True):
        assert rel_err(patches, ref.hidden_states[i + 1][:, 5:]) <= TOL
        assert rel_err(cls, ref.hidden_states[i + 1][:, 0]) <= TOL


def test_intermediate_layers_match_hf_backbone(vit_pair):
    """`get_intermediate_layers(n=[...], reshape=True, norm=True)` (what the segmentation heads use)
    against HF's DINOv3ViTBackbone feature maps: final norm applied, B x D x H/16 x W/16."""
    from transformers import DINOv3ViTBackbone

    cfg, hf, ours = vit_pair
    take = [0, cfg.depth - 1]
    hcfg = hf_vit_config(cfg)
    hcfg.set_output_features_output_indices(out_features=None, out_indices=[i + 1 for i in take])
    bb = DINOv3ViTBackbone(hcfg).eval()
    bb.load_state_dict(hf.state_dict(), strict=True)
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        ref = bb(x).feature_maps
        mine = ours.get_intermediate_layers(x, n=take, reshape=True, norm=True)
    assert len(ref) == len(mine) == 2
    for a, b in zip(mine, ref, strict=True):
        assert a.shape == b.shape == (2, cfg.embed_dim, 3, 5)
        assert rel_err(a, b) <= TOL


def test_hf_hub_layout_and_model_prefix_are_accepted(vit_pair):
    """Hub files say `layer.N`, transformers >= 5 says `model.layer.N`, wrappers add `model.`."""
    cfg, hf, ours = vit_pair
    mem = hf.state_dict()
    hub = {k.removeprefix("model."): v for k, v in mem.items()}
    wrapped = {"model." + k: v for k, v in mem.items()}
    assert any(k.startswith("layer.0.") for k in hub)
    ref = hf_to_official(mem, cfg)
    for sd in (hub, wrapped):
        assert detect_source(sd) == "hf"
        conv = hf_to_official(sd, cfg)
        assert conv.keys() == ref.keys() and all(torch.equal(conv[k], ref[k]) for k in ref)


# -- ours -> HF ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vit_tiny_test", "vit_tiny_swiglu_test", "vit7b_tiny"])
def test_ours_vit_to_hf_from_pretrained_matches(tmp_path, name):
    """Reverse conversion through the files users get: model.safetensors (hub keys) + config.json
    from `hf_config`, loaded by `from_pretrained` with nothing missing or unexpected."""
    from safetensors.torch import save_file

    cfg = VIT_7B_TINY if name == "vit7b_tiny" else get_config(name)
    ours = randomize_(create_backbone(cfg), seed=2).eval()
    sd = ours.state_dict()
    # A K bias hidden by bias_mask (as in Meta's files) must not leak into HF's bias-free k_proj.
    if cfg.qkv_bias:
        D = cfg.embed_dim
        for i in range(cfg.depth):
            sd[f"blocks.{i}.attn.qkv.bias"][D:2 * D] = 3.0
            assert sd[f"blocks.{i}.attn.qkv.bias_mask"][D:2 * D].eq(0).all()
    hf_sd = official_to_hf(sd, cfg)
    save_file({k: v.contiguous() for k, v in hf_sd.items()}, str(tmp_path / "model.safetensors"),
              metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps(hf_config(cfg)))
    hf, info = DINOv3ViTModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        assert rel_err(ours_tokens(ours.forward_features(x)), hf(x).last_hidden_state) <= TOL


# -- where HF and the facts could disagree ---------------------------------------------------
def test_rope_periods_hf_recomputes_fp32_official_loads_stored(vit_pair):
    """HF keeps no RoPE buffer in its files: it recomputes `inv_freq = 1/base**(4i/head_dim)` in fp32.
    Meta's checkpoints store `periods` rounded through bf16 and the official model *uses* the stored
    buffer (persistent, loaded strictly). So the same weights give slightly different features in HF
    and in the official model; we follow the official code (load, not recompute). HF's formula is the
    official formula: they agree to fp32 rounding when periods are exact."""
    cfg, hf, ours = vit_pair
    exact = rope_periods(cfg)
    assert torch.allclose(hf.rope_embeddings.inv_freq, 1 / exact, rtol=1e-6, atol=0)
    assert torch.equal(ours.rope_embed.periods, exact)
    x = torch.randn(1, 3, 48, 48)
    sd = ours.state_dict()
    sd["rope_embed.periods"] = exact.to(torch.bfloat16).float()
    rounded = create_backbone(cfg, sd)
    assert torch.equal(rounded.rope_embed.periods, sd["rope_embed.periods"])  # stored value, not recomputed
    with torch.no_grad():
        ref = hf(x).last_hidden_state
        assert rel_err(ours_tokens(ours.forward_features(x)), ref) <= TOL
        assert rel_err(ours_tokens(rounded.forward_features(x)), ref) > 10 * TOL


def test_defaults_agree_with_facts():
    """LayerNorm eps (ViT 1e-5, ConvNeXt 1e-6), RoPE base 100, train-time rescale 2.0: HF's defaults
    are the facts, and so are ours."""
    hv, hc = DINOv3ViTConfig(), DINOv3ConvNextConfig()
    v, c = get_config("vits16"), get_config("convnext_tiny")
    assert hv.layer_norm_eps == v.layer_norm_eps == 1e-5
    assert hc.layer_norm_eps == c.layer_norm_eps == 1e-6
    assert hv.rope_theta == v.rope_base == 100.0
    assert hv.pos_embed_rescale == v.rope_rescale_coords == 2.0
    assert hv.pos_embed_shift is None and hv.pos_embed_jitter is None


def test_train_mode_rope_augmentation_official_draws_per_block_hf_per_forward(vit_pair):
    """Train mode differs from eval only by the coordinate rescale (one log-uniform factor in [1/2, 2]
    for both axes). HF draws it once per forward; Meta's code calls rope_embed inside the block loop,
    so every block gets its own draw, and we follow Meta. With one seed the first block agrees with
    HF (same first draw); after that the two differ. Inference (eval mode) is unaffected."""
    cfg, hf, ours = vit_pair
    x = torch.randn(1, 3, 32, 48)
    hf.train(), ours.train()
    try:
        with torch.no_grad():
            torch.manual_seed(123)
            ours_first = ours.get_intermediate_layers(x, n=[0], norm=False)[0]
            torch.manual_seed(123)
            ours_last = ours_tokens(ours.forward_features(x))
            torch.manual_seed(123)
            ref = hf(x, output_hidden_states=True)
    finally:
        hf.eval(), ours.eval()
    assert rel_err(ours_first, ref.hidden_states[1][:, 5:]) <= TOL
    if cfg.depth > 1:
        assert rel_err(ours_last, ref.last_hidden_state) > 10 * TOL


def test_rope_coordinates_are_normalised_per_axis():
    """"separate" normalisation: each axis by its own patch count, so a 2x3 grid spans [-1, 1] on both
    axes. HF computes the same centres; a 'max' normalisation (the other official option) would not."""
    from transformers.models.dinov3_vit.modeling_dinov3_vit import get_patches_center_coordinates

    hf = get_patches_center_coordinates(2, 3, dtype=torch.float32, device=torch.device("cpu"))
    h = ((torch.arange(2) + 0.5) / 2) * 2 - 1
    w = ((torch.arange(3) + 0.5) / 3) * 2 - 1
    facts = torch.stack(torch.meshgrid(h, w, indexing="ij"), -1).reshape(-1, 2)
    assert torch.allclose(hf, facts, atol=1e-7)
    assert not torch.allclose(facts[:, 0], ((torch.arange(2) + 0.5) / 3 * 2 - 1).repeat_interleave(3))


def test_prefix_tokens_are_not_rotated():
    """Facts and HF agree: the cls and storage tokens skip RoPE, only the patch tokens rotate."""
    from dinov3_deploy.reference.models.layers.rope import RopePositionEmbedding, rope_apply

    rope = RopePositionEmbedding(16)
    sin, cos = rope(2, 3)
    x = torch.randn(1, 1, 5 + 6, 16)
    y = rope_apply(x, sin, cos)
    assert torch.equal(y[..., :5, :], x[..., :5, :])
    assert not torch.allclose(y[..., 5:, :], x[..., 5:, :])


# -- ConvNeXt --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cnx_pair():
    torch.manual_seed(0)
    cfg = get_config("convnext_tiny_test")
    hf = DINOv3ConvNextModel(DINOv3ConvNextConfig(hidden_sizes=list(cfg.dims), depths=list(cfg.depths)))
    hf = randomize_(hf, seed=3).eval()
    ours = create_backbone(cfg, hf.state_dict())
    return cfg, hf, ours


@pytest.mark.parametrize("hw", [(64, 96), (64, 64), (70, 100)], ids=["nonsquare", "square", "not_multiple"])
def test_hf_convnext_to_ours_matches(cnx_pair, hw):
    cfg, hf, ours = cnx_pair
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        ref = hf(x, output_hidden_states=True)
        f = ours.forward_features(x)
        stages = ours._stem_to(x, take=[0, 1, 2, 3])[:-1]
    tokens = torch.cat([f["x_norm_clstoken"][:, None], f["x_norm_patchtokens"]], dim=1)
    assert rel_err(tokens, ref.last_hidden_state) <= TOL
    assert rel_err(f["x_norm_clstoken"], ref.pooler_output) <= TOL
    for mine, theirs in zip(stages, ref.hidden_states[1:], strict=True):  # [0] is the input image
        assert rel_err(mine, theirs) <= TOL


def test_hf_convnext_final_norm_fills_both_official_keys(cnx_pair):
    cfg, hf, ours = cnx_pair
    sd = hf_to_official(hf.state_dict(), cfg)
    assert torch.equal(sd["norm.weight"], sd["norms.3.weight"])
    assert torch.equal(sd["norm.weight"], hf.layer_norm.weight)
    assert detect_source(hf.state_dict()) == "hf"


def test_ours_convnext_to_hf_from_pretrained_matches(tmp_path):
    from safetensors.torch import save_file

    cfg = get_config("convnext_tiny_test")
    ours = randomize_(create_backbone(cfg), seed=4).eval()
    hf_sd = official_to_hf(ours.state_dict(), cfg)
    assert not any(k.startswith("norms.") for k in hf_sd)
    save_file({k: v.contiguous().clone() for k, v in hf_sd.items()}, str(tmp_path / "model.safetensors"),
              metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps(hf_config(cfg)))
    hf, info = DINOv3ConvNextModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        f = ours.forward_features(x)
        ref = hf.eval()(x).last_hidden_state
    assert rel_err(torch.cat([f["x_norm_clstoken"][:, None], f["x_norm_patchtokens"]], 1), ref) <= TOL


def test_hf_vit_weights_into_convnext_name_the_cause(vit_pair):
    from dinov3_deploy.errors import CheckpointError

    _, hf, _ = vit_pair
    with pytest.raises(CheckpointError, match="ViT checkpoint"):
        create_backbone("convnext_tiny_test", hf.state_dict())


def _check_save_pretrained(tmp_path, cfg, hf, ours):
    from dinov3_deploy.reference.formats.checkpoints import read_state_dict

    hf.save_pretrained(tmp_path)
    written = read_state_dict(tmp_path)
    assert official_to_hf(ours.state_dict(), cfg).keys() == written.keys()
    loaded = create_backbone(cfg, tmp_path)
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_save_pretrained_vit_directory_loads_and_matches_our_hf_layout(tmp_path, vit_pair):
    """What transformers itself writes (`save_pretrained`: hub keys, `layer.N`) loads through
    create_backbone, and `official_to_hf` produces exactly that key set."""
    _check_save_pretrained(tmp_path, *vit_pair)


def test_save_pretrained_convnext_directory_loads_and_matches_our_hf_layout(tmp_path, cnx_pair):
    _check_save_pretrained(tmp_path, *cnx_pair)


def test_hf_model_with_a_key_bias_keeps_it_unmasked():
    """HF can be configured with `key_bias=True` (no released DINOv3 is): the persistent bias_mask
    lets the official architecture carry that bias (mask 1 on K). Going back to the hub layout,
    whose configs have no K bias, refuses rather than silently dropping it."""
    from dinov3_deploy.errors import CheckpointError

    cfg = get_config("vit_tiny_test")
    hcfg = hf_vit_config(cfg)
    hcfg.key_bias = True
    hf = randomize_(DINOv3ViTModel(hcfg), seed=11).eval()
    ours = create_backbone(cfg, hf.state_dict())
    assert ours.blocks[0].attn.qkv.bias_mask.eq(1).all()
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        assert rel_err(ours_tokens(ours.forward_features(x)), hf(x).last_hidden_state) <= TOL
    with pytest.raises(CheckpointError, match="non-zero key bias"):
        official_to_hf(ours.state_dict(), cfg)
