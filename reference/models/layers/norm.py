"""LayerNorm whose statistics are always computed in fp32 (the numerics policy), so a model cast
to fp16/bf16 normalises exactly like the fp32 one up to the final cast. Same state-dict keys as
nn.LayerNorm, identical results in fp32."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class LayerNorm2d(LayerNorm):
    """LayerNorm over the channel dim of an NCHW tensor (ConvNeXt's "channels_first")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
