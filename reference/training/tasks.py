"""What each task brings to the one training loop (trainer.py): its data transform, the frozen
backbone features its head reads, its loss, its evaluation and its figure. The loop itself (data
order, augmentation seeds, optimizer, schedule, resume, processes, checkpoints) knows no task.

    seg    linear head on patch maps; per-pixel cross entropy (255 ignored); sliding-window mIoU
    depth  bins head (linear) or DPT on patch maps, metres; SILog loss; AbsRel/RMSE/log10/delta
    cls    linear head on the class token + mean patch token; cross entropy; top-1/top-5
    seg, head type m2f: ViT-Adapter + Mask2Former on the image (m2f_training.py); Hungarian-matched
           class + mask losses on all 10 predictions; M2F-protocol mIoU (one scale, no flip)

A recipe also brings its optimizer defaults (HEAD_DEFAULTS): the linear probe's, or Mask2Former's
ADE20K recipe for the M2F head.

A loss returns (sum over this process's share, count of the same) so the loop can divide by the
count over all processes: N processes then compute what one process with the whole batch does.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.task_model import TaskModel
from .eval_loop import each_image, model_device
from .metrics import IGNORE_INDEX, ClsMetrics, SegMetrics

HEAD_TYPES = {"seg": ("linear", "m2f"), "depth": ("linear", "dpt"), "cls": ("linear",)}

# Optimizer defaults per head (None in TrainConfig takes these). Linear heads: the probe's (lr by
# task in trainer.DEFAULT_LR). M2F: Mask2Former's ADE20K recipe: AdamW lr 1e-4, weight decay 0.05, poly
# schedule (power 0.9) without warmup, full-model gradient-norm clipping at 0.01.
HEAD_DEFAULTS = {
    "linear": dict(weight_decay=1e-3, warmup=30, grad_clip=0.0, schedule="cosine"),
    "dpt": dict(weight_decay=1e-3, warmup=30, grad_clip=0.0, schedule="cosine"),
    "m2f": dict(lr=1e-4, weight_decay=0.05, warmup=0, grad_clip=0.01, schedule="poly"),
}


# -- frozen backbone features ----------------------------------------------------------------------
@torch.inference_mode()
def backbone_maps(model: TaskModel, x: torch.Tensor, bf16: bool) -> list[torch.Tensor]:
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        maps = model.backbone.get_intermediate_layers(x, n=model.layer_ids, reshape=True, norm=True)
    return [m.float() for m in maps]


@torch.inference_mode()
def backbone_tokens(model: TaskModel, x: torch.Tensor, bf16: bool) -> list[torch.Tensor]:
    """[class token [B, D], patch tokens [B, N, D]] after the final norm: what LinearClsHead reads."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        f = model.backbone.forward_features(x)
    return [f["x_norm_clstoken"].float(), f["x_norm_patchtokens"].float()]


# The head trains on copies made outside inference mode: autograd cannot save inference tensors
# (a conv on them fails in backward). backbone_maps is looked up at call time (tests count its calls).
def _maps(model, x, bf16):
    return [m.clone() for m in backbone_maps(model, x, bf16)]


def _tokens(model, x, bf16):
    return [t.clone() for t in backbone_tokens(model, x, bf16)]


# -- losses ----------------------------------------------------------------------------------------
def seg_loss(head, feats, target, masks, amp: Callable[[], AbstractContextManager], **_):
    with amp():
        logits = head(feats, masks) if masks is not None else head(feats)
    logits = F.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
    loss_sum = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, (target != IGNORE_INDEX).sum().float()


def depth_loss(head, feats, target, masks, amp, **_):
    from .depth_metrics import silog_loss

    with amp():
        depth = head(feats)
    # the prediction (patch grid for the bins head) is compared with the ground truth at full resolution
    depth = F.interpolate(depth.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
    return silog_loss(depth[:, 0], target)


def cls_loss(head, feats, target, masks, amp, **_):
    with amp():
        logits = head(*feats)
    return F.cross_entropy(logits.float(), target, reduction="sum"), torch.tensor(float(target.shape[0]))


# -- evaluation ------------------------------------------------------------------------------------
def seg_logits_fn(model: TaskModel, bf16: bool = False):
    """window batch -> low-resolution logits, for slide_inference (inference mode, optional bf16)."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            return model(x)["logits"].float()

    return fn


def evaluate_seg(model: TaskModel, dataset, *, size: int, crop: int, stride: int | None = None, bf16: bool = False,
                 max_images: int | None = None, rank: int = 0, world: int = 1, keep: int = 0, progress=None
                 ) -> tuple[dict, list]:
    """Sliding-window mIoU/aAcc over `dataset` (images resized to short side `size`, logits resized
    back to the label size). Returns (metrics, up to `keep` (image, gt, pred) triples of rank 0)."""
    from ..protocol.sliding_window import slide_inference
    from .transforms import SegEvalTransform

    stride = stride or max(1, (crop * 2) // 3)
    n_classes = model.spec.n_classes

    def predict(x, target):
        logits = slide_inference(seg_logits_fn(model, bf16), x, n_classes, crop, stride, out_size=tuple(target.shape))
        return logits.argmax(1)[0].cpu()

    return each_image(model, dataset, SegEvalTransform(size, model.spec.mean, model.spec.std), SegMetrics(n_classes),
                       predict, lambda image, mask, target, pred: (image, mask, pred.to(torch.uint8).numpy()),
                       max_images=max_images, rank=rank, world=world, keep=keep, progress=progress)


def evaluate_depth(model: TaskModel, dataset, *, size: int, crop: int | None = None, stride: int | None = None,
                   bf16: bool = False, max_images: int | None = None, rank: int = 0, world: int = 1, keep: int = 0,
                   progress=None) -> tuple[dict, list]:
    """Depth metrics over `dataset`: each whole image resized to short side `size`, predicted by
    `TaskModel.predict` (centre-padded to the input multiple, resized back to the ground truth's
    size), scored where the ground truth is valid. crop/stride are unused (one pass per image)."""
    from .depth_metrics import DepthMetrics
    from .transforms import DepthEvalTransform

    def predict(x, target):
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = model.predict(x, rescale_to=tuple(target.shape))
        return pred.float()[0, 0].cpu()

    return each_image(model, dataset, DepthEvalTransform(size, model.spec.mean, model.spec.std), DepthMetrics(),
                       predict, lambda image, depth, target, pred: (image, target.numpy(), pred.numpy()),
                       max_images=max_images, rank=rank, world=world, keep=keep, progress=progress)


def evaluate_cls(model: TaskModel, dataset, *, size: int, crop: int, stride: int | None = None, bf16: bool = False,
                 max_images: int | None = None, rank: int = 0, world: int = 1, keep: int = 0, progress=None,
                 batch_size: int = 32) -> tuple[dict, list]:
    """Top-1/top-5 over `dataset`: short side resized to `size`, centre crop `crop`. Returns
    (metrics, up to `keep` (image, true, predicted) of rank 0). stride is unused."""
    from .transforms import ClsEvalTransform

    tf = ClsEvalTransform(size, crop, model.spec.mean, model.spec.std)
    metrics = ClsMetrics(model.spec.n_classes)
    kept = []
    was_training = model.training
    model.eval()
    device = model_device(model)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    mine = list(range(rank, n, world))
    for start in range(0, len(mine), batch_size):
        items = [dataset[i] for i in mine[start : start + batch_size]]
        xs, labels = zip(*(tf(image, label) for image, label in items))
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(torch.stack(xs).to(device))["logits"].float()
        pred = metrics.update(logits, torch.stack(labels))
        for (image, label), p in zip(items, pred.tolist()):
            if len(kept) < keep:
                kept.append((image, int(label), int(p)))
            if progress is not None:
                progress()
    metrics.all_reduce()
    model.train(was_training)
    return metrics.compute(), kept


# -- figures ---------------------------------------------------------------------------------------
def seg_figure(path, kept, model: TaskModel, title: str) -> None:
    from .visualize import save_prediction_figure

    save_prediction_figure(path, kept, model.spec.palette, model.spec.class_names, title=title)


def depth_figure(path, kept, model: TaskModel, title: str) -> None:
    from .visualize import save_depth_figure

    save_depth_figure(path, kept, title=title)


def cls_figure(path, kept, model: TaskModel, title: str) -> None:
    from .visualize import save_cls_figure

    save_cls_figure(path, kept, model.spec.class_names, title=title)


# -- transforms ------------------------------------------------------------------------------------
def seg_transform(crop: int, base_size: int, spec):
    from .transforms import SegTrainTransform

    return SegTrainTransform(crop=crop, base_size=base_size, mean=spec.mean, std=spec.std)


def depth_transform(crop: int, base_size: int, spec):
    from .transforms import DepthTrainTransform

    return DepthTrainTransform(crop=crop, base_size=base_size, mean=spec.mean, std=spec.std, photometric=False)


def cls_transform(crop: int, base_size: int, spec):
    from .transforms import ClsTrainTransform

    return ClsTrainTransform(crop=crop, mean=spec.mean, std=spec.std, scale=(0.35, 1.0))


# -- the recipes -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    transform: Callable  # (crop, base_size, spec) -> (image, target, rng) -> (x [3,crop,crop], target tensor)
    features: Callable  # (model, x, bf16) -> list of frozen-backbone tensors the head reads
    loss: Callable  # (head, features, target, dropout masks | None, amp, seed=step seed) -> (loss sum, count)
    evaluate: Callable  # evaluate_* above
    figure: Callable  # (path, kept, model, title)
    scalars: tuple[str, ...]  # metrics logged at every evaluation and recorded in the head checkpoint
    lists: tuple[str, ...] = ()  # per-class metrics, logged at the final evaluation
    fmt: tuple[tuple[str, str, str], ...] = ()  # (key, label, format) of the one-line summary
    build: Callable | None = None  # (cfg, class_names, palette) -> model; None: trainer.build_model (TaskModel)
    save: Callable | None = None  # (path, model, cfg, extra) -> checkpoint dir; None: the head checkpoint

    def summary(self, metrics: dict) -> str:
        return "  ".join(f"{label} {format(metrics[key], f)}" for key, label, f in self.fmt)


RECIPES: dict[str, Recipe] = {
    "seg": Recipe(seg_transform, _maps, seg_loss, evaluate_seg, seg_figure, scalars=("mIoU", "aAcc"), lists=("IoU",),
                  fmt=(("mIoU", "mIoU", ".2f"), ("aAcc", "aAcc", ".2f"))),
    "depth": Recipe(depth_transform, _maps, depth_loss, evaluate_depth, depth_figure,
                    scalars=("AbsRel", "RMSE", "log10", "delta1", "delta2", "delta3"),
                    fmt=(("AbsRel", "AbsRel", ".4f"), ("RMSE", "RMSE", ".4f"), ("log10", "log10", ".4f"),
                         ("delta1", "d1", ".2f"), ("delta2", "d2", ".2f"), ("delta3", "d3", ".2f"))),
    "cls": Recipe(cls_transform, _tokens, cls_loss, evaluate_cls, cls_figure, scalars=("top1", "top5"), lists=("acc",),
                  fmt=(("top1", "top-1", ".2f"), ("top5", "top-5", ".2f"))),
}


def recipe_for(task: str, head_type: str) -> Recipe:
    """The recipe of a task's head: RECIPES[task], or the Mask2Former one for seg + m2f."""
    if task == "seg" and head_type == "m2f":
        from . import m2f_training as m2f

        return Recipe(seg_transform, m2f.images, m2f.m2f_loss, m2f.evaluate_m2f_train, seg_figure,
                      scalars=RECIPES["seg"].scalars, lists=RECIPES["seg"].lists, fmt=RECIPES["seg"].fmt,
                      build=m2f.build_m2f_model, save=m2f.save_m2f_train_head)
    return RECIPES[task]
