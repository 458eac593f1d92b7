"""The one place models are built: `create_backbone` (every backbone, random or from a checkpoint),
`random_backbone` and `build_task_model`. It joins the models and the checkpoint formats, so it
sits above both.

Random weights policy (one for the whole tool). Whatever is random in a model that an artifact,
a parity check, a benchmark or the trainer uses is drawn with the "release-like" initialisation
(models/random_init.py: trained-scale LayerScale, norms and linears, so attention and RoPE matter
and a wrong export cannot pass parity by being near the identity) from an explicit seed, with the
caller's RNG left untouched:
  - a random backbone is `random_backbone(name, seed)`: the trainer's (seed = --seed) and the one
    `--head` exports rebuild (the seed the head recorded) are the same call, hence the same weights;
  - a random head on top (`build_task_model(..., seed=seed)`) is built and `release_like_`-drawn
    from `seed + 1`.
The release's training initialisation (`init="train"`, LayerScale 1e-5) is the default of bare
`create_backbone(name)` only, for code that trains a backbone itself.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace

import torch
from torch import nn

from dinov3_deploy.errors import CheckpointError

from .configs import ConvNeXtConfig, ViTConfig, get_config
from .formats.checkpoints import detect_source, load_into, read_state_dict, to_official
from .models.convnext import ConvNeXt
from .models.m2f_segmentor import FFN_DIM, M2FSegmentor, release_like_head_
from .models.random_init import APPLY_INIT, INITS, release_like_
from .models.task_model import HeadSpec, TaskModel
from .models.vit import DinoVisionTransformer


def build_backbone(name_or_cfg: str | ViTConfig | ConvNeXtConfig, device=None) -> nn.Module:
    cfg = get_config(name_or_cfg) if isinstance(name_or_cfg, str) else name_or_cfg
    if isinstance(cfg, ViTConfig):
        return DinoVisionTransformer(cfg, device=device)
    return ConvNeXt(cfg, device=device)


def create_backbone(
    name: str | ViTConfig | ConvNeXtConfig,
    weights: str | os.PathLike | dict | None = None,
    *,
    source: str = "auto",
    attn_impl: str = "sdpa",
    device: str | torch.device | None = None,
    init: str = "train",
) -> nn.Module:
    """Build backbone `name` (a registry name or a config) in eval mode; random init when `weights`
    is None, else load the checkpoint (path, Hugging Face directory or state dict) strictly after
    converting its layout ("official" | "hf" | "timm", detected from the keys when "auto") to ours.
    `init` picks the random initialisation: "train" (the release's), "release-like" (trained-like
    LayerScale and norms, see random_init.py) or "outliers" (release-like with trained-like tiny
    gammas and massive activations, to stress low precision); it is ignored when weights are given."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got '{init}'")
    cfg = get_config(name) if isinstance(name, str) else name
    sd = None
    if weights is not None:
        sd = dict(weights) if isinstance(weights, dict) else read_state_dict(weights)
        src = detect_source(sd) if source == "auto" else source
        sd = to_official(sd, cfg, src)
        cfg = config_for_weights(cfg, sd)
    model = build_backbone(cfg, device=device)
    if sd is not None:
        what = f"checkpoint {weights}" if not isinstance(weights, dict) else "state dict"
        load_into(model, sd, what=what)
    elif init in APPLY_INIT and (device is None or torch.device(device).type != "meta"):
        APPLY_INIT[init](model)
    model.set_attn_impl(attn_impl)
    return model.eval()


RANDOM_INIT = "release-like"


def random_backbone(name: str | ViTConfig | ConvNeXtConfig, seed: int, *, attn_impl: str = "sdpa",
                    init: str | None = None) -> nn.Module:
    """The random backbone of `seed` under the tool's policy (module docstring): same seed, same weights.
    `init` None is the policy's RANDOM_INIT; "outliers" stress-tests low-precision exports."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_backbone(name, None, attn_impl=attn_impl, init=init or RANDOM_INIT)


def config_for_weights(cfg: ViTConfig | ConvNeXtConfig, sd: dict) -> ViTConfig | ConvNeXtConfig:
    """`cfg`, adjusted to what an official-layout state dict legitimately adds: satellite (SAT-493M)
    ViT-L weights carry the training-only local_cls_norm, so the model builds it to load strictly."""
    if isinstance(cfg, ViTConfig) and not cfg.local_cls_norm and any(k.startswith("local_cls_norm.") for k in sd):
        return replace(cfg, local_cls_norm=True)
    return cfg


def count_parameters(model: nn.Module) -> int:
    """Parameters, counting tensors shared between modules once (ConvNeXt's norm / norms.3)."""
    return sum(p.numel() for p in model.parameters())


def build_task_model(
    task: str,
    backbone: str | nn.Module,
    *,
    n_classes: int = 0,
    layers: str = "last",
    backbone_weights=None,
    head_type: str = "linear",
    attn_impl: str = "sdpa",
    seed: int | None = None,
    **spec_kwargs,
) -> TaskModel:
    """A task model with an untrained head (or none for features), in eval mode.

    seed=None: the head has the training initialisation from the global RNG (the trainer's start)
    and a backbone named without weights gets the training init too. With a seed, everything
    random follows the tool's policy (module docstring): `random_backbone(name, seed)` and a
    release-like head drawn from `seed + 1`, the global RNG untouched."""
    if task in ("seg", "cls") and n_classes <= 0:
        raise ValueError(f"task '{task}' needs n_classes > 0")
    if isinstance(backbone, str):
        name = backbone
        if backbone_weights is None and seed is not None:
            backbone = random_backbone(name, seed, attn_impl=attn_impl)
        else:
            backbone = create_backbone(name, backbone_weights, attn_impl=attn_impl)
    else:
        name = backbone.cfg.name
    spec = HeadSpec(task=task, backbone=name, n_classes=n_classes, layers=layers, head_type=head_type, **spec_kwargs)
    if seed is None:
        return TaskModel(backbone, spec).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        model = TaskModel(backbone, spec)
        if model.head is not None:
            release_like_(model.head)
    return model.eval()


FFN_KEY = "segmentation_model.1.predictor.transformer_ffn_layers.0.linear1.weight"  # [ffn, hidden]


def create_segmentor(
    backbone: str,
    weights: str | os.PathLike | dict | None = None,
    head_weights: str | os.PathLike | dict | None = None,
    hidden_dim: int = 2048,
    num_classes: int = 150,
    *,
    layers: list[int] | None = None,
    seed: int = 0,
    attn_impl: str = "sdpa",
    deform_impl: str = "plain",
    device: str | torch.device | None = None,
) -> M2FSegmentor:
    """The release's ViT-Adapter + Mask2Former segmentor on registry backbone `backbone`, in eval mode.

    `weights`: the backbone's checkpoint (any format create_backbone reads) or a whole-segmentor state
    dict / file in Meta's layout (`segmentation_model.*`: backbone and head together).
    `head_weights`: Meta's head file (.pth), our M2F head directory, or a head state dict; hidden_dim
    and num_classes are then read from its tensors. Both load strictly. `layers`: the four backbone
    blocks read (default: the release's four evenly spaced). What is not loaded is random under the
    tool's policy (module docstring): backbone `random_backbone(name, seed)`, head release-like from
    seed + 1. device="meta" builds it without memory (parameter counts)."""
    from .formats.m2f_checkpoint import (
        BACKBONE_PREFIX,
        head_dims,
        load_strict,
        read_m2f_head,
        split_segmentor_state_dict,
    )

    cfg = get_config(backbone)
    if not isinstance(cfg, ViTConfig):
        from dinov3_deploy.errors import DeployError

        raise DeployError(f"the Mask2Former segmentor needs a ViT backbone; '{backbone}' is a ConvNeXt (Meta's "
                          "adapter reads ViT patch tokens only). Pick one of the vit*16 models")
    backbone_sd, head_sd, what = _segmentor_weights(weights)
    init = None  # the policy's random backbone, unless a head records another (train --random-init)
    if head_weights is not None:
        if head_sd is not None:
            raise CheckpointError(f"{what} is a whole segmentor (it holds the head): give it alone, without a head")
        if isinstance(head_weights, dict):
            # cloned: the model takes these tensors themselves and must not alias the caller's
            head_sd = {k: v.clone() for k, v in split_segmentor_state_dict(head_weights)[1].items()}
            what = "head state dict"
        else:
            config, head_sd = read_m2f_head(head_weights)
            what = f"head {head_weights}"
            if config is not None:
                if config.get("backbone") != backbone:
                    raise CheckpointError(f"{head_weights} is an M2F head for '{config.get('backbone')}', "
                                          f"not '{backbone}'")
                layers = config.get("layers") if layers is None else layers
                if weights is None:  # the backbone the head records: its random seed or its weights file
                    seed, backbone_sd = _recorded_backbone(config, head_weights, seed)
                    init = config.get("backbone_init")
    ffn_dim = FFN_DIM
    if head_sd is not None:
        width, hidden_dim, num_classes = head_dims(head_sd, what)
        ffn_dim = int(head_sd.get(FFN_KEY, torch.empty(FFN_DIM)).shape[0])  # trained small heads have their own
        if width != cfg.embed_dim:
            raise CheckpointError(f"{what} is an adapter of width {width}; '{backbone}' has width {cfg.embed_dim}")
    meta = device is not None and torch.device(device).type == "meta"
    if meta:
        bb = build_backbone(cfg, device="meta")
    elif backbone_sd is not None:
        bb = create_backbone(cfg, backbone_sd, attn_impl=attn_impl)
    else:
        bb = random_backbone(cfg, seed, attn_impl=attn_impl, init=init)
    # A head about to be loaded is built on the meta device (no 0.9 G random numbers for the 7B head)
    # and its tensors assigned from the checkpoint.
    on_meta = meta or head_sd is not None
    with torch.random.fork_rng(devices=[]), (torch.device("meta") if on_meta else contextlib.nullcontext()):
        torch.manual_seed(seed + 1)
        model = M2FSegmentor(bb, layers, hidden_dim=hidden_dim, num_classes=num_classes, ffn_dim=ffn_dim)
        if not on_meta:
            release_like_head_(model)
    if head_sd is not None and not meta:
        load_strict(model, head_sd, skip_prefix=BACKBONE_PREFIX, what=what, assign=True)
    model.set_deform_impl(deform_impl)
    if device is not None and not meta:
        model.to(device)
    return model.eval()


def _recorded_backbone(config: dict, where, seed: int) -> tuple[int, dict | None]:
    """(seed, backbone tensors or None) of the backbone an M2F head directory records."""
    if config.get("backbone_seed") is not None:
        return int(config["backbone_seed"]), None
    record = config.get("backbone_weights") or {}
    path = record.get("path")
    if not path:
        return seed, None
    if not os.path.exists(path):
        raise CheckpointError(f"{where} was trained on backbone weights {path}, which are not there any more; "
                              "pass weights= (the CLI: --weights PATH)")
    return seed, read_state_dict(path)


def _segmentor_weights(weights) -> tuple[str | os.PathLike | dict | None, dict | None, str]:
    """(backbone weights for create_backbone or None, head tensors of a whole-segmentor file or None, what)."""
    from .formats.m2f_checkpoint import is_segmentor_state_dict, split_segmentor_state_dict

    if weights is None:
        return None, None, "head"
    sd = dict(weights) if isinstance(weights, dict) else read_state_dict(weights)
    what = "state dict" if isinstance(weights, dict) else f"checkpoint {weights}"
    if is_segmentor_state_dict(sd):
        backbone_sd, head_sd = split_segmentor_state_dict(sd)
        if not backbone_sd:
            raise CheckpointError(f"{what} is a segmentor head without its backbone: pass it as the head weights "
                                  "(CLI: --head) and the backbone checkpoint as the weights")
        if isinstance(weights, dict):  # the model takes the head tensors themselves: not the caller's
            head_sd = {k: v.clone() for k, v in head_sd.items()}
        return backbone_sd, head_sd, what
    # a backbone checkpoint: create_backbone reads it again (memory-mapped) and names the file in its errors
    return (sd if isinstance(weights, dict) else weights), None, what
