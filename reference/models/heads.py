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
    if layer_set not in LAYER_SETS:
        raise ValueError(f"layer set must be one of {LAYER_SETS}, got '{layer_set}'")
    if n_blocks < 4:
        raise ValueError(f"layer set '{layer_set}' needs at least 4 blocks, the backbone has {n_blocks}")
    if layer_set == "four_last":
        return list(range(n_blocks - 4, n_blocks))
    # FOUR_EVEN_INTERVALS as in the release, including its ViT-L special case: the paper's
    # 24-block indices are [4, 11, 17, 23], not the [5, 11, 17, 23] the formula would give.
    if n_blocks == 24:
        return [4, 11, 17, 23]
    return [i * (n_blocks // 4) - 1 for i in range(1, 5)]


def concat_resized(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Resize every map to the first map's size (bilinear, align_corners=False) and concatenate."""
    size = maps[0].shape[-2:]
    resized = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
               for m in maps]
    return torch.cat(resized, dim=1)


def bins_to_depth(logits: torch.Tensor, bin_centers: torch.Tensor) -> torch.Tensor:
    """AdaBins-style read-out: weights relu(x) + 0.1 over the bins (dim 1), normalised to sum to
    one, times the bin centres (metres). Computed in fp32, returned in the logits' dtype."""
    w = torch.relu(logits.float()) + 0.1
    w = w / w.sum(dim=1, keepdim=True)
    return (w * bin_centers.float().view(1, -1, 1, 1)).sum(dim=1, keepdim=True).to(logits.dtype)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics span every process of the default group.

    With frozen features (inputs that need no gradient) this makes multi-process training compute
    what one process with the whole batch computes; torch's SyncBatchNorm does the same but only
    on GPUs. Outside training, or in a single process, it *is* nn.BatchNorm2d (same state dict,
    same exported graph).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not _distributed() or x.requires_grad:
            return super().forward(x)
        import torch.distributed as dist

        xf = x.float()
        stats = torch.stack([xf.sum(dim=(0, 2, 3)), (xf * xf).sum(dim=(0, 2, 3))])
        n = torch.tensor([float(x.shape[0] * x.shape[2] * x.shape[3])], device=x.device)
        dist.all_reduce(stats)
        dist.all_reduce(n)
        mean = stats[0] / n
        var = (stats[1] / n - mean * mean).clamp(min=0)
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
            self.running_mean.mul_(1 - m).add_(m * mean)
            self.running_var.mul_(1 - m).add_(m * var * n / (n - 1).clamp(min=1))
            self.num_batches_tracked.add_(1)
        y = (xf - mean.view(1, -1, 1, 1)) * torch.rsqrt(var.view(1, -1, 1, 1) + self.eps)
        return (y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)).to(x.dtype)


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class LinearSegHead(nn.Module):
    """Dropout2d(0.1) (train only) -> BatchNorm2d -> 1x1 conv, at patch resolution."""

    def __init__(self, in_channels: int, n_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout2d(dropout)
        self.batchnorm_layer = GlobalBatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, n_classes, kernel_size=1)

    def forward(self, maps: Sequence[torch.Tensor], channel_mask: torch.Tensor | None = None) -> torch.Tensor:
        """channel_mask [B,C,1,1] (already scaled by 1/(1-p)) replaces Dropout2d's random draw: the
        trainer derives it from each sample's seed so runs are reproducible across processes."""
        x = concat_resized(maps)
        x = self.dropout(x) if channel_mask is None else x * channel_mask.to(x.dtype)
        return self.conv(self.batchnorm_layer(x))


class LinearClsHead(nn.Module):
    """Linear on concat(cls token, mean of patch tokens)."""

    def __init__(self, embed_dim: int, n_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * embed_dim, n_classes)

    def forward(self, cls_token: torch.Tensor, patch_tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.cat([cls_token, patch_tokens.mean(dim=1)], dim=-1))


class BinsDepthHead(nn.Module):
    """Linear depth head with AdaBins-style bins: 1x1 conv to n_bins logits, weights
    relu(x) + 0.1 normalised over the bins, depth = sum(weight * bin centre) in metres.
    Its BatchNorm is GlobalBatchNorm2d (nn.BatchNorm2d outside multi-process training) so that N
    training processes compute what one does, as for the segmentation head."""

    def __init__(self, in_channels: int, n_bins: int = 256, min_depth: float = 0.001, max_depth: float = 10.0) -> None:
        super().__init__()
        self.batchnorm_layer = GlobalBatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, n_bins, kernel_size=1)
        self.min_depth, self.max_depth = min_depth, max_depth
        self.register_buffer("bin_centers", torch.linspace(min_depth, max_depth, n_bins), persistent=False)

    def bins_to_depth(self, logits: torch.Tensor) -> torch.Tensor:
        return bins_to_depth(logits, self.bin_centers)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.bins_to_depth(self.conv(self.batchnorm_layer(concat_resized(maps))))
