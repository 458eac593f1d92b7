"""Axial 2D rotary position embedding of DINOv3 (no learned weights).

Angles are computed from the patch grid size at run time, so any resolution works and the
exported graph carries the formula (Range/Div/Cos/Sin), never a table, an `If` or a `Tile`.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def rope_periods(head_dim: int, base: float, device=None) -> torch.Tensor:
    """The periods as the release computes them at init: base ** (2k / (head_dim/2)), k < head_dim/4,
    in fp32 (checkpoints may store them rounded through bf16; loading keeps theirs)."""
    q = head_dim // 4
    return base ** (2 * torch.arange(q, dtype=torch.float32, device=device) / (head_dim // 2))


class RopePositionEmbedding(nn.Module):
    def __init__(
        self,
        head_dim: int,
        base: float = 100.0,
        rescale_coords: float | None = None,
        device=None,
    ) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"RoPE needs a head dim divisible by 4, got {head_dim}")
        self.head_dim = head_dim
        self.base = base
        self.rescale_coords = rescale_coords
        # Persistent: checkpoints carry it (sometimes rounded through bf16); loading keeps theirs.
        self.register_buffer("periods", torch.empty(head_dim // 4, device=device), persistent=True)
        self._init_weights()

    def _init_weights(self) -> None:
        if self.periods.is_meta:
            return
        self.periods.copy_(rope_periods(self.head_dim, self.base, self.periods.device))

    def forward(self, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sin, cos), each [H*W, head_dim] in fp32."""
        dev = self.periods.device
        ch = (torch.arange(H, dtype=torch.float32, device=dev) + 0.5) / H * 2.0 - 1.0
        cw = (torch.arange(W, dtype=torch.float32, device=dev) + 0.5) / W * 2.0 - 1.0
        coords = torch.stack([ch[:, None].expand(H, W), cw[None, :].expand(H, W)], dim=-1).reshape(-1, 2)
        if self.training and self.rescale_coords is not None:
            # Training-time augmentation of the release: one random scale for both axes.
            lo, hi = math.log(1.0 / self.rescale_coords), math.log(self.rescale_coords)
            coords = coords * torch.empty(1, device=dev).uniform_(lo, hi).exp()
        angles = 2 * math.pi * coords[:, :, None] / self.periods.float()[None, None, :]  # [HW, 2, hd/4]
        angles = angles.flatten(1, 2)  # [HW, hd/2]: first quarter from h, second from w
        angles = torch.cat([angles, angles], dim=-1)  # [HW, hd]; cat, not tile (ONNX hygiene)
        return torch.sin(angles), torch.cos(angles)


def rope_rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rope_apply(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate the last `sin.shape[-2]` tokens of x [..., N, hd] in fp32; prefix tokens pass."""
    dtype = x.dtype
    n_prefix = x.shape[-2] - sin.shape[-2]
    prefix, patches = x[..., :n_prefix, :], x[..., n_prefix:, :].float()
    patches = patches * cos + rope_rotate_half(patches) * sin
    return torch.cat([prefix, patches.to(dtype)], dim=-2)
