"""The declarative key maps: both directions come from one table, so official -> foreign -> official
must give back every key bit for bit (for what the foreign layout can hold), for each family the
tables describe; and the engine's rules keep their documented edge behaviour."""

from dataclasses import replace

import pytest
import torch

from dinov3_deploy.errors import CheckpointError
from dinov3_deploy.reference import ViTConfig, build_backbone, get_config
from dinov3_deploy.reference.formats import key_map as km
from dinov3_deploy.reference.formats.convert_hf import HF
from dinov3_deploy.reference.formats.convert_timm import TIMM

VIT_7B_TINY = ViTConfig("vit7b_tiny_test", 128, 2, 1, ffn_layer="swiglu", ffn_ratio=3, ffn_align=64,
                        qkv_bias=False, mask_k_bias=False, local_cls_norm=True)
CFGS = {"mlp": get_config("vit_tiny_test"), "swiglu": get_config("vit_tiny_swiglu_test"), "7b": VIT_7B_TINY,
        "convnext": get_config("convnext_tiny_test")}


def trained_official(cfg) -> dict[str, torch.Tensor]:
    """Every tensor random, except what no foreign layout stores, which holds the value the map
    recomputes (as in Meta's files: K bias third zero, mask_token zero, fp32 periods)."""
    sd = build_backbone(cfg).state_dict()
    g = torch.Generator().manual_seed(0)
    for k, v in sd.items():
        if k.endswith("bias_mask") or k.startswith(("norms.", "rope_embed.", "mask_token", "local_cls_norm.")):
            continue
        v.copy_(torch.randn(v.shape, generator=g))
        if k.endswith("attn.qkv.bias"):
            v[v.numel() // 3:2 * v.numel() // 3] = 0
    if cfg.family == "convnext":
        sd["norms.3.weight"], sd["norms.3.bias"] = sd["norm.weight"].clone(), sd["norm.bias"].clone()
    else:
        assert torch.equal(sd["rope_embed.periods"], km.rope_periods(cfg))
    return sd


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    bad = [k for k in a if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]
    assert not bad, bad


@pytest.mark.parametrize("cfg", CFGS.values(), ids=CFGS.keys())
@pytest.mark.parametrize("key_map", [HF, TIMM], ids=["hf", "timm"])
def test_official_to_foreign_to_official_is_the_identity(key_map, cfg):
    sd = trained_official(cfg)
    foreign = key_map.from_official(sd, cfg)
    assert not set(foreign) & {"rope_embed.periods", "mask_token", "local_cls_norm.weight"}
    assert not any(k.endswith("bias_mask") for k in foreign)
    assert_same(key_map.to_official(foreign, cfg), sd)
    # and the foreign side survives its own round trip
    assert_same(key_map.from_official(key_map.to_official(foreign, cfg), cfg), foreign)


def test_ffn_rules_follow_the_config():
    """HF's `up_proj` is fc1 of a plain MLP but w2 of a SwiGLU: the table picks the rules by config."""
    up = {"layer.0.mlp.up_proj.weight": torch.randn(8, 4)}
    assert "blocks.0.mlp.fc1.weight" in HF.to_official(up, CFGS["mlp"])
    assert "blocks.0.mlp.w2.weight" in HF.to_official(up, CFGS["swiglu"])
    for key_map in (HF, TIMM):
        with pytest.raises(CheckpointError, match=r"no .* name for: blocks\.0\.mlp\.w1\.bias"):
            key_map.from_official(trained_official(CFGS["swiglu"]), CFGS["mlp"])


# -- the engine on a toy layout --------------------------------------------------------------
TOY = km.KeyMap("toy", {"vit": (
    km.Rename("cls_token", "cls"),
    km.Rename("mask_token", "mask", shapes=((1, -1), (1, 1, -1))),
    km.Discard("freqs.*"),
    km.PERIODS,
    km.Rename("blocks.{i}.ls1.gamma", "b.{i}.scale"),
    km.Rename("blocks.{i}.proj.*", "b.{i}.out.*"),
    km.Rename("blocks.{i}.other.*", "b.{i}.out.*"),  # never reached: the rule above claims these first
    km.Fuse("blocks.{i}.attn.qkv.weight", ("b.{i}.q", "b.{i}.k", "b.{i}.v")),
    km.QkvBias("blocks.{i}.attn.qkv", q="b.{i}.qb", v="b.{i}.vb", k="b.{i}.kb", refuse="toy has no K bias"),
)})
TOY_CFG = replace(get_config("vit_tiny_test"), embed_dim=4, num_heads=1)


def toy_foreign(**extra) -> dict[str, torch.Tensor]:
    sd = {"cls": torch.randn(1, 1, 4), "mask": torch.randn(1, 1, 4), "freqs.inv": torch.ones(3),
          "b.0.scale": torch.randn(4), "b.0.out.weight": torch.randn(4, 4), "b.0.out.bias": torch.randn(4),
          "b.0.q": torch.randn(4, 4), "b.0.k": torch.randn(4, 4), "b.0.v": torch.randn(4, 4),
          "b.0.qb": torch.randn(4), "b.0.vb": torch.randn(4)}
    return sd | extra


def test_toy_load_renames_reshapes_fuses_and_recomputes():
    f = toy_foreign()
    out = TOY.to_official(f, TOY_CFG)
    assert sorted(out) == sorted(["cls_token", "mask_token", "rope_embed.periods", "blocks.0.ls1.gamma",
                                  "blocks.0.proj.weight", "blocks.0.proj.bias", "blocks.0.attn.qkv.weight",
                                  "blocks.0.attn.qkv.bias", "blocks.0.attn.qkv.bias_mask"])
    assert out["mask_token"].shape == (1, 4) and torch.equal(out["mask_token"][0], f["mask"][0, 0])
    assert torch.equal(out["blocks.0.attn.qkv.weight"], torch.cat([f["b.0.q"], f["b.0.k"], f["b.0.v"]]))
    assert torch.equal(out["blocks.0.attn.qkv.bias"], torch.cat([f["b.0.qb"], torch.zeros(4), f["b.0.vb"]]))
    assert out["blocks.0.attn.qkv.bias_mask"].tolist() == [1.0] * 4 + [0.0] * 4 + [1.0] * 4
    assert torch.equal(out["rope_embed.periods"], km.rope_periods(TOY_CFG))
    # the way out drops the recomputed entries and the mask, and restores the foreign keys
    back = TOY.from_official(out, TOY_CFG)
    f.pop("freqs.inv")
    assert_same(back, f)


def test_toy_k_bias_present_is_kept_unmasked_and_refused_on_the_way_out():
    out = TOY.to_official(toy_foreign(**{"b.0.kb": torch.ones(4)}), TOY_CFG)
    assert out["blocks.0.attn.qkv.bias_mask"].eq(1).all() and out["blocks.0.attn.qkv.bias"][4:8].eq(1).all()
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.qkv\.bias has a non-zero key bias.*toy has no K"):
        TOY.from_official(out, TOY_CFG)
    # a masked-out K bias is not a K bias
    out["blocks.0.attn.qkv.bias_mask"][4:8] = 0
    assert "b.0.kb" not in TOY.from_official(out, TOY_CFG)


def test_toy_without_qkv_bias_leaves_foreign_biases_for_the_strict_load():
    out = TOY.to_official(toy_foreign(), replace(TOY_CFG, qkv_bias=False))
    assert "b.0.qb" in out and "b.0.vb" in out and "blocks.0.attn.qkv.bias" not in out


def test_toy_load_passes_unknown_and_incomplete_keys_through():
    f = toy_foreign(**{"b.1.q": torch.randn(4, 4), "b.0.scale2": torch.randn(4), "b.x.scale": torch.randn(4)})
    out = TOY.to_official(f, TOY_CFG)
    assert {"b.1.q", "b.0.scale2", "b.x.scale"} <= set(out)  # half a q/k/v set, a near miss, a non-index
    assert "blocks.1.attn.qkv.weight" not in out


def test_toy_stored_official_value_wins_over_a_recomputed_one():
    stored = km.rope_periods(TOY_CFG).to(torch.bfloat16).float()
    out = TOY.to_official(toy_foreign(**{"rope_embed.periods": stored}), TOY_CFG)
    assert torch.equal(out["rope_embed.periods"], stored)


def test_toy_save_names_every_unknown_key():
    out = TOY.to_official(toy_foreign(), TOY_CFG)
    extra = {f"head.{n}": torch.zeros(1) for n in range(10)}
    with pytest.raises(CheckpointError) as e:
        TOY.from_official(out | extra, TOY_CFG)
    assert "no toy name for: head.0, head.1," in str(e.value) and "(10 in all)" in str(e.value)


@pytest.mark.parametrize("key_map,head", [(HF, "layer_norm"), (TIMM, "head.norm")], ids=["hf", "timm"])
def test_tied_official_keys_must_agree_on_the_way_out(key_map, head):
    cfg = CFGS["convnext"]
    sd = trained_official(cfg)
    foreign = key_map.from_official(sd, cfg)
    assert f"{head}.weight" in foreign and not any(k.startswith("norms.") for k in foreign)
    back = key_map.to_official(foreign, cfg)
    assert back["norms.3.weight"] is back["norm.weight"]  # one tensor under both names, as in the model
    sd["norms.3.bias"] = sd["norms.3.bias"] + 1
    with pytest.raises(CheckpointError, match=r"norms\.3\.bias differs from norm\.bias"):
        key_map.from_official(sd, cfg)


def test_timm_stem_is_stage_zero_downsample_only():
    """First claim wins: downsample_layers.0 is timm's stem, the others are per-stage downsamples."""
    cfg = CFGS["convnext"]
    foreign = TIMM.from_official(trained_official(cfg), cfg)
    assert "stem.0.weight" in foreign and "stages.1.downsample.1.weight" in foreign
    assert not any(k.startswith("stages.0.downsample.") for k in foreign)


def test_recomputed_group_is_made_whole_or_not_at_all():
    """A checkpoint holding half of local_cls_norm gets no made-up other half: the strict load names it."""
    cfg = CFGS["7b"]
    foreign = HF.from_official(trained_official(cfg), cfg)
    assert HF.to_official(foreign, cfg)["local_cls_norm.weight"].eq(1).all()
    w = torch.randn(cfg.embed_dim)
    out = HF.to_official(foreign | {"local_cls_norm.weight": w}, cfg)
    assert out["local_cls_norm.weight"] is w and "local_cls_norm.bias" not in out
