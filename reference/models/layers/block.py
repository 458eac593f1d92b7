from __future__ import annotations

import torch
from torch import nn

from .attention import SelfAttention
from .ffn import Mlp, SwiGLUFFN
from .layer_scale import LayerScale
from .norm import LayerNorm


class SelfAttentionBlock(nn.Module):
    """Pre-norm block: x + ls1 * attn(norm1 x); x + ls2 * ffn(norm2 x)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_hidden: int,
        ffn_layer: str = "mlp",
        qkv_bias: bool = True,
        mask_k_bias: bool = True,
        norm_eps: float = 1e-5,
        layerscale_init: float = 1e-5,
        device=None,
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=norm_eps, device=device)
        self.attn = SelfAttention(dim, num_heads, qkv_bias=qkv_bias, mask_k_bias=mask_k_bias, device=device)
        self.ls1 = LayerScale(dim, layerscale_init, device=device)
        self.norm2 = LayerNorm(dim, eps=norm_eps, device=device)
        ffn_cls = {"mlp": Mlp, "swiglu": SwiGLUFFN}[ffn_layer]
        self.mlp = ffn_cls(dim, ffn_hidden, device=device)
        self.ls2 = LayerScale(dim, layerscale_init, device=device)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))
