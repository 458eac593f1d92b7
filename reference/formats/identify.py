"""Which backbone a checkpoint holds, from what the checkpoint says about itself (never from
its tensors' values): our safetensors metadata, a Hugging Face config.json, or Meta's file name.
Every command asks this one function, so `--model` is needed only where the file is silent."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..configs import get_config, list_backbones
from .checkpoints import read_metadata


def identify_backbone(src: str | os.PathLike) -> tuple[str | None, str]:
    """(backbone name, how it was found) from what SRC says about itself: our safetensors metadata,
    a Hugging Face config.json, or Meta's file name `dinov3_<name>_pretrain_<data>-<hash>.pth`."""
    src = Path(src)
    weights = src / "model.safetensors" if src.is_dir() else src
    name = read_metadata(weights).get("dinov3_deploy.model")
    if name in list_backbones(include_test=True):
        return name, "safetensors metadata"
    config = src / "config.json" if src.is_dir() else None
    if config is not None and config.is_file():
        try:
            hf = json.loads(config.read_text())
        except (OSError, ValueError):
            hf = {}
        for name in list_backbones(include_test=True):
            cfg = get_config(name)
            if cfg.family == "vit":
                want = (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.ffn_layer == "swiglu")
                have = (hf.get("hidden_size"), hf.get("num_hidden_layers"), hf.get("num_attention_heads"),
                        bool(hf.get("use_gated_mlp")))
            else:
                want = (list(cfg.dims), list(cfg.depths))
                have = (hf.get("hidden_sizes"), hf.get("depths"))
            if want == have and hf.get("model_type", "").endswith(cfg.family):
                return name, "config.json"
    m = re.match(r"dinov3_(.+?)_pretrain_", src.name)
    if m and m[1] in list_backbones(include_test=True):
        return m[1], "file name"
    return None, ""
