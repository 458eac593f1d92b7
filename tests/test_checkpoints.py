"""Loading checkpoints: the official layout loads strictly, broken files fail with the keys and the
likely cause, buffers (bias_mask, RoPE periods) behave as in Meta's release, nothing but tensors
is unpickled, safetensors round-trips."""

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dinov3_deploy.errors import CheckpointError
from dinov3_deploy.reference import ViTConfig, build_backbone, create_backbone, get_config
from dinov3_deploy.reference.formats.checkpoints import (
    check_fits,
    detect_family,
    detect_source,
    load_into,
    read_metadata,
    read_state_dict,
    save_state_dict,
)
from dinov3_deploy.reference.formats.convert_hf import rope_periods

VIT_7B_TINY = ViTConfig("vit7b_tiny_test", 128, 2, 1, ffn_layer="swiglu", ffn_ratio=3, ffn_align=64,
                        qkv_bias=False, mask_k_bias=False, local_cls_norm=True)


# -- a state dict written from the release's key list (docs/dinov3-semantics.md), not from our module
def official_vit_state_dict(cfg: ViTConfig, g: torch.Generator) -> dict[str, torch.Tensor]:
    D, hd, H = cfg.embed_dim, cfg.head_dim, cfg.ffn_hidden

    def r(*shape, scale=0.1):
        return scale * torch.randn(*shape, generator=g)

    sd = {
        "cls_token": r(1, 1, D, scale=1), "storage_tokens": r(1, 4, D, scale=1), "mask_token": torch.zeros(1, D),
        "patch_embed.proj.weight": r(D, 3, 16, 16), "patch_embed.proj.bias": r(D),
        "rope_embed.periods": cfg.rope_base ** (2 * torch.arange(hd // 4) / (hd // 2)),
        "norm.weight": 1 + r(D), "norm.bias": r(D),
    }
    for n in range(cfg.depth):
        b = f"blocks.{n}."
        sd |= {b + "norm1.weight": 1 + r(D), b + "norm1.bias": r(D), b + "attn.qkv.weight": r(3 * D, D),
               b + "attn.proj.weight": r(D, D), b + "attn.proj.bias": r(D), b + "ls1.gamma": 0.5 + r(D),
               b + "norm2.weight": 1 + r(D), b + "norm2.bias": r(D), b + "ls2.gamma": 0.5 + r(D)}
        if cfg.qkv_bias:
            sd[b + "attn.qkv.bias"] = r(3 * D)
            sd[b + "attn.qkv.bias_mask"] = torch.cat([torch.ones(D), torch.zeros(D), torch.ones(D)])
        if cfg.ffn_layer == "swiglu":
            sd |= {b + "mlp.w1.weight": r(H, D), b + "mlp.w1.bias": r(H), b + "mlp.w2.weight": r(H, D),
                   b + "mlp.w2.bias": r(H), b + "mlp.w3.weight": r(D, H), b + "mlp.w3.bias": r(D)}
        else:
            sd |= {b + "mlp.fc1.weight": r(H, D), b + "mlp.fc1.bias": r(H), b + "mlp.fc2.weight": r(D, H),
                   b + "mlp.fc2.bias": r(D)}
    if cfg.local_cls_norm:
        sd |= {"local_cls_norm.weight": 1 + r(D), "local_cls_norm.bias": r(D)}
    return sd


def official_convnext_state_dict(cfg, g: torch.Generator) -> dict[str, torch.Tensor]:
    def r(*shape, scale=0.1):
        return scale * torch.randn(*shape, generator=g)

    d = cfg.dims
    sd = {"downsample_layers.0.0.weight": r(d[0], 3, 4, 4), "downsample_layers.0.0.bias": r(d[0]),
          "downsample_layers.0.1.weight": 1 + r(d[0]), "downsample_layers.0.1.bias": r(d[0])}
    for i in range(1, 4):
        sd |= {f"downsample_layers.{i}.0.weight": 1 + r(d[i - 1]), f"downsample_layers.{i}.0.bias": r(d[i - 1]),
               f"downsample_layers.{i}.1.weight": r(d[i], d[i - 1], 2, 2), f"downsample_layers.{i}.1.bias": r(d[i])}
    for s, (depth, c) in enumerate(zip(cfg.depths, d, strict=True)):
        for b in range(depth):
            p = f"stages.{s}.{b}."
            sd |= {p + "gamma": 0.5 + r(c), p + "dwconv.weight": r(c, 1, 7, 7), p + "dwconv.bias": r(c),
                   p + "norm.weight": 1 + r(c), p + "norm.bias": r(c), p + "pwconv1.weight": r(4 * c, c),
                   p + "pwconv1.bias": r(4 * c), p + "pwconv2.weight": r(c, 4 * c), p + "pwconv2.bias": r(c)}
    w, b = 1 + r(d[3]), r(d[3])
    sd |= {"norm.weight": w, "norm.bias": b, "norms.3.weight": w.clone(), "norms.3.bias": b.clone()}
    return sd


@pytest.fixture
def g():
    return torch.Generator().manual_seed(0)


CASES = ["vit_tiny_test", "vit_tiny_swiglu_test", "vit7b_tiny", "convnext_tiny_test"]


def _cfg(name):
    return VIT_7B_TINY if name == "vit7b_tiny" else get_config(name)


def _official(name, g):
    cfg = _cfg(name)
    return official_vit_state_dict(cfg, g) if cfg.family == "vit" else official_convnext_state_dict(cfg, g)


# -- the official layout ---------------------------------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_official_layout_from_the_facts_loads_strictly(name, g, tmp_path):
    sd = _official(name, g)
    assert detect_source(sd) == "official"
    assert detect_family(sd) == _cfg(name).family
    torch.save(sd, tmp_path / "dinov3_test_pretrain_lvd1689m-0000.pth")
    model = create_backbone(_cfg(name), tmp_path / "dinov3_test_pretrain_lvd1689m-0000.pth")
    got = model.state_dict()
    assert got.keys() == sd.keys()
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    assert not model.training  # official hub builders return train mode; we never do


def test_loaded_weights_are_what_the_model_computes_with(g):
    """Not just the keys: a forward pass reproduces a hand-written block 0 from the raw tensors."""
    cfg = get_config("vit_tiny_test")
    sd = official_vit_state_dict(cfg, g)
    model = create_backbone(cfg, sd)
    x = torch.randn(1, 3, 32, 48)
    D, h = cfg.embed_dim, cfg.num_heads
    with torch.no_grad():
        tokens, hw = model.prepare_tokens(x)
        got = model.blocks[0](tokens, model.rope_embed(*hw))
        # by hand, from the state dict and the facts
        ln = torch.nn.functional.layer_norm
        b = "blocks.0."
        y = ln(tokens, (D,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], 1e-5)
        qkv = y @ sd[b + "attn.qkv.weight"].T + sd[b + "attn.qkv.bias"] * sd[b + "attn.qkv.bias_mask"]
        q, k, v = qkv.reshape(1, -1, 3, h, D // h).permute(2, 0, 3, 1, 4)
        sin, cos = _rope_by_hand(hw, D // h, sd["rope_embed.periods"])
        q, k = (torch.cat([t[..., :5, :], _rot(t[..., 5:, :], sin, cos)], -2) for t in (q, k))
        a = ((q @ k.transpose(-1, -2)) / math.sqrt(D // h)).softmax(-1) @ v
        x1 = tokens + sd[b + "ls1.gamma"] * (a.transpose(1, 2).reshape(1, -1, D) @ sd[b + "attn.proj.weight"].T
                                            + sd[b + "attn.proj.bias"])
        y = ln(x1, (D,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], 1e-5)
        m = torch.nn.functional.gelu(y @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"])
        want = x1 + sd[b + "ls2.gamma"] * (m @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"])
    assert ((got - want).norm() / want.norm()).item() < 1e-5


def _rope_by_hand(hw, hd, periods):
    H, W = hw
    ch = ((torch.arange(H) + 0.5) / H) * 2 - 1
    cw = ((torch.arange(W) + 0.5) / W) * 2 - 1
    coords = torch.stack(torch.meshgrid(ch, cw, indexing="ij"), -1).reshape(-1, 2)
    ang = (2 * math.pi * coords[:, :, None] / periods[None, None, :]).reshape(H * W, hd // 2)
    ang = torch.cat([ang, ang], -1)
    return ang.sin(), ang.cos()


def _rot(x, sin, cos):
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat([-x2, x1], -1) * sin


# -- broken checkpoints ----------------------------------------------------------------------
def _fails(cfg, sd) -> str:
    with pytest.raises(CheckpointError) as e:
        create_backbone(cfg, sd)
    return str(e.value)


def test_missing_key_is_named(g):
    sd = _official("vit_tiny_test", g)
    del sd["blocks.1.ls2.gamma"]
    msg = _fails(get_config("vit_tiny_test"), sd)
    assert "missing keys: blocks.1.ls2.gamma" in msg and "truncated" in msg


def test_extra_key_is_named(g):
    sd = _official("vit_tiny_test", g)
    sd["head.weight"] = torch.zeros(10, 64)
    msg = _fails(get_config("vit_tiny_test"), sd)
    assert "unexpected keys: head.weight" in msg and "extra keys" in msg


def test_wrong_shape_is_named(g):
    sd = _official("vit_tiny_test", g)
    sd["norm.weight"] = torch.ones(65)
    msg = _fails(get_config("vit_tiny_test"), sd)
    assert "norm.weight: checkpoint (65,) vs model (64,)" in msg and "another model size" in msg


def test_mlp_vs_swiglu_and_depth_are_diagnosed(g):
    msg = _fails(get_config("vit_tiny_test"), _official("vit_tiny_swiglu_test", g))
    assert "blocks.0.mlp.w1.weight" in msg and "SwiGLU" in msg and "plus" in msg
    shallow = replace(get_config("vit_tiny_test"), depth=2)
    msg = _fails(shallow, _official("vit_tiny_test", g))
    assert "blocks.2." in msg and "4 blocks" in msg and "has 2" in msg


def test_convnext_file_into_a_vit_names_the_cause(g, tmp_path):
    path = tmp_path / "dinov3_convnext_tiny_pretrain_lvd1689m-0000.pth"
    torch.save(_official("convnext_tiny_test", g), path)
    with pytest.raises(CheckpointError) as e:
        create_backbone("vit_tiny_test", path)
    msg = str(e.value)
    assert str(path) in msg and "unexpected keys: downsample_layers.0.0.bias" in msg
    assert "ConvNeXt checkpoint; pick a convnext_* model" in msg
    assert "ViT checkpoint" in _fails(get_config("convnext_tiny_test"), _official("vit_tiny_test", g))


def test_sat_local_cls_norm_into_vitl16():
    """Satellite ViT-L files carry local_cls_norm. Checked at full vitl16 size on the meta device:
    a strict fit into the plain vitl16 fails naming the keys and the cause; create_backbone builds
    the norm for such files so they load (tiny config, real tensors)."""
    vitl = get_config("vitl16")
    sat = build_backbone(replace(vitl, local_cls_norm=True), device=torch.device("meta")).state_dict()
    with pytest.raises(CheckpointError) as e:
        check_fits(build_backbone(vitl, device=torch.device("meta")), sat)
    msg = str(e.value)
    assert "unexpected keys: local_cls_norm.bias, local_cls_norm.weight" in msg
    assert "SAT-493M" in msg and "'vitl16'" in msg

    sd = official_vit_state_dict(replace(get_config("vit_tiny_test"), local_cls_norm=True), torch.Generator())
    model = create_backbone("vit_tiny_test", sd)
    assert model.local_cls_norm is not None
    assert torch.equal(model.local_cls_norm.weight, sd["local_cls_norm.weight"])


def test_7b_without_local_cls_norm_is_diagnosed(g):
    sd = _official("vit7b_tiny", g)
    del sd["local_cls_norm.weight"], sd["local_cls_norm.bias"]
    assert "expects local_cls_norm" in _fails(VIT_7B_TINY, sd)


def test_missing_file_and_unknown_source(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        create_backbone("vit_tiny_test", tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="unknown checkpoint source"):
        create_backbone("vit_tiny_test", {}, source="onnx")


# -- buffers ---------------------------------------------------------------------------------
def test_bias_mask_fresh_module_is_finite_and_masks_k(g):
    for model in (build_backbone("vit_tiny_test"), create_backbone("vit_tiny_test")):
        for blk in model.blocks:
            m = blk.attn.qkv.bias_mask
            assert torch.isfinite(m).all()
            assert torch.equal(m, torch.cat([torch.ones(64), torch.zeros(64), torch.ones(64)]))
    # a model materialised from the meta device and initialised, as large models are built
    model = build_backbone("vit_tiny_test", device=torch.device("meta")).to_empty(device="cpu")
    model.init_weights()
    assert all(torch.isfinite(b.attn.qkv.bias_mask).all() for b in model.blocks)


def test_bias_mask_after_loading_masks_the_k_bias(g):
    """The K third of the stored bias is whatever training left there; the mask zeroes it."""
    sd = _official("vit_tiny_test", g)
    x = torch.randn(1, 3, 32, 32)
    a = create_backbone("vit_tiny_test", sd)
    for n in range(4):
        sd[f"blocks.{n}.attn.qkv.bias"][64:128] = 100.0
    b = create_backbone("vit_tiny_test", sd)
    assert all(torch.isfinite(blk.attn.qkv.bias_mask).all() for blk in b.blocks)
    with torch.no_grad():
        assert torch.equal(a.forward_features(x)["x_prenorm"], b.forward_features(x)["x_prenorm"])


def test_nan_bias_mask_in_a_file_is_restored_with_a_warning(g):
    """Files saved from Meta's code before its bias_mask init fix hold NaN masks."""
    sd = _official("vit_tiny_test", g)
    good = create_backbone("vit_tiny_test", sd)
    sd["blocks.2.attn.qkv.bias_mask"] = torch.full((192,), math.nan)
    with pytest.warns(UserWarning, match="bias_mask"):
        model = create_backbone("vit_tiny_test", sd)
    assert torch.equal(model.blocks[2].attn.qkv.bias_mask, good.blocks[2].attn.qkv.bias_mask)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = model.forward_features(x)["x_norm_clstoken"]
        assert torch.isfinite(out).all()
        assert torch.equal(out, good.forward_features(x)["x_norm_clstoken"])


def test_recomputed_periods_follow_the_formula():
    """Fresh models (and conversions from HF/timm, which keep no periods) use
    periods[i] = 100 ** (2i / (head_dim / 2)) in fp32."""
    for cfg in (get_config("vit_tiny_test"), get_config("vitb16"), VIT_7B_TINY):
        hd = cfg.head_dim
        exact = torch.tensor([100.0 ** (2 * i / (hd / 2)) for i in range(hd // 4)], dtype=torch.float64)
        assert torch.allclose(rope_periods(cfg).double(), exact, rtol=2e-7, atol=0)
    model = build_backbone("vit_tiny_test")
    assert torch.equal(model.rope_embed.periods, rope_periods(get_config("vit_tiny_test")))
    assert model.rope_embed.periods[0] == 1 and model.rope_embed.periods.shape == (8,)


@pytest.mark.parametrize("stored_dtype", [torch.bfloat16, torch.float32])
def test_bf16_rounded_periods_are_loaded_and_used(g, tmp_path, stored_dtype):
    """Meta's files store periods rounded through bf16; the official model uses them as stored."""
    cfg = get_config("vit_tiny_test")
    sd = _official("vit_tiny_test", g)
    exact = sd["rope_embed.periods"].clone()
    rounded = exact.to(torch.bfloat16)
    assert not torch.equal(rounded.float(), exact)  # the rounding is real for these periods
    sd["rope_embed.periods"] = rounded.to(stored_dtype)
    save_state_dict(sd, tmp_path / "w.pth")
    model = create_backbone(cfg, tmp_path / "w.pth")
    assert model.rope_embed.periods.dtype == torch.float32
    assert torch.equal(model.rope_embed.periods, rounded.float())
    sin, cos = model.rope_embed(2, 3)
    want_sin, want_cos = _rope_by_hand((2, 3), cfg.head_dim, rounded.float())
    assert torch.allclose(sin, want_sin, atol=1e-6) and torch.allclose(cos, want_cos, atol=1e-6)
    exact_sin, _ = _rope_by_hand((2, 3), cfg.head_dim, exact)
    assert (sin - exact_sin).abs().max() > 1e-4


def test_train_and_eval_differ_only_by_the_rope_augmentation(g):
    sd = _official("vit_tiny_test", g)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        # without the augmentation, train mode is eval mode
        plain = create_backbone(replace(get_config("vit_tiny_test"), rope_rescale_coords=None), sd)
        e = plain.forward_features(x)["x_prenorm"]
        assert torch.equal(plain.train().forward_features(x)["x_prenorm"], e)
        # with it (the released 2.0), train mode draws a coordinate scale ...
        model = create_backbone("vit_tiny_test", sd)
        e = model.forward_features(x)["x_prenorm"]
        t = model.train().forward_features(x)["x_prenorm"]
        assert (t - e).norm() / e.norm() > 1e-4
        # ... and that is the only difference: everything in train mode but the RoPE equals eval
        model.rope_embed.eval()
        assert torch.equal(model.forward_features(x)["x_prenorm"], e)
        # as in the release, every block draws its own coordinate scale in train mode (one table in eval)
        calls = []
        hook = model.rope_embed.register_forward_hook(lambda m, i, o: calls.append(o[0]))
        try:
            model.rope_embed.train()
            model.forward_features(x)
            assert len(calls) == model.n_blocks
            assert not torch.equal(calls[0], calls[1])
            calls.clear()
            model.eval().forward_features(x)
            assert len(calls) == 1
        finally:
            hook.remove()
            model.eval()
        # the ConvNeXt has no train-only behaviour at all
        cnx = create_backbone("convnext_tiny_test", _official("convnext_tiny_test", g))
        y = torch.randn(1, 3, 64, 64)
        assert torch.equal(cnx.forward_features(y)["x_prenorm"], cnx.train().forward_features(y)["x_prenorm"])


# -- safe reading, safetensors ---------------------------------------------------------------
class _RunsOnUnpickle:
    """Unpickling this would call Path.touch(marker): code execution, which must never happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_with_non_tensor_objects_is_refused(g, tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"model": _official("vit_tiny_test", g), "args": _RunsOnUnpickle(marker)}, path)
    with pytest.raises(CheckpointError, match="tensor-only"):
        create_backbone("vit_tiny_test", path)
    assert not marker.exists()


def test_non_tensor_values_are_refused(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"cls_token": torch.zeros(1), "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="flat state dict of tensors"):
        read_state_dict(path)


def test_training_checkpoint_wrappers_are_unwrapped(g, tmp_path):
    sd = _official("vit_tiny_test", g)
    path = tmp_path / "train.pth"
    torch.save({"teacher": {"backbone." + k: v for k, v in sd.items()}, "iteration": torch.tensor(5)}, path)
    assert read_state_dict(path).keys() == sd.keys()


@pytest.mark.parametrize("name", ["vit_tiny_swiglu_test", "convnext_tiny_test"])
def test_safetensors_round_trip(name, g, tmp_path):
    sd = _official(name, g)
    path = tmp_path / "w.safetensors"
    save_state_dict(sd, path, metadata={"dinov3_deploy.model": name})
    back = read_state_dict(path)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    assert read_metadata(path)["dinov3_deploy.model"] == name
    # ConvNeXt's shared norm / norms.3 is written as two tensors (safetensors refuses aliasing) and loads
    model = create_backbone(_cfg(name), path)
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temporary behind


def test_failed_write_leaves_nothing(tmp_path):
    class Boom(Exception):
        pass

    from dinov3_deploy.reference.formats.checkpoints import atomic_write

    def write(tmp):
        Path(tmp).write_text("half")
        raise Boom

    with pytest.raises(Boom):
        atomic_write(tmp_path / "out.pth", write)
    assert list(tmp_path.iterdir()) == []


def test_load_into_is_strict_even_when_called_directly(g):
    model = build_backbone("vit_tiny_test")
    sd = _official("vit_tiny_test", g)
    sd.pop("mask_token")
    with pytest.raises(CheckpointError, match="mask_token"):
        load_into(model, sd)


@pytest.mark.parametrize("source", ["hf", "timm"])
def test_official_keys_pass_any_explicit_source_unchanged(g, source):
    """A wrong --source on an official file is harmless: keys already in our layout win over what a
    converter would synthesise (zero q/v biases, recomputed periods, a zero mask_token)."""
    from dinov3_deploy.reference.formats.checkpoints import to_official

    for name in ("vit_tiny_test", "convnext_tiny_test"):
        sd = _official(name, g)
        if "rope_embed.periods" in sd:
            sd["rope_embed.periods"] = sd["rope_embed.periods"].to(torch.bfloat16).float()
        out = to_official(sd, _cfg(name), source)
        assert out.keys() == sd.keys() and all(torch.equal(out[k], sd[k]) for k in sd)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_saving_views_and_aliases_writes_only_the_tensors(tmp_path, suffix):
    """A q/k/v slice must not drag its whole parent storage into the file, and ConvNeXt's aliased
    norm / norms.3 (one module, two names) must save (safetensors refuses shared storage)."""
    q = torch.randn(3 * 256, 256).chunk(3)[0]  # a third of its storage
    model = build_backbone("convnext_tiny_test")
    sd = {"q": q, **model.state_dict()}
    assert sd["norm.weight"].data_ptr() == sd["norms.3.weight"].data_ptr()
    save_state_dict(sd, tmp_path / f"w{suffix}")
    back = read_state_dict(tmp_path / f"w{suffix}")
    assert back.keys() == sd.keys() and all(torch.equal(back[n], sd[n]) for n in sd)
    payload = sum(t.numel() * t.element_size() for t in sd.values())
    assert (tmp_path / f"w{suffix}").stat().st_size < 1.2 * payload + 64 * 1024
