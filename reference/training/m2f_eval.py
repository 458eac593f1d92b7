"""Evaluating a Mask2Former segmentor with the release's protocol (protocol/m2f.py): per image, the
TTA views resized from the uint8 image as the release does (short side `short_side * ratio`, PIL
bilinear), the sliding window over each view and its mirror, softmaxed probabilities averaged,
argmax, scored against the label at its own size (reduce-zero-label comes with the dataset).

It shares the per-image loop, metrics and figures with the linear head's evaluation (tasks.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..protocol.m2f import CROP, SHORT_SIDE, STRIDE, TTA_RATIOS, tta_probabilities, tta_short_sides
from .eval_loop import each_image
from .metrics import SegMetrics
from .transforms import IMAGENET_MEAN, IMAGENET_STD, normalize, rescale_size, resize


def m2f_views(image, short_sides: Sequence[int], mean=IMAGENET_MEAN, std=IMAGENET_STD) -> list[torch.Tensor]:
    """uint8 [H, W, 3] -> one normalised [1, 3, h, w] view per short side (long side in proportion)."""
    h, w = image.shape[:2]
    return [normalize(resize(image, None, rescale_size(h, w, s, 4 * s))[0], mean, std)[None] for s in short_sides]


def evaluate_m2f(segmentor, dataset, *, short_side: int = SHORT_SIDE, crop: int = CROP, stride: int = STRIDE,
                 ratios: Sequence[float] = TTA_RATIOS, flip: bool = True, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 max_images: int | None = None, keep: int = 0, progress=None, rank: int = 0,
                 world: int = 1) -> tuple[dict, list]:
    """mIoU / aAcc / per-class IoU of `segmentor` (M2FSegmentor) over a segmentation dataset with
    the M2F protocol. Returns (metrics, up to `keep` (image, gt, pred) triples). With `world` processes
    each evaluates images rank, rank + world, ... and the metrics are summed over them."""
    sides = tta_short_sides(short_side, ratios)
    n_classes = segmentor.num_classes
    device = next(segmentor.parameters()).device

    def predict(x, target):
        views = [v.to(device) for v in m2f_views(x[0].cpu().numpy(), sides, mean, std)]
        probs = tta_probabilities(segmentor.predict, views, n_classes, tuple(target.shape), crop=crop, stride=stride,
                                  flip=flip)
        return probs.argmax(1)[0].cpu()

    def as_tensor(image, raw):
        return torch.from_numpy(np.ascontiguousarray(image).copy()), torch.as_tensor(np.asarray(raw), dtype=torch.int64)

    return each_image(segmentor, dataset, as_tensor, SegMetrics(n_classes), predict,
                       lambda image, mask, target, pred: (image, mask, pred.to(torch.uint8).numpy()),
                       max_images=max_images, rank=rank, world=world, keep=keep, progress=progress)
