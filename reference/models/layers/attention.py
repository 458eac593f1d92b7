"""Multi-head self-attention with RoPE on patch tokens, behind an implementation switch.

impl:
  "sdpa"   torch's scaled_dot_product_attention (default; fastest eager path)
  "math"   explicit matmuls with the softmax in fp32; the export path (the graph states each op's
           precision: the scores matmul runs in the model's, or in fp32 where `scores_fp32` is set)
  "triton" the fused qkv-split + RoPE + attention kernels of dinov3_deploy.kernels, imported
           lazily so this module needs nothing but torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .rope import rope_apply

ATTN_IMPLS = ("sdpa", "math", "triton")


class LinearKMaskedBias(nn.Linear):
    """The qkv Linear whose K third of the bias is multiplied by a persistent 0/1 `bias_mask`."""

    def __init__(self, in_features: int, out_features: int, device=None) -> None:
        super().__init__(in_features, out_features, bias=True, device=device)
        o = out_features
        mask = torch.ones(o, device=device)
        if not mask.is_meta:
            mask[o // 3 : 2 * o // 3] = 0  # never NaN, even before a checkpoint is loaded
        self.register_buffer("bias_mask", mask, persistent=True)

    def masked_bias(self) -> torch.Tensor:
        return self.bias * self.bias_mask.to(self.bias.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.masked_bias())


class SelfAttention(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, mask_k_bias: bool = True, device=None
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        if qkv_bias and mask_k_bias:
            self.qkv = LinearKMaskedBias(dim, 3 * dim, device=device)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, device=device)
        self.proj = nn.Linear(dim, dim, device=device)
        self.impl = "sdpa"
        # q*scale @ k^T in fp32 in a low-precision model whose scores would pass fp16's 65504 (set per
        # module from an fp16 export's calibration). "math" keeps the weighted sum of v and the projections
        # in the model's precision (|softmax @ v| <= max |v|); "sdpa" runs whole in fp32; "triton" needs
        # nothing (its kernel holds the scores in fp32 registers).
        self.scores_fp32 = False

    def heads(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q, k, v), each [B, heads, N, head_dim], RoPE applied to q and k: what the scores are made
        of (export calibration measures max |q*scale @ k^T| from these, without a second copy of this code)."""
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if rope is not None:
            sin, cos = rope
            q, k = rope_apply(q, sin, cos), rope_apply(k, sin, cos)
        return q, k, v

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, N, C = x.shape
        if self.impl == "triton":
            from dinov3_deploy.kernels.fused_attention import rope_attention

            sin, cos = rope if rope is not None else (None, None)
            out = rope_attention(self.qkv(x), sin, cos, num_heads=self.num_heads)
            return self.proj(out)
        q, k, v = self.heads(x, rope)
        if self.impl == "sdpa":
            if self.scores_fp32:
                out = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(v.dtype)
            else:
                out = F.scaled_dot_product_attention(q, k, v)
        elif self.impl == "math":
            if self.scores_fp32:  # q.k^T past fp16's range: only this matmul (and the softmax) in fp32
                q, k = q.float(), k.float()
            scores = (q * self.scale) @ k.transpose(-2, -1)
            out = scores.float().softmax(dim=-1).to(v.dtype) @ v
        else:
            raise ValueError(f"unknown attention impl '{self.impl}', expected one of {ATTN_IMPLS}")
        return self.proj(out.transpose(1, 2).reshape(B, N, C))
