"""The reference trainer of the linear protocol (frozen backbone, trained head), for every task
head: segmentation, depth (bins or DPT, metres) and classification.

    cfg = TrainConfig(out="runs/seg")           # defaults: tiny ViT on the built-in synthetic data
    result = train(cfg)                          # -> {"mIoU": ..., "checkpoint": "runs/seg/head", ...}
    train(TrainConfig(task="depth", out="runs/depth"))   # -> {"AbsRel": ..., "delta1": ..., ...}

- One loop for every task: a task differs only in its data transform, the backbone features its
  head reads, its loss, its metrics and its figure (tasks.py), and its optimizer defaults.
- The backbone is frozen and runs under torch.inference_mode; only the head trains (AdamW, lr DEFAULT_LR,
  wd 1e-3, linear warmup then cosine to 0, optional gradient clipping and bf16 autocast).
- `head_type="m2f"` (seg) trains a ViT-Adapter + Mask2Former head on the same loop
  (m2f_training.py): the frozen backbone runs inside the adapter on each crop (not cached), the
  Mask2Former criterion is the loss, defaults are Mask2Former's ADE20K recipe (tasks.HEAD_DEFAULTS:
  lr 1e-4, wd 0.05, poly schedule, clip 0.01), the checkpoint is an M2F head directory.
- Reproducible by construction: sample k of step s uses the data order of its epoch (a permutation
  seeded by `seed` and the epoch) and its own augmentation and dropout seeds `(seed, s, k)`. A
  resumed run therefore equals an uninterrupted one, and N processes (torchrun, DDP, gloo on CPU)
  equal one process with the same global batch: each rank takes samples k = rank, rank + N, ...,
  batch-norm statistics and the loss normaliser are reduced over all ranks.
- Output directory: `head/` (the head checkpoint `export --head` and `eval --head` take),
  `train_state.pt` (optimizer/scheduler state for --resume), `metrics.jsonl`, `predictions.png`.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from dinov3_deploy.atomic import atomic_write
from dinov3_deploy.errors import CheckpointError, DeployError

from ..models.task_model import TaskModel
from .tasks import HEAD_DEFAULTS, HEAD_TYPES, RECIPES, recipe_for

STATE_NAME = "train_state.pt"
# Peak AdamW learning rates. The depth bins read-out needs large logits (every one of its 256 bins
# keeps a weight floor of 0.1), and the classification head reads unnormalised tokens (no
# BatchNorm in front): both learn several times faster at 1e-2 than at segmentation's 1e-3.
DEFAULT_LR = {"seg": 1e-3, "depth": 1e-2, "cls": 1e-2}


@dataclass
class TrainConfig:
    out: str = "runs/seg"
    task: str = "seg"
    backbone: str = "vit_tiny_test"
    backbone_weights: str | None = None
    init: str | None = None  # a random backbone's initialisation (None: the policy's, factory.RANDOM_INIT)
    layers: str = "last"
    head_type: str = "linear"  # depth: linear (bins) | dpt (needs four layers); seg: linear | m2f
    data: str = "synthetic"
    n_classes: int = 6  # synthetic data only; other datasets bring their classes
    min_depth: float = 0.001  # depth heads: the bins span [min_depth, max_depth] metres
    max_depth: float = 10.0
    n_bins: int = 256
    dpt_features: int = 256  # DPT head width
    hidden_dim: int = 64  # M2F head width (the release's 2048; a multiple of 32); small for CPU demos
    points: int | None = None  # M2F loss points per mask; None: m2f_training.default_points(crop)
    train_size: int = 256  # synthetic data only
    val_size: int = 24  # synthetic data only
    iters: int = 200
    batch_size: int = 8  # global, over all processes
    crop: int = 128
    base_size: int = 128  # short side before the 0.5-2.0 random scaling; eval resizes to it
    lr: float | None = None  # None: DEFAULT_LR of the task
    weight_decay: float | None = None  # None: the head's default (tasks.HEAD_DEFAULTS)
    warmup: int | None = None  # None: the head's default (30; M2F 0)
    grad_clip: float | None = None  # max gradient norm; 0 = off; None: the head's default (0; M2F 0.01)
    bf16: bool = False
    seed: int = 0
    eval_every: int = 0  # 0 = evaluate at the end only
    eval_stride: int | None = None  # default 2/3 of the crop (the release's 341 for 512)
    max_eval_images: int | None = None
    save_every: int = 100
    cache_features: bool = False
    attn_impl: str = "sdpa"
    device: str = "cpu"
    threads: int = 0  # torch intra-op threads; 0 = 1 for the tiny *_test backbones, else torch's default
    log_every: int = 10
    progress: bool = True
    n_figure: int = 4  # predictions drawn in predictions.png (0 = none)

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_defaults(cfg: TrainConfig) -> TrainConfig:
    """cfg with the head's defaults filled in where a field is None (lr stays None: DEFAULT_LR or the
    head's lr is applied at the optimizer, as runs saved before head defaults existed recorded it)."""
    from dataclasses import replace

    defaults = HEAD_DEFAULTS.get(cfg.head_type, HEAD_DEFAULTS["linear"])
    fill = {k: defaults[k] for k in ("weight_decay", "warmup", "grad_clip") if getattr(cfg, k) is None}
    if cfg.head_type == "m2f":
        from .m2f_training import default_points

        if cfg.points is None:
            fill["points"] = default_points(cfg.crop)
        fill["layers"] = "four_even"  # the segmentor reads the release's four evenly spaced blocks
    return replace(cfg, **fill)


def peak_lr(cfg: TrainConfig) -> float:
    if cfg.lr is not None:
        return cfg.lr
    return HEAD_DEFAULTS.get(cfg.head_type, {}).get("lr", DEFAULT_LR[cfg.task])


# -- distributed -----------------------------------------------------------------------------------
def apply_threads(threads: int, backbone: str, device_type: str) -> None:
    """Tensors of the tiny test backbones are too small to split over threads (and doing so is very
    slow on a busy machine), so those run on one thread unless asked otherwise."""
    if threads > 0:
        torch.set_num_threads(threads)
    elif device_type == "cpu" and backbone.endswith("_test"):
        torch.set_num_threads(1)


def _dist():
    import torch.distributed as dist

    return dist


def init_distributed(device: str) -> tuple[int, int]:
    """(rank, world) from torchrun's environment; initialises the default group if needed."""
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(t: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        _dist().all_reduce(t)
    return t


# -- schedule and sampling -------------------------------------------------------------------------
def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup over `warmup` steps, then cosine from 1 to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def poly_factor(step: int, total: int, warmup: int, power: float = 0.9) -> float:
    """Linear warmup over `warmup` steps, then (1 - progress)^power to 0 at `total` (Mask2Former's poly)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 1 - min(1.0, progress)) ** power


SCHEDULES = {"cosine": lr_factor, "poly": poly_factor}


def loss_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the loss's own random draws (M2F point sampling) at `step` on process `rank`."""
    return int(np.random.SeedSequence([seed, step, rank, 5]).generate_state(1, dtype=np.uint64)[0] >> 1)


def sample_indices(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """Dataset indices of the global batch of `step`: epochs are seeded permutations, consumed in order."""
    import numpy as np

    out = []
    for p in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(p, n)
        perm = np.random.default_rng([seed, epoch, 7]).permutation(n)
        out.append(int(perm[pos]))
    return out


def _sample_rng(seed: int, step: int, k: int, view: bool = False):
    """Augmentation RNG of sample k of `step` (or, with view=True, of cached image k)."""
    import numpy as np

    return np.random.default_rng([seed, step, k, 3 if view else 1])


def _dropout_mask(seed: int, step: int, k: int, channels: int, p: float) -> torch.Tensor:
    """Dropout2d's channel mask of sample k of `step`, scaled by 1/(1-p)."""
    import numpy as np

    if p <= 0:
        return torch.ones(channels, 1, 1)
    keep = np.random.default_rng([seed, step, k, 2]).random(channels) >= p
    return torch.from_numpy(keep.astype(np.float32)).view(channels, 1, 1) / (1 - p)


# -- model -----------------------------------------------------------------------------------------
def build_model(cfg: TrainConfig, class_names: list[str], palette: list[list[int]]) -> TaskModel:
    """Backbone (from cfg.backbone_weights, or random from cfg.seed) + a head initialised from cfg.seed."""
    from ..configs import normalization_for_weights
    from ..factory import build_task_model, create_backbone, random_backbone

    if cfg.backbone_weights is None:  # the policy's random backbone: `export --head` rebuilds it from the seed
        backbone = random_backbone(cfg.backbone, cfg.seed, attn_impl=cfg.attn_impl, init=cfg.init)
    else:
        backbone = create_backbone(cfg.backbone, cfg.backbone_weights, attn_impl=cfg.attn_impl)
    mean, std = normalization_for_weights(cfg.backbone_weights)  # SAT-493M weights have their own
    depth = {} if cfg.task != "depth" else dict(min_depth=cfg.min_depth, max_depth=cfg.max_depth, n_bins=cfg.n_bins,
                                                 dpt_features=cfg.dpt_features)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        return build_task_model(
            cfg.task, backbone, n_classes=len(class_names), layers=cfg.layers, head_type=cfg.head_type,
            class_names=list(class_names), palette=[list(map(int, c)) for c in palette],
            mean=mean, std=std, input_size=cfg.crop, **depth,
        )  # fmt: skip


# -- training --------------------------------------------------------------------------------------
class _Batches:
    """Training batches of one rank: augmented on the fly, or from cached per-sample features."""

    def __init__(self, cfg: TrainConfig, dataset, model: TaskModel, rank: int, world: int, device) -> None:
        self.cfg, self.dataset, self.model = cfg, dataset, model
        self.rank, self.world, self.device = rank, world, device
        self.recipe = recipe_for(cfg.task, cfg.head_type)
        self.tf = self.recipe.transform(cfg.crop, cfg.base_size, model.spec)
        self.cache: dict[int, tuple[list[torch.Tensor], torch.Tensor]] = {}

    def _sample(self, idx: int, rng):
        image, target = self.dataset[idx]
        return self.tf(image, target, rng)

    def get(self, step: int):
        """(features, targets, positions k of this rank's samples in the global batch)."""
        cfg = self.cfg
        idx = sample_indices(step, cfg.batch_size, len(self.dataset), cfg.seed)
        ks = list(range(self.rank, cfg.batch_size, self.world))
        if not cfg.cache_features:
            xs, ts = zip(*(self._sample(idx[k], _sample_rng(cfg.seed, step, k)) for k in ks))
            x = torch.stack(xs).to(self.device)
            return self.recipe.features(self.model, x, cfg.bf16), torch.stack(ts).to(self.device), ks
        missing = [idx[k] for k in ks if idx[k] not in self.cache]
        if missing:
            # Linear protocol with cached features: one fixed augmented view per image.
            xs, ts = zip(*(self._sample(i, _sample_rng(cfg.seed, 0, i, view=True)) for i in missing))
            feats = self.recipe.features(self.model, torch.stack(xs).to(self.device), cfg.bf16)
            for j, i in enumerate(missing):
                self.cache[i] = ([f[j : j + 1].clone() for f in feats], ts[j][None].to(self.device))
        items = [self.cache[idx[k]] for k in ks]
        feats = [torch.cat([it[0][n] for it in items]) for n in range(len(items[0][0]))]
        return feats, torch.cat([it[1] for it in items]), ks


def _save_state(path: Path, step: int, head, optimizer, scheduler, cfg: TrainConfig) -> None:
    atomic_write(path, lambda tmp: torch.save(
        {
            "step": step,
            "head": head.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "config": json.dumps(cfg.to_dict()),
        },
        tmp,
    ))


def _load_state(path: Path, cfg: TrainConfig) -> dict:
    if not path.exists():
        raise CheckpointError(f"cannot resume: {path} does not exist (train without --resume first)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read training state {path}: {exc}") from exc
    saved = json.loads(state["config"])
    defaults = TrainConfig().to_dict()  # a state saved before a field existed had its default
    # These must match for the resumed run to be the same run.
    # The process count may change: N processes compute what one does.
    for key in ("task", "backbone", "backbone_weights", "init", "layers", "head_type", "data", "n_classes",
                "train_size", "batch_size", "crop", "base_size", "seed", "cache_features", "iters", "lr",
                "weight_decay", "warmup", "min_depth", "max_depth", "n_bins", "dpt_features", "hidden_dim",
                "points"):
        if saved.get(key, defaults[key]) != getattr(cfg, key):
            raise CheckpointError(
                f"cannot resume from {path}: it was trained with {key}={saved.get(key)!r}, this run has "
                f"{getattr(cfg, key)!r}"
            )
    return state


class _Log:
    def __init__(self, path: Path, enabled: bool, resume: bool) -> None:
        self.path, self.enabled = path, enabled
        if enabled and not resume and path.exists():
            path.unlink()

    def write(self, **row) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")


RUN_FILES = ("metrics.jsonl", STATE_NAME, "predictions.png", "head/config.json", "head/head.safetensors")


def run_foreign_files(out: Path) -> list[str] | None:
    """Files in `out` a training run does not write; None when `out` holds no run of ours."""
    present = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    if not present & {"metrics.jsonl", STATE_NAME, "head/config.json"}:
        return None
    return sorted(present - set(RUN_FILES))


def prepare_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Check --out before any work: --resume needs a run there; otherwise an existing run is
    replaced only with --overwrite and only when it holds nothing but a run's files (a head another
    artifact was exported from is not lost by accident). Creates nothing."""
    from dinov3_deploy.atomic import check_replaceable

    if resume:
        if not (out / STATE_NAME).exists():
            raise CheckpointError(f"cannot resume: {out / STATE_NAME} does not exist (train without --resume first)")
        return
    if out.exists() and out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DeployError(f"{out} already holds files (a training run?); pass --resume to continue it, --overwrite "
                          "to replace it, or choose another --out")
    check_replaceable(out.resolve(), overwrite, run_foreign_files, "a training run")


def _clear_run(out: Path) -> None:
    import shutil

    for rel in RUN_FILES:
        (out / rel).unlink(missing_ok=True)
    shutil.rmtree(out / "head", ignore_errors=True)


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, stop_after: int | None = None,
          console=None) -> dict:
    """Train the head of cfg.task; returns the final metrics and paths. `stop_after` ends the run
    early after that many steps, with its state saved (what an interruption leaves behind).
    An existing run in cfg.out is continued with `resume`, replaced with `overwrite`, else refused.
    torch's thread count is restored on return."""
    if int(os.environ.get("RANK", "0")) == 0:  # other ranks start after rank 0 may have written
        prepare_out(Path(cfg.out), resume=resume, overwrite=overwrite)
    threads = torch.get_num_threads()
    try:
        return _train(cfg, resume=resume, stop_after=stop_after, console=console)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: TrainConfig, *, resume: bool, stop_after: int | None, console) -> dict:
    from .datasets import open_dataset

    if cfg.task not in RECIPES:
        raise DeployError(f"the trainer trains {', '.join(RECIPES)} heads, not '{cfg.task}'")
    if cfg.head_type not in HEAD_TYPES[cfg.task]:
        raise DeployError(f"a {cfg.task} head is {' or '.join(HEAD_TYPES[cfg.task])}, not '{cfg.head_type}'")
    if cfg.head_type == "dpt" and cfg.layers == "last":
        raise DeployError("the DPT head reads four layers: use layers four_even or four_last")
    if cfg.head_type == "m2f" and cfg.cache_features:
        raise DeployError("the M2F head cannot train on cached features: its adapter reads the image and four "
                          "backbone layers at every step (drop --cache-features)")
    cfg = resolve_defaults(cfg)
    recipe = recipe_for(cfg.task, cfg.head_type)
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    apply_threads(cfg.threads, cfg.backbone, device.type)
    rank, world = init_distributed(device.type)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))  # one GPU per process
        torch.cuda.set_device(device)
    if cfg.batch_size % world:
        raise DeployError(f"batch size {cfg.batch_size} is not divisible by the {world} processes")
    train_set = open_dataset(cfg.data, "train", synthetic_size=cfg.train_size, n_classes=cfg.n_classes, task=cfg.task)
    val_set = open_dataset(cfg.data, "val", synthetic_size=cfg.val_size, n_classes=cfg.n_classes, task=cfg.task)
    model = (recipe.build or build_model)(cfg, train_set.class_names, train_set.palette).to(device)
    model.backbone.requires_grad_(False)
    head = model.head
    out = Path(cfg.out)
    is_main = rank == 0
    if is_main:
        if not resume:
            _clear_run(out)  # prepare_out vouched: only a run's own files are there
        out.mkdir(parents=True, exist_ok=True)

    optimizer = torch.optim.AdamW(head.parameters(), lr=peak_lr(cfg), weight_decay=cfg.weight_decay)
    schedule = SCHEDULES[HEAD_DEFAULTS.get(cfg.head_type, HEAD_DEFAULTS["linear"])["schedule"]]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule(s, cfg.iters, cfg.warmup))
    start = 0
    if resume:
        state = _load_state(out / STATE_NAME, cfg)
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = int(state["step"])
    ddp_head = head
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        ddp_head = DistributedDataParallel(head, device_ids=ids)  # buffers agree on every rank (GlobalBatchNorm2d)
    log = _Log(out / "metrics.jsonl", is_main, resume)
    if is_main and not resume:
        log.write(event="config", **cfg.to_dict(), world_size=world)

    batches = _Batches(cfg, train_set, model, rank, world, device)
    dropout_p = float(getattr(getattr(head, "dropout", None), "p", 0.0))
    end = cfg.iters if stop_after is None else min(cfg.iters, start + stop_after)
    progress = _progress(cfg.progress and is_main, console)
    evaluate = functools.partial(recipe.evaluate, size=cfg.base_size, crop=cfg.crop, stride=cfg.eval_stride,
                                 bf16=cfg.bf16, max_images=cfg.max_eval_images, rank=rank, world=world)

    def amp():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)

    t0 = time.perf_counter()
    with progress:
        task_id = progress.add_task("train", total=cfg.iters, completed=start, status="")
        model.train()
        model.backbone.eval()
        for step in range(start, end):
            feats, target, ks = batches.get(step)
            masks = None
            if dropout_p > 0:  # the head's Dropout2d, drawn from each sample's own seed
                channels = sum(m.shape[1] for m in feats)
                masks = torch.stack([_dropout_mask(cfg.seed, step, k, channels, dropout_p) for k in ks]).to(device)
            loss_sum, count = recipe.loss(ddp_head, feats, target, masks, amp, seed=loss_seed(cfg.seed, step, rank))
            valid = _all_reduce(count.detach().float().to(device), world).clamp(min=1)
            # DDP averages gradients over ranks: scale so the result is the global mean (per pixel / image).
            (loss_sum * world / valid).backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            done = step + 1
            loss = float(_all_reduce(loss_sum.detach().clone(), world) / valid)
            if done % cfg.log_every == 0 or done == end:
                log.write(event="train", step=done, loss=loss, lr=optimizer.param_groups[0]["lr"],
                          elapsed_s=round(time.perf_counter() - t0, 3))
            progress.update(task_id, completed=done, status=f"loss {loss:.3f}")
            if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.iters:
                last_eval, _ = evaluate(model, val_set)
                model.backbone.eval()
                log.write(event="eval", step=done, **{k: last_eval[k] for k in recipe.scalars})
                progress.update(task_id, status=f"loss {loss:.3f} {recipe.summary(last_eval)}")
            if is_main and ((cfg.save_every and done % cfg.save_every == 0) or done == end):
                _save_state(out / STATE_NAME, done, head, optimizer, scheduler, cfg)
    train_s = time.perf_counter() - t0
    result = {"step": end, "train_s": train_s, "world_size": world, "out": str(out)}
    if end < cfg.iters:
        return result  # interrupted on purpose; resume with resume=True

    model.eval()
    metrics, kept = evaluate(model, val_set, keep=cfg.n_figure if is_main else 0)
    reported = {k: metrics[k] for k in recipe.scalars + recipe.lists}
    result.update(reported, class_names=list(train_set.class_names))
    if is_main:
        from ..head_checkpoint import save_head_checkpoint

        log.write(event="eval", step=end, **reported)
        extra = {**{k: metrics[k] for k in recipe.scalars}, "train": cfg.to_dict(), "train_s": train_s,
                 "dataset": getattr(train_set, "name", cfg.data)}
        seed = cfg.seed if cfg.backbone_weights is None else None
        if recipe.save is not None:
            result["checkpoint"] = str(recipe.save(out / "head", model, cfg, extra))
        else:
            result["checkpoint"] = str(save_head_checkpoint(out / "head", model, extra=extra, backbone_seed=seed,
                                                            backbone_weights=cfg.backbone_weights,
                                                            backbone_init=cfg.init))
        if kept:
            fig = out / "predictions.png"
            recipe.figure(fig, kept, model, f"{cfg.backbone} + {head_name(cfg.task, cfg.head_type)} head, "
                                            f"{recipe.summary(metrics)}")
            result["figure"] = str(fig)
    if world > 1:
        _dist().barrier()
    return result


def head_name(task: str, head_type: str) -> str:
    """How reports name a head: 'linear', 'bins' (the linear depth head), 'DPT' or 'Mask2Former'."""
    if task == "depth":
        return "DPT" if head_type == "dpt" else "bins"
    return "Mask2Former" if head_type == "m2f" else head_type


def _progress(enabled: bool, console=None):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"), disable=not enabled, console=console, transient=False,
    )  # fmt: skip
