"""Reading checkpoints safely and fitting them to our modules.

Sources (detected from the keys): "official" (Meta's .pth), "hf" (facebook/dinov3-* in
transformers), "timm" (Eva `vit_*_patch16_dinov3`), and "ours" (safetensors in the official
layout, which is our layout). Each foreign layout has one module with two functions,
`<src>_to_official(sd, cfg)` and `official_to_<src>(sd, cfg)`.
Nothing beyond tensors is ever unpickled (`torch.load(weights_only=True)` or safetensors).
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from dinov3_deploy.errors import CheckpointError

from .configs import BackboneConfig

SOURCES = ("official", "hf", "timm")
StateDict = dict[str, torch.Tensor]


# -- reading ---------------------------------------------------------------------------------
def read_state_dict(path: str | os.PathLike) -> StateDict:
    """Tensors of a .pth/.pt/.bin/.safetensors file or a Hugging Face model directory."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.is_dir():
        return _read_hf_dir(p)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(p)))
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # pickle with code, truncated file, not a checkpoint at all
        raise CheckpointError(
            f"cannot read {p} as a tensor-only checkpoint ({type(exc).__name__}: {exc}). "
            "Only state dicts of tensors are accepted; nothing else is unpickled."
        ) from exc
    return _unwrap(obj, p)


def _unwrap(obj, p: Path) -> StateDict:
    # Training checkpoints nest the weights; take the one dict of tensors inside.
    for key in ("teacher", "model", "state_dict", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{p} does not hold a flat state dict of tensors")
    sd = dict(obj)
    # Strip wrappers' prefixes (DDP "module.", teacher "backbone.").
    for prefix in ("module.", "backbone."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _read_hf_dir(p: Path) -> StateDict:
    from safetensors.torch import load_file

    index = p / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd: StateDict = {}
        for f in files:
            sd.update(load_file(str(p / f)))
        return sd
    if (p / "model.safetensors").exists():
        return dict(load_file(str(p / "model.safetensors")))
    if (p / "pytorch_model.bin").exists():
        return _unwrap(torch.load(p / "pytorch_model.bin", map_location="cpu", weights_only=True), p)
    raise CheckpointError(f"{p} is a directory without model.safetensors or pytorch_model.bin")


# -- layouts ---------------------------------------------------------------------------------
def detect_source(sd: Mapping[str, torch.Tensor]) -> str:
    keys = list(sd)
    if any(k.startswith(("embeddings.", "layer.", "model.embeddings.", "stages.0.layers.")) for k in keys):
        return "hf"
    if any(k.startswith("model.") and ".embeddings." in k for k in keys):
        return "hf"
    if "reg_token" in sd or any(".gamma_1" in k or k.startswith("stem.") for k in keys):
        return "timm"
    return "official"


def _converter(source: str):
    if source not in SOURCES:
        raise CheckpointError(f"unknown checkpoint source '{source}', expected one of {SOURCES} or 'auto'")
    return importlib.import_module(f"dinov3_deploy.reference.convert_{source}") if source != "official" else None


def to_official(sd: StateDict, cfg: BackboneConfig, source: str = "auto") -> StateDict:
    source = detect_source(sd) if source == "auto" else source
    mod = _converter(source)
    return dict(sd) if mod is None else getattr(mod, f"{source}_to_official")(sd, cfg)


def from_official(sd: StateDict, cfg: BackboneConfig, target: str) -> StateDict:
    mod = _converter(target)
    return dict(sd) if mod is None else getattr(mod, f"official_to_{target}")(sd, cfg)


# -- fitting ---------------------------------------------------------------------------------
def load_into(model: torch.nn.Module, sd: StateDict, *, what: str = "checkpoint") -> None:
    """Strict load with a message that names the keys and the likely cause."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shape_bad = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in sd and sd[k].shape != expected[k].shape
    ]
    if missing or unexpected or shape_bad:
        raise CheckpointError(_mismatch_message(model, missing, unexpected, shape_bad, what))
    with torch.no_grad():
        model.load_state_dict(sd, strict=True)


def _mismatch_message(model, missing, unexpected, shape_bad, what) -> str:
    name = getattr(getattr(model, "cfg", None), "name", type(model).__name__)
    lines = [f"{what} does not fit backbone '{name}'."]
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shape_bad)):
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
            lines.append(f"  {title}: {shown}")
    lines.append("  likely cause: " + _likely_cause(model, missing, unexpected, shape_bad))
    return "\n".join(lines)


def _likely_cause(model, missing, unexpected, shape_bad) -> str:
    vit_keys = any(k.startswith(("blocks.", "cls_token")) for k in unexpected)
    cnx_keys = any(k.startswith(("stages.", "downsample_layers.")) for k in unexpected)
    family = getattr(getattr(model, "cfg", None), "family", "")
    if family == "vit" and cnx_keys:
        return "this is a ConvNeXt checkpoint; pick a convnext_* model"
    if family == "convnext" and vit_keys:
        return "this is a ViT checkpoint; pick a vit*16 model"
    if any(k.startswith("local_cls_norm") for k in unexpected) and not missing:
        return "satellite (SAT-493M) weights carry local_cls_norm; they load with the matching model name"
    if shape_bad:
        return "the checkpoint is for another model size; check --model against the file name"
    if any(k.startswith("blocks.") for k in unexpected) or any(k.startswith("blocks.") for k in missing):
        return "a different depth or FFN type (MLP vs SwiGLU: '...plus' models use SwiGLU)"
    return "a different model or an unknown key layout (try --source official|hf|timm)"


# -- writing ---------------------------------------------------------------------------------
def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(tmp_path) then rename onto path, so a failure never leaves a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_state_dict(sd: StateDict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write .safetensors (preferred) or .pth, atomically. Shared tensors are cloned for safetensors."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        tensors = {k: v.detach().contiguous().clone() for k, v in sd.items()}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    else:
        atomic_write(path, lambda tmp: torch.save({k: v.detach() for k, v in sd.items()}, tmp))
