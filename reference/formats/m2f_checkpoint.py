"""Mask2Former segmentor checkpoints: Meta's files and ours.

Meta's layout is the segmentor's own state dict (`segmentation_model.0.backbone.*` the ViT,
`segmentation_model.0.*` the adapter, `segmentation_model.1.{pixel_decoder,predictor}.*` the head).
The release ships it in two files: the head file (`dinov3_vit7b16_ade20k_m2f_head-<hash>.pth`,
every key but the backbone's: 479 tensors) and the usual backbone file. A whole-segmentor state
dict holds both. Our head format stores exactly the head file's tensors under the same keys:

    head_dir/
      config.json         {"format": "dinov3-deploy-m2f-head", "backbone": ..., "layers": [...],
                           "hidden_dim", "num_classes", "backbone_seed" | "backbone_weights", ...}
      head.safetensors    the 479 tensors, Meta's keys

Hidden width and class count are read from the tensors, never assumed. Loading is strict and a
mismatch names the missing and unexpected keys.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from dinov3_deploy.atomic import atomic_dir
from dinov3_deploy.errors import CheckpointError

from .checkpoints import StateDict, read_state_dict

FORMAT = "dinov3-deploy-m2f-head"
VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "head.safetensors"
PREFIX = "segmentation_model."
BACKBONE_PREFIX = "segmentation_model.0.backbone."
CLASS_KEY = "segmentation_model.1.predictor.class_embed.weight"
QUERY_KEY = "segmentation_model.1.predictor.query_feat.weight"
LEVEL_KEY = "segmentation_model.0.level_embed"


def is_segmentor_state_dict(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(PREFIX) for k in sd)


def split_segmentor_state_dict(sd: Mapping[str, torch.Tensor]) -> tuple[StateDict, StateDict]:
    """(backbone tensors with the official ViT keys, head tensors with the segmentor's keys)."""
    backbone = {k[len(BACKBONE_PREFIX):]: v for k, v in sd.items() if k.startswith(BACKBONE_PREFIX)}
    head = {k: v for k, v in sd.items() if not k.startswith(BACKBONE_PREFIX)}
    return backbone, head


def head_dims(head: Mapping[str, torch.Tensor], what: str) -> tuple[int, int, int]:
    """(backbone width, hidden_dim, num_classes) recorded by a head's tensors."""
    missing = [k for k in (CLASS_KEY, QUERY_KEY, LEVEL_KEY) if k not in head]
    if missing:
        raise CheckpointError(f"{what} is not a Mask2Former segmentor head: no {', '.join(missing)}")
    return int(head[LEVEL_KEY].shape[1]), int(head[QUERY_KEY].shape[1]), int(head[CLASS_KEY].shape[0]) - 1


def is_m2f_head_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    try:
        return json.loads((p / CONFIG_NAME).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def is_m2f_head(path: str | os.PathLike) -> bool:
    """Our M2F head directory, or a .pth/.safetensors file holding segmentor keys (Meta's head file)."""
    p = Path(path)
    if p.is_dir():
        return is_m2f_head_dir(p)
    if not p.is_file() or p.suffix not in (".pth", ".pt", ".safetensors"):
        return False
    try:
        return is_segmentor_state_dict(read_state_dict(p))
    except CheckpointError:
        return False


def head_backbone(path: str | os.PathLike, name: str | None = None) -> tuple[str, dict | None]:
    """(backbone name, our config or None) of an M2F head: the one our directory records, else `name`,
    else the registry ViT of the adapter's width when only one has it."""
    from ..configs import ViTConfig, get_config, list_backbones

    config, head = read_m2f_head(path)
    if config is not None:
        if name is not None and name != config.get("backbone"):
            raise CheckpointError(f"{path} is an M2F head for '{config.get('backbone')}', not '{name}'")
        return config["backbone"], config
    if name is not None:
        return name, None
    width = head_dims(head, str(path))[0]
    fits = [n for n in list_backbones() if isinstance(get_config(n), ViTConfig) and get_config(n).embed_dim == width]
    if len(fits) != 1:
        raise CheckpointError(f"{path} is an M2F head for a ViT of width {width} ({', '.join(fits) or 'none known'}): "
                              "name its backbone (--backbone NAME)")
    return fits[0], None


def read_m2f_head(path: str | os.PathLike) -> tuple[dict | None, StateDict]:
    """(our config or None, head tensors) of our head directory or of Meta's head file (.pth) or a
    whole-segmentor file (its backbone tensors are left out here)."""
    p = Path(path)
    if p.is_dir():
        if not is_m2f_head_dir(p):
            raise CheckpointError(f"{p} is not a Mask2Former head directory ({CONFIG_NAME} with format {FORMAT})")
        config = json.loads((p / CONFIG_NAME).read_text())
        if int(config.get("version", 0)) > VERSION:
            raise CheckpointError(f"{p} was written by a newer dinov3-deploy (M2F head format {config['version']})")
        return config, read_state_dict(p / WEIGHTS_NAME)
    sd = read_state_dict(p)
    if not is_segmentor_state_dict(sd):
        raise CheckpointError(f"{p} holds no Mask2Former segmentor keys (segmentation_model.*): not an M2F head file")
    return None, split_segmentor_state_dict(sd)[1]


def load_strict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], *, skip_prefix: str = "",
                what: str = "checkpoint", assign: bool = False) -> None:
    """Load `sd` into `model` strictly, ignoring the model's keys under `skip_prefix` (the backbone,
    loaded on its own); CheckpointError naming the missing / unexpected / mis-shaped keys. `assign`
    takes the tensors themselves (as fp32 where floating), for a model built on the meta device."""
    expected = {k: v for k, v in model.state_dict().items() if not (skip_prefix and k.startswith(skip_prefix))}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        lines = [f"{what} does not fit the Mask2Former segmentor."]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                lines.append(f"  {title}: " + ", ".join(items[:8]) + (f", ... ({len(items)} in all)"
                                                                       if len(items) > 8 else ""))
        if any(k.startswith(BACKBONE_PREFIX) for k in unexpected):
            lines.append("  likely cause: a whole-segmentor file given as the head; pass it as the weights")
        elif shapes:
            lines.append("  likely cause: a head for another backbone size (the adapter's width is the backbone's)")
        raise CheckpointError("\n".join(lines))
    sd = {k: v.float() if assign and v.is_floating_point() else v for k, v in sd.items()}
    with torch.no_grad():
        model.load_state_dict(sd, strict=False, assign=assign)


def save_m2f_head(path: str | os.PathLike, segmentor, *, backbone: str, backbone_seed: int | None = None,
                  backbone_weights: dict | None = None, backbone_init: str | None = None,
                  mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                  extra: dict | None = None) -> Path:
    """Write the segmentor's head (every tensor but the backbone's, Meta's keys) and its config to
    directory `path`, atomically (replacing only an earlier M2F head directory). The backbone is
    recorded as `backbone_seed` (the random backbone `factory.random_backbone(backbone, seed)`) or
    `backbone_weights` ({"path", "sha256"}); `backbone_init` the random backbone's
    initialisation (None: the policy's); `mean`/`std` are the input normalisation."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in segmentor.head_state_dict().items()}
    config = {
        "format": FORMAT, "version": VERSION, "task": "seg", "head_type": "m2f", "backbone": backbone,
        "layers": list(segmentor.layers), "hidden_dim": segmentor.hidden_dim, "num_classes": segmentor.num_classes,
        "backbone_seed": backbone_seed, "backbone_init": backbone_init, "backbone_weights": backbone_weights,
        "mean": list(mean), "std": list(std),
        "extra": dict(extra or {}),
    }
    target = Path(path)
    with atomic_dir(target, overwrite=True, ours=_foreign_files, what="an M2F head checkpoint") as tmp:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": FORMAT})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return target


def _foreign_files(path: Path) -> list[str] | None:
    if not is_m2f_head_dir(path):
        return None
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                  if p.is_file() and p.name not in (CONFIG_NAME, WEIGHTS_NAME))
