from __future__ import annotations

import torch
from torch import nn


class PatchEmbed(nn.Module):
    """Conv2d(3, D, p, stride p) with bias, no norm. Sides that are not a multiple of p are
    floor-cropped by the stride, as in the official code. Returns B x H x W x D."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768, device=None) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)
