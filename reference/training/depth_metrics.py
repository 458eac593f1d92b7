"""Depth loss and metrics, in metres, over the pixels whose ground truth is valid (> 0 and finite).

Loss: the scale-invariant log loss (SILog, Eigen et al. 2014) the DINOv3 release trains its depth
heads with. With g = log(pred) - log(gt) over the valid pixels of one image,

    SILog = sqrt( mean(g^2) - lambda * mean(g)^2 ),   lambda = 0.85

lambda = 1 would make the loss blind to a global scale error (the variance of g only); 0.85 keeps
15% of the squared mean so the head still learns metric scale ("variance focus"). The loss is
computed per image and averaged over the images of the global batch, so N processes that each
hold part of the batch compute exactly what one process does.

Metrics (the standard monocular-depth set; per image, then averaged over images):

    AbsRel = mean(|p - g| / g)        RMSE  = sqrt(mean((p - g)^2))     log10 = mean(|log10 p - log10 g|)
    delta_k = fraction of pixels with max(p / g, g / p) < 1.25^k, k = 1, 2, 3   (reported in %)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

SILOG_LAMBDA = 0.85
DELTA_BASE = 1.25
METRIC_NAMES = ("AbsRel", "RMSE", "log10", "delta1", "delta2", "delta3")


def valid_mask(target: torch.Tensor) -> torch.Tensor:
    """Pixels with ground truth: > 0 and finite (0 marks missing depth in NYU-style maps)."""
    return (target > 0) & torch.isfinite(target)


def silog_loss(pred: torch.Tensor, target: torch.Tensor, lam: float = SILOG_LAMBDA, eps: float = 1e-6
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over images of SILog, number of images with valid pixels) for pred/target [B, H, W] or
    [B, 1, H, W] in metres. Images without a valid pixel contribute nothing."""
    pred, target = pred.reshape(pred.shape[0], -1).float(), target.reshape(target.shape[0], -1).float()
    valid = valid_mask(target)
    n = valid.sum(dim=1)
    g = torch.where(valid, torch.log(pred.clamp(min=eps)) - torch.log(target.clamp(min=eps)), 0.0)
    mean = g.sum(dim=1) / n.clamp(min=1)
    mean_sq = (g * g).sum(dim=1) / n.clamp(min=1)
    # clamp: rounding can push the variance term a hair below zero, where sqrt has no gradient
    per_image = torch.sqrt((mean_sq - lam * mean * mean).clamp(min=1e-12))
    has = n > 0
    return torch.where(has, per_image, 0.0).sum(), has.sum().float()


def depth_errors(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float] | None:
    """The metrics of one image (pred and target of the same shape, metres) over its valid pixels;
    None when it has none. deltas in %."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(target.shape)} differ in shape")
    valid = valid_mask(target)
    if not bool(valid.any()):
        return None
    p, g = pred[valid].double().clamp(min=1e-6), target[valid].double()
    ratio = torch.maximum(p / g, g / p)
    out = {
        "AbsRel": float(((p - g).abs() / g).mean()),
        "RMSE": float(((p - g) ** 2).mean().sqrt()),
        "log10": float((torch.log10(p) - torch.log10(g)).abs().mean()),
    }
    for k in (1, 2, 3):
        out[f"delta{k}"] = float((ratio < DELTA_BASE**k).double().mean() * 100)
    return out


@dataclass
class DepthMetrics:
    """Accumulates per-image metrics; `compute()` averages them over the images seen (all processes)."""

    sums: torch.Tensor = field(default_factory=lambda: torch.zeros(len(METRIC_NAMES), dtype=torch.float64))
    images: float = 0.0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, float] | None:
        """Add one image (pred, target [H, W] or [1, H, W]); returns its metrics."""
        e = depth_errors(pred.detach().cpu().float().reshape(target.shape), target.detach().cpu().float())
        if e is not None:
            self.sums += torch.tensor([e[k] for k in METRIC_NAMES], dtype=torch.float64)
            self.images += 1
        return e

    def all_reduce(self) -> None:
        from .metrics import all_reduce_sum

        stats = all_reduce_sum(torch.cat([self.sums, torch.tensor([self.images], dtype=torch.float64)]))
        self.sums, self.images = stats[:-1], float(stats[-1])

    def compute(self) -> dict:
        if self.images == 0:
            return {k: math.nan for k in METRIC_NAMES} | {"images": 0}
        return {k: float(v / self.images) for k, v in zip(METRIC_NAMES, self.sums)} | {"images": int(self.images)}
