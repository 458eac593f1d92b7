"""The per-image evaluation loop every dense head shares (linear seg, depth, the Mask2Former
segmentor): one module below tasks.py and m2f_eval.py, so neither imports the other."""

from __future__ import annotations

import torch
from torch import nn


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def each_image(model: nn.Module, dataset, transform, metrics, predict, kept_item, *, max_images, rank, world, keep,
                progress) -> tuple[dict, list]:
    """The per-image evaluation loop of seg and depth: this rank's images (i = rank, rank + world,
    ...), `predict(x, target)` in eval mode, metrics reduced over ranks, up to `keep` figure items."""
    kept = []
    was_training = model.training
    model.eval()
    device = model_device(model)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    for i in range(rank, n, world):
        image, raw = dataset[i]
        x, target = transform(image, raw)
        pred = predict(x[None].to(device), target)
        metrics.update(pred, target)
        if len(kept) < keep:
            kept.append(kept_item(image, raw, target, pred))
        if progress is not None:
            progress()
    metrics.all_reduce()
    model.train(was_training)
    return metrics.compute(), kept
