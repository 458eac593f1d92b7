"""Segmentation and classification metrics (depth: depth_metrics.py).

Segmentation, with the official (mmseg-style) semantics: per class, intersection and union are
*summed over the whole dataset* (pixels labelled 255 are ignored), IoU = intersection / union per
class, mIoU = nanmean over the classes that appear (union > 0, i.e. present in the labels or
predicted) x 100. aAcc = correct / labelled pixels x 100.

Classification: top-1 / top-5 accuracy in % over the whole dataset (ClsMetrics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

IGNORE_INDEX = 255


def area_stats(pred: torch.Tensor, target: torch.Tensor, n_classes: int, ignore_index: int = IGNORE_INDEX):
    """(intersection, union, pred_area, label_area), each [n_classes] int64, of one or more images."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(target.shape)} differ in shape")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    valid = target != ignore_index
    pred, target = pred[valid], target[valid]
    hit = pred[pred == target]
    inter = torch.bincount(hit, minlength=n_classes)[:n_classes]
    area_pred = torch.bincount(pred.clamp(0, n_classes), minlength=n_classes + 1)[:n_classes]
    area_label = torch.bincount(target.clamp(0, n_classes), minlength=n_classes + 1)[:n_classes]
    return inter, area_pred + area_label - inter, area_pred, area_label


@dataclass
class SegMetrics:
    """Accumulates area statistics over a dataset; `compute()` gives mIoU, aAcc, per-class IoU."""

    n_classes: int
    ignore_index: int = IGNORE_INDEX
    intersection: torch.Tensor = field(init=False)
    union: torch.Tensor = field(init=False)
    label_area: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        z = lambda: torch.zeros(self.n_classes, dtype=torch.float64)
        self.intersection, self.union, self.label_area = z(), z(), z()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        inter, union, _, label = area_stats(pred.cpu(), target.cpu(), self.n_classes, self.ignore_index)
        self.intersection += inter.double()
        self.union += union.double()
        self.label_area += label.double()

    def all_reduce(self) -> None:
        """Sum the statistics over the processes of the default group (no-op without one)."""
        stats = all_reduce_sum(torch.stack([self.intersection, self.union, self.label_area]))
        self.intersection, self.union, self.label_area = stats[0], stats[1], stats[2]

    def iou(self) -> torch.Tensor:
        """Per-class IoU in [0, 1]; NaN for classes that appear nowhere (union 0)."""
        return torch.where(self.union > 0, self.intersection / self.union.clamp(min=1), torch.nan)

    def compute(self) -> dict:
        iou = self.iou()
        present = ~torch.isnan(iou)
        miou = float(iou[present].mean() * 100) if present.any() else math.nan
        labelled = float(self.label_area.sum())
        aacc = float(self.intersection.sum() / labelled * 100) if labelled > 0 else math.nan
        acc = torch.where(self.label_area > 0, self.intersection / self.label_area.clamp(min=1), torch.nan)
        macc = float(acc[~torch.isnan(acc)].mean() * 100) if (~torch.isnan(acc)).any() else math.nan
        return {
            "mIoU": miou,
            "aAcc": aacc,
            "mAcc": macc,
            "IoU": [float(v * 100) for v in iou],
        }


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over the processes of the default group (itself without one); returned on the CPU."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces GPU tensors only
        t = t.to(device)
        dist.all_reduce(t)
    return t.cpu()


def mean_iou(preds, targets, n_classes: int, ignore_index: int = IGNORE_INDEX) -> dict:
    """Metrics of paired sequences of label maps (dataset-level sums, official semantics)."""
    m = SegMetrics(n_classes, ignore_index)
    for p, t in zip(preds, targets):
        m.update(torch.as_tensor(p), torch.as_tensor(t))
    return m.compute()


# -- classification ----------------------------------------------------------------------------------
@dataclass
class ClsMetrics:
    """Top-1 / top-5 accuracy (%) over a dataset, and the accuracy per class. Top-5 is top-k with
    k = min(5, n_classes) (100 % by definition with 5 classes or fewer)."""

    n_classes: int
    correct: torch.Tensor = field(init=False)  # [2]: top-1, top-k hits
    per_class: torch.Tensor = field(init=False)  # [2, C]: top-1 hits, samples of each true class

    def __post_init__(self) -> None:
        self.correct = torch.zeros(2, dtype=torch.float64)
        self.per_class = torch.zeros(2, self.n_classes, dtype=torch.float64)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """logits [B, C], labels [B]; returns the top-1 predictions [B]."""
        logits, labels = logits.detach().float().cpu(), labels.detach().long().cpu().reshape(-1)
        if logits.ndim != 2 or logits.shape[0] != labels.shape[0] or logits.shape[1] != self.n_classes:
            raise ValueError(f"logits {tuple(logits.shape)} do not fit {labels.shape[0]} labels of {self.n_classes} "
                             "classes")
        k = min(5, self.n_classes)
        top = logits.topk(k, dim=1).indices
        hit1 = top[:, 0] == labels
        self.correct += torch.tensor([hit1.sum(), (top == labels[:, None]).any(dim=1).sum()], dtype=torch.float64)
        self.per_class[0] += torch.bincount(labels[hit1], minlength=self.n_classes)[: self.n_classes].double()
        self.per_class[1] += torch.bincount(labels, minlength=self.n_classes)[: self.n_classes].double()
        return top[:, 0]

    def all_reduce(self) -> None:
        stats = all_reduce_sum(torch.cat([self.correct, self.per_class.reshape(-1)]))
        self.correct, self.per_class = stats[:2], stats[2:].reshape(2, self.n_classes)

    def compute(self) -> dict:
        n = float(self.per_class[1].sum())
        acc = torch.where(self.per_class[1] > 0, self.per_class[0] / self.per_class[1].clamp(min=1), torch.nan)
        return {
            "top1": float(self.correct[0] / n * 100) if n else math.nan,
            "top5": float(self.correct[1] / n * 100) if n else math.nan,
            "acc": [float(v * 100) for v in acc],
            "images": int(n),
        }
