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
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from dinov3_deploy.atomic import atomic_write
from dinov3_deploy.errors import CheckpointError

from ..configs import BackboneConfig

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
        return _load_safetensors(p)
    return _torch_load(p)


def _torch_load(p: Path) -> StateDict:
    try:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle with code, truncated file, not a checkpoint at all
        raise CheckpointError(
            f"cannot read {p} as a tensor-only checkpoint ({type(exc).__name__}: {exc}). "
            "Only state dicts of tensors are accepted; nothing else is unpickled."
        ) from exc
    return _unwrap(obj, p)


def _load_safetensors(p: Path) -> StateDict:
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(p)))
    except Exception as exc:  # truncated file, bad header, not safetensors at all
        raise CheckpointError(f"cannot read {p} as safetensors ({type(exc).__name__}: {exc})") from exc


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
    index = p / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd: StateDict = {}
        for f in files:
            sd.update(_load_safetensors(p / f))
        return sd
    if (p / "model.safetensors").exists():
        return _load_safetensors(p / "model.safetensors")
    if (p / "pytorch_model.bin").exists():
        return _torch_load(p / "pytorch_model.bin")
    raise CheckpointError(f"{p} is a directory without model.safetensors or pytorch_model.bin")


# -- layouts ---------------------------------------------------------------------------------
_HF_PATTERNS = re.compile(
    r"(embeddings\.|rope_embeddings\.|layer\.\d+\.|layer_norm\.|stages\.\d+\.(layers|downsample_layers)\.)"
)
_TIMM_PATTERNS = re.compile(r"(reg_token$|blocks\.\d+\.gamma_[12]$|blocks\.\d+\.attn\.[qv]_bias$|stem\.[01]\.|"
                            r"stages\.\d+\.(blocks|downsample)\.|head\.norm\.)")
_OFFICIAL_PATTERNS = re.compile(r"(storage_tokens$|rope_embed\.periods$|blocks\.\d+\.ls[12]\.gamma$|"
                                r"downsample_layers\.\d+\.|stages\.\d+\.\d+\.)")


def detect_source(sd: Mapping[str, torch.Tensor]) -> str:
    """"official" | "hf" | "timm", from the key names (ViT and ConvNeXt layouts of each).

    Hugging Face keys may carry any number of leading `model.` (wrappers, transformers >= 5).
    Decided by counting keys that only one layout uses, so a stray key does not flip it."""
    votes = {"official": 0, "hf": 0, "timm": 0}
    for k in sd:
        bare = k
        while bare.startswith("model."):
            bare = bare[len("model."):]
        if _HF_PATTERNS.match(bare):
            votes["hf"] += 1
        elif _TIMM_PATTERNS.match(k):
            votes["timm"] += 1
        elif _OFFICIAL_PATTERNS.match(k):
            votes["official"] += 1
    best = max(votes, key=lambda s: (votes[s], s == "official"))
    return best if votes[best] else "official"


def detect_family(sd: Mapping[str, torch.Tensor]) -> str | None:
    """"vit" | "convnext" | None, from the key names of any supported layout."""
    keys = list(sd)
    if any(re.search(r"(^|\.)(blocks|layer)\.\d+\.(attn|attention)\.", k) for k in keys):
        return "vit"
    if any(re.search(r"(^|\.)(stages\.\d+\.|downsample_layers\.|stem\.)", k) for k in keys):
        return "convnext"
    return None


def _converter(source: str):
    if source not in SOURCES:
        raise CheckpointError(f"unknown checkpoint source '{source}', expected one of {SOURCES} or 'auto'")
    return None if source == "official" else importlib.import_module(f"{__package__}.convert_{source}")


def to_official(sd: StateDict, cfg: BackboneConfig, source: str = "auto") -> StateDict:
    source = detect_source(sd) if source == "auto" else source
    mod = _converter(source)
    return dict(sd) if mod is None else getattr(mod, f"{source}_to_official")(sd, cfg)


def from_official(sd: StateDict, cfg: BackboneConfig, target: str) -> StateDict:
    mod = _converter(target)
    return dict(sd) if mod is None else getattr(mod, f"official_to_{target}")(sd, cfg)


# -- fitting ---------------------------------------------------------------------------------
def check_fits(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], *, what: str = "checkpoint") -> None:
    """Raise CheckpointError unless `sd` has exactly the model's keys with the model's shapes.
    Works on a meta-device model, so a conversion can be checked without allocating weights."""
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


def load_into(model: torch.nn.Module, sd: StateDict, *, what: str = "checkpoint") -> None:
    """Strict load with a message that names the keys and the likely cause. Buffers come from
    the checkpoint too: stored RoPE periods (bf16-rounded in Meta's files) and bias masks are used
    as stored, never recomputed."""
    check_fits(model, sd, what=what)
    sd = repair_bias_masks(sd)
    with torch.no_grad():
        model.load_state_dict(sd, strict=True)


def repair_bias_masks(sd: StateDict) -> StateDict:
    """Meta's code before dinov3 PR #155 created `bias_mask` full of NaN and set it only in
    init_weights, so a file saved from a model that skipped it holds NaN (NaN * bias = NaN
    features). The mask's meaning is fixed (1 for q, 0 for k, 1 for v): restore it, with a warning."""
    bad = [k for k, v in sd.items() if k.endswith("bias_mask") and not torch.isfinite(v).all()]
    if not bad:
        return sd
    warnings.warn(f"{len(bad)} bias_mask buffer(s) hold NaN/inf (e.g. {bad[0]}); restored to 1/0/1 for q/k/v",
                  stacklevel=3)
    sd = dict(sd)
    for k in bad:
        n = sd[k].numel() // 3
        mask = torch.ones(3 * n, dtype=sd[k].dtype)
        mask[n:2 * n] = 0
        sd[k] = mask
    return sd


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
    cfg = getattr(model, "cfg", None)
    family = getattr(cfg, "family", "")
    found = detect_family(dict.fromkeys(unexpected))
    if family == "vit" and found == "convnext":
        return "this is a ConvNeXt checkpoint; pick a convnext_* model"
    if family == "convnext" and found == "vit":
        return "this is a ViT checkpoint; pick a vit*16 model"
    foreign = detect_source(dict.fromkeys(unexpected)) if unexpected else "official"
    if foreign != "official":
        return f"keys of the '{foreign}' layout were left unconverted; pass --source {foreign}"
    if any(k.startswith("local_cls_norm") for k in unexpected) and not missing:
        return ("satellite (SAT-493M) weights carry the training-only local_cls_norm; load them through "
                "create_backbone, which builds it for such files (and use the SAT-493M mean/std)")
    if family == "vit" and any(k.startswith("local_cls_norm") for k in missing) and not unexpected:
        return "the model expects local_cls_norm (7B / satellite weights) and the file has none: another model?"
    if shape_bad:
        return "the checkpoint is for another model size; check --model against the file name"
    swiglu = any(".mlp.w1." in k for k in unexpected) and any(".mlp.fc1." in k for k in missing)
    mlp = any(".mlp.fc1." in k for k in unexpected) and any(".mlp.w1." in k for k in missing)
    if swiglu:
        return "the checkpoint has SwiGLU FFNs: pick the '...plus' model (or vit7b16)"
    if mlp:
        return "the checkpoint has plain MLP FFNs: pick the model without 'plus'"
    if family == "vit":
        expected = list(model.state_dict())
        present = [k for k in expected if k not in set(missing)] + list(unexpected)
        n_file, n_model = _max_index(present) + 1, _max_index(expected) + 1
        if n_file != n_model:
            return f"the checkpoint has {n_file} blocks and '{cfg.name}' has {n_model}: another model size"
    if missing and not unexpected:
        return "keys are missing: a truncated, filtered or partially saved checkpoint"
    if unexpected and not missing:
        return "extra keys: weights of a larger model (a head or adapter?) or another layout (try --source)"
    return "a different model or an unknown key layout (try --source official|hf|timm)"


def _max_index(keys) -> int:
    idx = [int(m[1]) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k))]
    return max(idx) if idx else -1


# -- writing ---------------------------------------------------------------------------------
def save_state_dict(sd: StateDict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write .safetensors (preferred) or .pth, atomically. .pth holds a plain dict of tensors,
    readable with torch.load(weights_only=True)."""
    path = Path(path)
    tensors = own_storage(sd)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        meta = {"format": "pt", **(metadata or {})}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    else:
        atomic_write(path, lambda tmp: torch.save(tensors, tmp))


def own_storage(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Tensors that each exactly own their storage: views (q/k/v slices, an mmap'ed file) and aliases
    (ConvNeXt's norm / norms.3) are copied, everything else is passed as is (no 2x memory for 7B).
    torch.save would otherwise write whole underlying storages; safetensors refuses aliases."""
    out: StateDict = {}
    seen: set[int] = set()
    for k, v in sd.items():
        v = v.detach()
        st = v.untyped_storage()
        whole = v.is_contiguous() and v.storage_offset() == 0 and st.nbytes() == v.numel() * v.element_size()
        if not whole or st.data_ptr() in seen:
            v = v.contiguous().clone()
            st = v.untyped_storage()
        seen.add(st.data_ptr())
        out[k] = v
    return out


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a .safetensors file ({} for anything else)."""
    p = Path(path)
    if p.suffix != ".safetensors" or not p.is_file():
        return {}
    from safetensors import safe_open

    with safe_open(str(p), framework="pt") as f:
        return dict(f.metadata() or {})
