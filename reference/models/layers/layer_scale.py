from __future__ import annotations

import torch
from torch import nn


class LayerScale(nn.Module):
    """Per-channel residual scaling, `gamma` a [D] vector (key `lsN.gamma`)."""

    def __init__(self, dim: int, init_values: float = 1e-5, device=None) -> None:
        super().__init__()
        self.init_values = init_values
        self.gamma = nn.Parameter(torch.full((dim,), init_values, device=device))

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gamma, self.init_values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma
