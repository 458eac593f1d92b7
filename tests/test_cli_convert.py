"""`dinov3-deploy convert` end to end through click's CliRunner."""

import json
import os

import pytest
import torch
from click.testing import CliRunner

from dinov3_deploy.cli import cli
from dinov3_deploy.reference import create_backbone, get_config
from dinov3_deploy.reference.formats.checkpoints import read_metadata, read_state_dict
from dinov3_deploy.reference.formats.convert_hf import official_to_hf
from dinov3_deploy.reference.formats.convert_timm import official_to_timm


def _official(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A trained-looking official state dict: every tensor random except the buffers' meaning and the
    K third of the qkv bias, which Meta's masked training leaves at its zero init."""
    sd = create_backbone(name).state_dict()
    g = torch.Generator().manual_seed(seed)
    for k, v in sd.items():
        if k.endswith(("bias_mask", "periods")) or k.startswith("norms."):
            continue
        v.copy_(torch.randn(v.shape, generator=g) * 0.1 + (1 if k.endswith("norm.weight") else 0))
        if k.endswith("attn.qkv.bias"):
            d = v.numel() // 3
            v[d:2 * d] = 0
    if "norms.3.weight" in sd:
        sd["norms.3.weight"], sd["norms.3.bias"] = sd["norm.weight"].clone(), sd["norm.bias"].clone()
    return sd


def run(*args):
    return CliRunner().invoke(cli, ["convert", *map(str, args)])


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["vit_tiny_swiglu_test", "convnext_tiny_test"])
def test_official_to_hf_to_official_is_bit_exact(tmp_path, name):
    sd = _official(name)
    torch.save(sd, tmp_path / "orig.pth")
    res = run(tmp_path / "orig.pth", tmp_path / "hf", "--to", "hf", "--model", name)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]
    assert read_metadata(tmp_path / "hf" / "model.safetensors")["dinov3_deploy.model"] == name
    res = run(tmp_path / "hf", tmp_path / "back.pth", "--to", "official", "--model", name)
    assert res.exit_code == 0, res.output
    assert _equal(read_state_dict(tmp_path / "back.pth"), sd)
    # the HF directory itself loads through create_backbone, to the same weights
    assert _equal(create_backbone(name, tmp_path / "hf").state_dict(), sd)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [tmp_path / "hf", *(tmp_path / "hf").iterdir()]}
    assert modes == {"hf": 0o777 & ~umask, "config.json": 0o666 & ~umask, "model.safetensors": 0o666 & ~umask}


def test_hf_directory_is_loadable_by_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    name = "vit_tiny_test"
    torch.save(_official(name), tmp_path / "orig.pth")
    assert run(tmp_path / "orig.pth", tmp_path / "hf", "--to", "hf", "--model", name).exit_code == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "dinov3_vit"
    hf = transformers.DINOv3ViTModel.from_pretrained(tmp_path / "hf").eval()
    ours = create_backbone(name, tmp_path / "orig.pth")
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        f = ours.forward_features(x)
        a = torch.cat([f["x_norm_clstoken"][:, None], f["x_storage_tokens"], f["x_norm_patchtokens"]], 1)
        b = hf(x).last_hidden_state
    assert ((a - b).norm() / b.norm()).item() <= 1e-5


@pytest.mark.parametrize("target,suffix", [("safetensors", ".safetensors"), ("timm", ".safetensors"),
                                           ("timm", ".pth"), ("hf", ".safetensors")])
def test_other_targets_round_trip(tmp_path, target, suffix):
    name = "vit_tiny_test"
    sd = _official(name)
    torch.save(sd, tmp_path / "orig.pth")
    dst = tmp_path / f"out{suffix}"
    res = run(tmp_path / "orig.pth", dst, "--to", target, "--model", name)
    assert res.exit_code == 0, res.output
    if suffix == ".safetensors":
        meta = read_metadata(dst)
        assert meta["dinov3_deploy.model"] == name and meta["format"] == "pt"
        assert meta["dinov3_deploy.layout"] == (target if target != "safetensors" else "official")
    got = create_backbone(name, dst).state_dict()  # source detected from the keys
    if target == "timm":  # timm has no mask_token (pretraining only, multiplied by 0 at inference)
        assert torch.equal(got.pop("mask_token"), torch.zeros(1, 64))
        sd.pop("mask_token")
    assert _equal(got, sd)


def test_explicit_source_and_hf_file_input(tmp_path):
    name = "convnext_tiny_test"
    sd = _official(name)
    torch.save(sd, tmp_path / "orig.pth")
    assert run(tmp_path / "orig.pth", tmp_path / "hf.safetensors", "--to", "hf", "--model", name).exit_code == 0
    res = run(tmp_path / "hf.safetensors", tmp_path / "o.safetensors", "--to", "safetensors", "--model", name,
              "--source", "hf")
    assert res.exit_code == 0, res.output
    assert _equal(read_state_dict(tmp_path / "o.safetensors"), sd)


def test_bf16_periods_are_kept_in_official_and_noted_for_hf(tmp_path):
    name = "vit_tiny_test"
    sd = _official(name)
    sd["rope_embed.periods"] = sd["rope_embed.periods"].to(torch.bfloat16).float()
    torch.save(sd, tmp_path / "orig.pth")
    res = run(tmp_path / "orig.pth", tmp_path / "hf", "--to", "hf", "--model", name)
    assert res.exit_code == 0 and "note: this checkpoint's RoPE periods differ" in res.stderr
    res = run(tmp_path / "orig.pth", tmp_path / "o.safetensors", "--to", "safetensors", "--model", name)
    assert res.exit_code == 0 and "note:" not in res.output
    assert torch.equal(read_state_dict(tmp_path / "o.safetensors")["rope_embed.periods"], sd["rope_embed.periods"])


class _Code:
    def __reduce__(self):
        return (print, ("executed",))


def _bad_inputs(tmp_path):
    vit = tmp_path / "vit.pth"
    torch.save(_official("vit_tiny_test"), vit)
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")
    torch.save({"w": torch.zeros(1), "obj": _Code()}, tmp_path / "code.pth")
    (tmp_path / "exists.pth").write_bytes(b"keep me")
    timm_file = tmp_path / "timm.pth"
    torch.save(official_to_timm(_official("vit_tiny_test"), get_config("vit_tiny_test")), timm_file)
    return {
        "missing file": ([tmp_path / "nope.pth", tmp_path / "o.pth", "--to", "official", "--model", "vit_tiny_test"],
                         "not found"),
        "garbage": ([tmp_path / "garbage.pth", tmp_path / "o.pth", "--to", "official", "--model", "vit_tiny_test"],
                    "tensor-only"),
        "bad safetensors": ([tmp_path / "garbage.safetensors", tmp_path / "o.pth", "--to", "official",
                             "--model", "vit_tiny_test"], "cannot read"),
        "pickled code": ([tmp_path / "code.pth", tmp_path / "o.pth", "--to", "official", "--model", "vit_tiny_test"],
                         "tensor-only"),
        "wrong family": ([vit, tmp_path / "o.pth", "--to", "official", "--model", "convnext_tiny_test"],
                         "ViT checkpoint"),
        "wrong size": ([vit, tmp_path / "o.pth", "--to", "official", "--model", "vit_tiny_swiglu_test"], "plain MLP"),
        "unknown model": ([vit, tmp_path / "o.pth", "--to", "official", "--model", "vitz16"], "unknown backbone"),
        "suffix": ([vit, tmp_path / "o.safetensors", "--to", "official", "--model", "vit_tiny_test"],
                   "--to safetensors"),
        "exists": ([vit, tmp_path / "exists.pth", "--to", "official", "--model", "vit_tiny_test"], "--overwrite"),
        "wrong source": ([timm_file, tmp_path / "o.pth", "--to", "official", "--model", "vit_tiny_test",
                          "--source", "hf"], "left unconverted; pass --source timm"),
    }


def test_bad_input_exits_2_with_a_message_and_writes_nothing(tmp_path):
    for case, (args, expected) in _bad_inputs(tmp_path).items():
        res = run(*args)
        assert res.exit_code == 2, (case, res.output)
        assert "error:" in res.stderr and expected in res.stderr, (case, res.stderr)
        assert "Traceback" not in res.output and "executed" not in res.output, case
        assert not (tmp_path / "o.pth").exists() and not (tmp_path / "o.safetensors").exists(), case
    assert (tmp_path / "exists.pth").read_bytes() == b"keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_force_replaces_an_existing_hf_directory(tmp_path):
    name = "vit_tiny_test"
    torch.save(_official(name, seed=1), tmp_path / "a.pth")
    torch.save(_official(name, seed=2), tmp_path / "b.pth")
    assert run(tmp_path / "a.pth", tmp_path / "hf", "--to", "hf", "--model", name).exit_code == 0
    assert run(tmp_path / "b.pth", tmp_path / "hf", "--to", "hf", "--model", name).exit_code == 2
    assert run(tmp_path / "b.pth", tmp_path / "hf", "--to", "hf", "--model", name, "--force").exit_code == 0
    assert _equal(create_backbone(name, tmp_path / "hf").state_dict(), read_state_dict(tmp_path / "b.pth"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pth", "b.pth", "hf"]


def test_model_is_told_from_the_source_when_not_given(tmp_path):
    name = "vit_tiny_swiglu_test"
    sd = _official(name)
    meta_named = tmp_path / f"dinov3_{name}_pretrain_lvd1689m-0123abcd.pth"  # Meta's naming
    torch.save(sd, meta_named)
    res = run(meta_named, tmp_path / "hf", "--to", "hf")
    assert res.exit_code == 0 and f"model: {name} (file name)" in res.output, res.output
    res = run(tmp_path / "hf", tmp_path / "a.safetensors", "--to", "safetensors")
    assert res.exit_code == 0 and f"model: {name} (safetensors metadata)" in res.output, res.output
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.save(official_to_hf(sd, get_config(name)), tmp_path / "hf" / "pytorch_model.bin")
    res = run(tmp_path / "hf", tmp_path / "b.pth", "--to", "official")
    assert res.exit_code == 0 and f"model: {name} (config.json)" in res.output, res.output
    assert _equal(read_state_dict(tmp_path / "b.pth"), sd)
    torch.save(sd, tmp_path / "weights.pth")
    res = run(tmp_path / "weights.pth", tmp_path / "c.pth", "--to", "official")
    assert res.exit_code == 2 and "pass --model" in res.stderr
