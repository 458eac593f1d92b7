"""`rope_attention`: DINOv3 self-attention from the packed qkv activation, in two Triton launches.

    qkv [B, N, 3D] --qkv_rope--> q, k [B, H, N, hd] (rotated in fp32, prefix tokens by identity rows)
                   --attention-> out [B, N, D]      (v read in place from qkv, heads written
                                                     side by side: ready for the proj Linear)

This is the entry point of `SelfAttention(impl="triton")` in reference/models/layers/attention.py.
Rotating once in the re-layout instead of inside the attention loop is the cheap place for RoPE
(rotating K in the inner loop costs about a third of the attention time, measured on Hopper).

The RoPE table (identity prefix rows + sin/cos) is built once per (sin, cos) pair and reused by
every block of a forward pass: a one-entry cache that holds the very tensors it was built from
(so an id can never be recycled while cached) and their version counters.
"""

from __future__ import annotations

import torch

from .attention import attention_into, attention_reference
from .qkv_rope import qkv_rope_into, qkv_rope_reference, rope_table

_table_cache: dict[str, tuple] = {}


def _cached_table(sin: torch.Tensor, cos: torch.Tensor, n_prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    hit = _table_cache.get("last")
    if hit is not None:
        s, c, vs, vc, npre, table = hit
        if s is sin and c is cos and vs == sin._version and vc == cos._version and npre == n_prefix:
            return table
    table = rope_table(sin, cos, n_prefix)
    _table_cache["last"] = (sin, cos, sin._version, cos._version, n_prefix, table)
    return table


@torch.library.custom_op("dinov3_deploy::rope_attention", mutates_args=())
def rope_attention(
    qkv: torch.Tensor,
    sin: torch.Tensor | None,
    cos: torch.Tensor | None,
    num_heads: int,
    use_tma: bool = False,
) -> torch.Tensor:
    """Self-attention of qkv [B, N, 3D] with DINOv3 RoPE on the last HW = sin.shape[0] tokens
    (sin/cos [HW, hd] fp32, or None for no RoPE); returns [B, N, D] in qkv's dtype."""
    B, N, three_d = qkv.shape
    D = three_d // 3
    hd = D // num_heads
    table = (None, None)
    if sin is not None:
        if sin.shape[0] > N or sin.shape != cos.shape or sin.shape[1] != hd:
            raise ValueError(f"sin/cos {tuple(sin.shape)} do not fit qkv {tuple(qkv.shape)} with {num_heads} heads")
        table = _cached_table(sin, cos, N - sin.shape[0])
    q = torch.empty((B, num_heads, N, hd), dtype=qkv.dtype, device=qkv.device)
    k = torch.empty_like(q)
    qkv_rope_into(qkv, table[0], table[1], num_heads, q, k, None)
    v = qkv.unflatten(-1, (3, num_heads, hd))[:, :, 2].transpose(1, 2)  # [B, H, N, hd] view of qkv
    out = torch.empty((B, N, num_heads, hd), dtype=qkv.dtype, device=qkv.device)
    attention_into(q, k, v, out.transpose(1, 2), use_tma=use_tma)
    return out.view(B, N, D)


@rope_attention.register_fake
def _(qkv, sin, cos, num_heads, use_tma=False):
    B, N, three_d = qkv.shape
    return qkv.new_empty((B, N, three_d // 3))


def rope_attention_reference(
    qkv: torch.Tensor, sin: torch.Tensor | None, cos: torch.Tensor | None, num_heads: int
) -> torch.Tensor:
    """Plain PyTorch: split + rope_apply + softmax(q k^T / sqrt(hd)) v (scores in fp32) -> [B, N, D]."""
    B, N, three_d = qkv.shape
    out = attention_reference(*qkv_rope_reference(qkv, sin, cos, num_heads))
    return out.transpose(1, 2).reshape(B, N, three_d // 3)
