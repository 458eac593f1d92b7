"""LayerNorm whose statistics are always computed in fp32 (the numerics policy), so a model cast
to fp16/bf16 normalises exactly like the fp32 one up to the final cast. Same state-dict keys as
nn.LayerNorm, identical results in fp32."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _fp32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float()


class LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)
        y = F.layer_norm(x.float(), self.normalized_shape, _fp32(self.weight), _fp32(self.bias), self.eps)
        return y.to(x.dtype)


class LayerNorm2d(LayerNorm):
    """LayerNorm over the channel dim of an NCHW tensor (ConvNeXt's "channels_first")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class GroupNorm(nn.GroupNorm):
    """GroupNorm with fp32 statistics under fp16 / bf16, as LayerNorm above (the Mask2Former pixel decoder's):
    a mean and variance accumulated in bf16 lose everything past 8 bits (measured: docs/m2f.md)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)
        y = F.group_norm(x.float(), self.num_groups, _fp32(self.weight), _fp32(self.bias), self.eps)
        return y.to(x.dtype)
