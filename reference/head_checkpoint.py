"""Head checkpoints: the head's weights (safetensors, never the backbone) + `config.json`.

    ckpt/
      config.json        {"format": "dinov3-deploy-head", "version": 1, "spec": HeadSpec, "layer_ids": [...], ...}
      head.safetensors   head state dict (parameters and BatchNorm statistics)

The directory is written under a temporary name beside the target and renamed when complete, so
a reader never sees half a checkpoint. The exporter's `--head` and `eval --head` read it with
`load_task_model`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from dinov3_deploy.atomic import atomic_dir
from dinov3_deploy.errors import CheckpointError
from dinov3_deploy.hashing import sha256_path

from .factory import RANDOM_INIT
from .models.task_model import HeadSpec, TaskModel

FORMAT = "dinov3-deploy-head"
VERSION = 2  # 2: random backbones are release-like (factory.RANDOM_INIT); backbone_weights recorded
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "head.safetensors"


def save_head_checkpoint(
    path: str | os.PathLike, task_model: TaskModel, extra: dict | None = None, *, backbone_seed: int | None = None,
    backbone_weights: str | os.PathLike | None = None, backbone_init: str | None = None,
) -> Path:
    """Write task_model's head and spec to directory `path` atomically (replacing an old head
    checkpoint, never anything else). The backbone the head was trained on is recorded:
    `backbone_weights` (path and sha256) or `backbone_seed` (it was
    `factory.random_backbone(spec.backbone, backbone_seed, init=backbone_init)`, None: the policy's
    RANDOM_INIT); with neither, loading needs --weights."""
    if backbone_seed is not None and backbone_weights is not None:
        raise ValueError("a head is trained on weights or on a random backbone, not both")
    from safetensors.torch import save_file

    target = Path(path)
    head = task_model.head
    tensors = {} if head is None else {k: v.detach().cpu().contiguous().clone() for k, v in head.state_dict().items()}
    config = {
        "format": FORMAT,
        "version": VERSION,
        "spec": task_model.spec.to_dict(),
        "layer_ids": list(task_model.layer_ids),
        "patch_size": int(getattr(task_model.backbone, "patch_size", 16)),
        "input_multiple": int(task_model.backbone.cfg.input_multiple),
        "backbone_seed": backbone_seed,
        "backbone_init": None if backbone_seed is None else (backbone_init or RANDOM_INIT),
        "backbone_weights": None if backbone_weights is None else {
            "path": str(Path(backbone_weights).resolve()), "sha256": sha256_path(backbone_weights)},
        "extra": dict(extra or {}),
    }
    with atomic_dir(target, overwrite=True, ours=foreign_files, what="a head checkpoint") as tmp:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": FORMAT})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return target


def foreign_files(path: Path) -> list[str] | None:
    """Files in a head checkpoint directory that a head checkpoint does not hold; None when `path`
    is not a head checkpoint (so it is never replaced)."""
    try:
        ours = json.loads((path / CONFIG_NAME).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        return None
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                  if p.is_file() and p.name not in (CONFIG_NAME, WEIGHTS_NAME))


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """The checkpoint directory itself, or a training output directory holding one in `head/`."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"head checkpoint not found: {p}")
    if not p.is_dir():
        raise CheckpointError(f"a head checkpoint is a directory with {CONFIG_NAME} and {WEIGHTS_NAME}; got file {p}")
    if not (p / CONFIG_NAME).exists() and (p / "head" / CONFIG_NAME).exists():
        p = p / "head"
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (p / name).exists():
            raise CheckpointError(
                f"{p} is not a head checkpoint: {name} is missing (write one with `dinov3-deploy train`)"
            )
    return p


def read_head_config(path: str | os.PathLike) -> dict:
    """config.json of a head checkpoint, validated."""
    p = resolve_checkpoint_dir(path)
    try:
        config = json.loads((p / CONFIG_NAME).read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{p / CONFIG_NAME} is not valid JSON: {exc}") from exc
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{p / CONFIG_NAME} is not a {FORMAT} config (format={config.get('format')!r})")
    if int(config.get("version", 0)) > VERSION:
        raise CheckpointError(
            f"{p} was written by a newer dinov3-deploy (head format {config['version']} > {VERSION}); upgrade"
        )
    if "spec" not in config or "task" not in config["spec"] or "backbone" not in config["spec"]:
        raise CheckpointError(f"{p / CONFIG_NAME} lacks the head spec (task, backbone)")
    return config


def read_head_spec(path: str | os.PathLike) -> HeadSpec:
    return HeadSpec.from_dict(read_head_config(path)["spec"])


def recorded_init(config: dict) -> str:
    """The initialisation of the random backbone a head was trained on (heads that predate the
    record were trained on the policy's RANDOM_INIT)."""
    return config.get("backbone_init") or RANDOM_INIT


def backbone_for_head(ckpt_dir: str | os.PathLike, weights: str | os.PathLike | None = None
                      ) -> tuple[str | None, int | None]:
    """(backbone weights path, None) or (None, random seed): the backbone this head was trained on.

    A head is only meaningful on the features it was trained on, so nothing else is accepted:
    recorded weights are used when `weights` is not given and the recorded file still hashes the
    same (a moved file: pass --weights, checked against the recorded hash); a head trained on a
    random backbone gets exactly that random backbone (its recorded seed) and refuses real weights."""
    p = resolve_checkpoint_dir(ckpt_dir)
    config = read_head_config(p)
    seed = config.get("backbone_seed")
    record = config.get("backbone_weights")
    if int(config.get("version", 1)) < 2 and seed is not None:
        raise CheckpointError(
            f"{p} was trained on a random backbone of an older dinov3-deploy (head format {config.get('version')}), "
            "which this version no longer builds; retrain it with `dinov3-deploy train`")
    if seed is not None:
        if weights is not None:
            raise CheckpointError(
                f"{p} was trained on a random backbone (seed {seed}), not on {weights}: its predictions would be "
                "meaningless on other features; drop --weights, or retrain the head with --weights")
        return None, int(seed)
    if record is None:  # older heads: the backbone is not recorded, the user must say it
        if weights is None:
            raise CheckpointError(f"{p} does not record the backbone weights it was trained on; pass --weights PATH")
        return str(weights), None
    want = record.get("sha256")
    if weights is not None:
        if want and Path(weights).exists() and sha256_path(weights) != want:
            raise CheckpointError(
                f"{weights} is not the backbone {p} was trained on ({record.get('path')}, sha256 {want[:12]}…); "
                "pass those weights")
        return str(weights), None
    recorded = record.get("path")
    if not recorded or not Path(recorded).exists():
        raise CheckpointError(
            f"{p} was trained on backbone weights {recorded} (sha256 {str(want)[:12]}…), which are not there any "
            "more; pass --weights PATH to them")
    if want and sha256_path(recorded) != want:
        raise CheckpointError(
            f"{p} was trained on backbone weights {recorded}, but that file has changed since (sha256 differs); "
            "pass --weights PATH to the original weights")
    return recorded, None


def load_task_model(
    ckpt_dir: str | os.PathLike,
    backbone_weights: str | os.PathLike | dict | None = None,
    attn_impl: str = "sdpa",
    *,
    backbone: torch.nn.Module | None = None,
) -> TaskModel:
    """Rebuild the TaskModel of a head checkpoint in eval mode, on the backbone it was trained on
    (`backbone_for_head`: the recorded weights, or the recorded random seed; CheckpointError
    otherwise). `backbone_weights` (any format `create_backbone` reads) overrides the recorded
    path, not the recorded hash; a state dict is taken as given. A `backbone` module is used as
    it is (a multi-head export builds the shared backbone once, after checking that every head
    records the same one)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .factory import create_backbone, random_backbone

    p = resolve_checkpoint_dir(ckpt_dir)
    config = read_head_config(p)
    spec = HeadSpec.from_dict(config["spec"])
    if backbone is not None:
        if backbone.cfg.name != spec.backbone:
            raise CheckpointError(f"{p} is a head for '{spec.backbone}', not '{backbone.cfg.name}'")
    elif isinstance(backbone_weights, dict):  # a state dict: the caller vouches for it
        backbone = create_backbone(spec.backbone, backbone_weights, attn_impl=attn_impl)
    else:
        weights, seed = backbone_for_head(p, backbone_weights)
        if weights is None:
            backbone = random_backbone(spec.backbone, seed, attn_impl=attn_impl, init=recorded_init(config))
        else:
            backbone = create_backbone(spec.backbone, weights, attn_impl=attn_impl)
    with torch.random.fork_rng(devices=[]):  # the head's init is overwritten: leave the caller's RNG alone
        model = TaskModel(backbone, spec)
    if list(model.layer_ids) != list(config.get("layer_ids", model.layer_ids)):
        raise CheckpointError(
            f"{p}: head was trained on blocks {config['layer_ids']} but '{spec.layers}' of {spec.backbone} "
            f"selects {model.layer_ids}"
        )
    try:
        sd = load_file(str(p / WEIGHTS_NAME))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read {p / WEIGHTS_NAME}: {exc}") from exc
    if model.head is None:
        if sd:
            raise CheckpointError(f"{p}: task '{spec.task}' has no head but the checkpoint holds {len(sd)} tensors")
        return model.eval()
    expected = model.head.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = sorted(k for k in set(sd) & set(expected) if tuple(sd[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if wrong:
            shapes = [f"{k}: {tuple(sd[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:5]]
            parts.append("wrong shapes " + ", ".join(shapes))
        raise CheckpointError(
            f"{p / WEIGHTS_NAME} does not fit a {spec.task}/{spec.head_type} head on {spec.backbone} "
            f"({'; '.join(parts)})"
        )
    with torch.no_grad():
        model.head.load_state_dict(sd, strict=True)
    return model.eval()
