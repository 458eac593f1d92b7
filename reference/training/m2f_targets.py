"""Mask2Former targets from semantic masks.

Mask2Former is trained on a set of (class, binary mask) pairs per image, not on a class map: the
Hungarian matcher assigns each pair to one query. For semantic segmentation each class present in
the image is one pair (all its pixels, however many separate regions they form). Every seg dataset
here (synthetic, ADE20K with reduce-zero-label already applied by `datasets.SegDataset`, the generic
folder layout) yields the same uint8 class map with 255 = ignore, so one conversion serves them all.

Ignored pixels belong to no mask: every target mask is 0 there, as in Mask2Former's semantic
dataset mapper; classes at or above `n_classes` are an error, not silently dropped.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = 255
Target = dict[str, torch.Tensor]  # {"labels": int64 [K], "masks": bool [K, H, W]}


def semantic_to_targets(mask: torch.Tensor, n_classes: int, ignore_index: int = IGNORE_INDEX) -> Target:
    """mask [H, W] integer class map -> {"labels": int64 [K], "masks": bool [K, H, W]}, one entry per
    class present (ascending), `ignore_index` pixels excluded. K = 0 for an all-ignore image."""
    if mask.dim() != 2:
        raise ValueError(f"a semantic mask is [H, W], got shape {tuple(mask.shape)}")
    mask = mask.long()
    labels = torch.unique(mask)
    labels = labels[labels != ignore_index]
    if labels.numel() and int(labels.max()) >= n_classes:
        raise ValueError(f"class {int(labels.max())} in a mask of a {n_classes}-class dataset "
                         f"(classes 0..{n_classes - 1}, {ignore_index} = ignore)")
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"negative class {int(labels.min())} in a mask")
    masks = mask[None] == labels[:, None, None]
    return {"labels": labels, "masks": masks}


def batch_targets(masks: torch.Tensor, n_classes: int, ignore_index: int = IGNORE_INDEX) -> list[Target]:
    """[B, H, W] class maps (a training batch) -> one target dict per image (`semantic_to_targets`)."""
    if masks.dim() != 3:
        raise ValueError(f"a batch of semantic masks is [B, H, W], got shape {tuple(masks.shape)}")
    return [semantic_to_targets(m, n_classes, ignore_index) for m in masks]
