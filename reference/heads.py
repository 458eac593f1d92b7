"""Task heads of the official DINOv3 evaluations (linear protocol): segmentation, depth, classification.

Every head reads backbone features through `select_layers` so ViT and ConvNeXt backbones work alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LAYER_SETS = ("last", "four_last", "four_even")


def select_layers(layer_set: str, n_blocks: int) -> list[int]:
    """Block indices of LAST / FOUR_LAST / FOUR_EVEN_INTERVALS for a backbone of n_blocks."""
    if layer_set == "last":
        return [n_blocks - 1]
    if layer_set == "four_last":
        return list(range(n_blocks - 4, n_blocks))
    if layer_set == "four_even":
        return [(i + 1) * n_blocks // 4 - 1 for i in range(4)]
    raise ValueError(f"layer set must be one of {LAYER_SETS}, got '{layer_set}'")


def concat_resized(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Resize every map to the first map's size (bilinear, align_corners=False) and concatenate."""
    size = maps[0].shape[-2:]
    resized = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
               for m in maps]
    return torch.cat(resized, dim=1)


class LinearSegHead(nn.Module):
    """Dropout2d(0.1) (train only) -> BatchNorm2d -> 1x1 conv, at patch resolution."""

    def __init__(self, in_channels: int, n_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout2d(dropout)
        self.batchnorm_layer = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, n_classes, kernel_size=1)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.conv(self.batchnorm_layer(self.dropout(concat_resized(maps))))


class LinearClsHead(nn.Module):
    """Linear on concat(cls token, mean of patch tokens)."""

    def __init__(self, embed_dim: int, n_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * embed_dim, n_classes)

    def forward(self, cls_token: torch.Tensor, patch_tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.cat([cls_token, patch_tokens.mean(dim=1)], dim=-1))


class BinsDepthHead(nn.Module):
    """Linear depth head with AdaBins-style bins: 1x1 conv to n_bins logits, weights
    relu(x) + 0.1 normalised over the bins, depth = sum(weight * bin centre) in metres."""

    def __init__(self, in_channels: int, n_bins: int = 256, min_depth: float = 0.001, max_depth: float = 10.0) -> None:
        super().__init__()
        self.batchnorm_layer = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, n_bins, kernel_size=1)
        self.min_depth, self.max_depth = min_depth, max_depth
        self.register_buffer("bin_centers", torch.linspace(min_depth, max_depth, n_bins), persistent=False)

    def bins_to_depth(self, logits: torch.Tensor) -> torch.Tensor:
        w = torch.relu(logits.float()) + 0.1
        w = w / w.sum(dim=1, keepdim=True)
        return (w * self.bin_centers.view(1, -1, 1, 1)).sum(dim=1, keepdim=True).to(logits.dtype)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.bins_to_depth(self.conv(self.batchnorm_layer(concat_resized(maps))))
