"""`rope_attention`: DINOv3 self-attention from the packed qkv activation, in two Triton launches.

    qkv [B, N, 3D] --qkv_rope--> q, k [B, H, N, hd] (rotated in fp32, prefix tokens by identity rows)
                   --attention-> out [B, N, D]      (v read in place from qkv, heads written
                                                     side by side: ready for the proj Linear)

This is the entry point of `SelfAttention(impl="triton")` in reference/models/layers/attention.py.
Rotating once in the re-layout instead of inside the attention loop is the cheap place for RoPE
(rotating K in the inner loop costs about a third of the attention time, measured on Hopper).

RoPE is applied from the model's own sin/cos (no table is built: the kernel maps token t to
row t - n_prefix and takes the identity for the prefix), so nothing tensor-valued is cached
between calls: the op works under `torch.inference_mode()` (inference tensors have no version
counter), inside CUDA-graph capture, and on tensors whose contents change between calls.

Host cost. A model calls this op once per block per forward (24 times for vitl16), and at B=1
the GPU work per call is ~30 us, so every microsecond of Python matters. What does not change for
a given shape (validation, head dim, launch grids and configurations, constexprs, strides) is
worked out once per shape key in `_plan` and kept; a call then allocates q, k, out and makes the
two launches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from .attention import (
    LOG2E,
    _attn_fwd_kernel,
    attention_config,
    attention_into,
    attention_reference,
    check_device,
    dot_input_precision,
    on_device,
)
from .qkv_rope import _qkv_rope_kernel, qkv_rope_config, qkv_rope_into, qkv_rope_raw_into, qkv_rope_reference


@dataclass(frozen=True)
class _Plan:
    """Everything about one (shape, dtype, device) that a call would otherwise recompute."""

    q_shape: tuple[int, ...]  # [B, H, N, hd]
    out_shape: tuple[int, ...]  # [B, N, H, hd]: heads side by side, viewed as [B, N, D] at the end
    v_size: tuple[int, ...]  # v as a [B, H, N, hd] view of qkv (as_strided)
    v_stride: tuple[int, ...]
    v_offset: int  # elements from qkv's storage offset
    rope_grid: tuple[int, int]
    rope_ints: tuple[int, ...]  # s_b, s_n, so_b, so_h, so_n, H, N, D, N_PREFIX
    rope_kw: dict
    attn_grid: tuple[int, int]
    attn_ints: tuple[int, ...]  # q, k, v, out strides (b, h, n) each, H, N
    attn_kw: dict
    device_index: int | None  # CUDA device the launches must run on (None: the CPU interpreter)


_PLANS: dict[tuple, _Plan] = {}


def _plan(qkv: torch.Tensor, hw: int, hd_sin: int, num_heads: int) -> _Plan:
    """Validate one shape and work out its launches (kept in _PLANS by the caller)."""
    check_device(qkv)
    B, N, three_d = qkv.shape
    if three_d % (3 * num_heads):
        raise ValueError(f"qkv last dim {three_d} is not 3 * num_heads({num_heads}) * head_dim")
    D = three_d // 3
    hd = D // num_heads
    if hd < 16 or hd & (hd - 1):
        raise ValueError(f"head dim must be a power of two >= 16, got {hd}")
    if hw >= 0 and (hw > N or hd_sin != hd):
        raise ValueError(f"sin/cos [{hw}, {hd_sin}] do not fit qkv {tuple(qkv.shape)} with {num_heads} heads")
    s_b, s_n, s_d = qkv.stride()
    if s_d != 1:
        raise ValueError("qkv needs a contiguous last dimension")
    rcfg = dict(qkv_rope_config(qkv.device, hd))
    bt = rcfg.pop("BLOCK_T")
    acfg = dict(attention_config(B, num_heads, N, hd, qkv.device))
    bm, bn = acfg.pop("BLOCK_M"), acfg.pop("BLOCK_N")
    q_stride = (num_heads * N * hd, N * hd, hd)
    out_stride = (N * D, hd, D)  # [B, N, H, hd] seen as [B, H, N, hd]
    v_stride = (s_b, hd, s_n)
    return _Plan(
        q_shape=(B, num_heads, N, hd), out_shape=(B, N, num_heads, hd),
        v_size=(B, num_heads, N, hd), v_stride=(*v_stride, 1), v_offset=2 * D,
        rope_grid=(triton.cdiv(N, bt), B * num_heads),
        rope_ints=(s_b, s_n, *q_stride, num_heads, N, D, N - max(hw, 0)),
        rope_kw=dict(HEAD_DIM=hd, BLOCK_T=bt, HAS_ROPE=hw >= 0, WRITE_V=False, RAW_SIN=True, **rcfg),
        attn_grid=(triton.cdiv(N, bm), B * num_heads),
        attn_ints=(*q_stride, *q_stride, *v_stride, *out_stride, num_heads, N),
        attn_kw=dict(QK_SCALE=hd**-0.5 * LOG2E, HEAD_DIM=hd, BLOCK_M=bm, BLOCK_N=bn, USE_TMA=False,
                     DOT_PRECISION=dot_input_precision(qkv.dtype), **acfg),
        device_index=qkv.device.index if qkv.device.type == "cuda" else None,
    )


def _launch(plan: _Plan, qkv, sin, cos) -> torch.Tensor:
    q = torch.empty(plan.q_shape, dtype=qkv.dtype, device=qkv.device)
    k = torch.empty(plan.q_shape, dtype=qkv.dtype, device=qkv.device)
    out = torch.empty(plan.out_shape, dtype=qkv.dtype, device=qkv.device)
    v = qkv.as_strided(plan.v_size, plan.v_stride, qkv.storage_offset() + plan.v_offset)
    rope = sin is not None
    _qkv_rope_kernel[plan.rope_grid](qkv, cos if rope else qkv, sin if rope else qkv, q, k, q, *plan.rope_ints,
                                     **plan.rope_kw)
    _attn_fwd_kernel[plan.attn_grid](q, k, v, *plan.attn_ints, out, **plan.attn_kw)
    return out


# Registered through torch.library.Library rather than @custom_op: custom_op wraps every call in an
# autograd function, a redispatch, an aliasing check and a dynamo-disabled frame, which cost more
# than the op's own Python (measured with the launches stubbed, bench_host). A plain backend kernel
# (CompositeExplicitAutograd: CPU and CUDA) is what the dispatcher calls directly; torch.compile and
# torch.export see the same op through the fake implementation below. Inference only: no backward.
_LIB = torch.library.Library("dinov3_deploy", "FRAGMENT")
_LIB.define("rope_attention(Tensor qkv, Tensor? sin, Tensor? cos, int num_heads, bool use_tma=False) -> Tensor")


def _rope_attention(
    qkv: torch.Tensor,
    sin: torch.Tensor | None,
    cos: torch.Tensor | None,
    num_heads: int,
    use_tma: bool = False,
) -> torch.Tensor:
    """Self-attention of qkv [B, N, 3D] with DINOv3 RoPE on the last HW = sin.shape[0] tokens
    (sin/cos [HW, hd] fp32, or None for no RoPE); returns [B, N, D] in qkv's dtype."""
    if sin is not None:
        if sin.shape != cos.shape or sin.dim() != 2:
            raise ValueError(f"sin/cos {tuple(sin.shape)} / {tuple(cos.shape)} must be one [HW, hd] shape")
        if sin.dtype != torch.float32 or not sin.is_contiguous():
            sin = sin.float().contiguous()
        if cos.dtype != torch.float32 or not cos.is_contiguous():
            cos = cos.float().contiguous()
    if use_tma:  # the general launcher: descriptors are built per call
        return _rope_attention_tma(qkv, sin, cos, num_heads)
    hw, hd_sin = (sin.shape[0], sin.shape[1]) if sin is not None else (-1, 0)
    key = (qkv.shape, qkv.stride(), qkv.dtype, qkv.device, hw, hd_sin, num_heads)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _plan(qkv, hw, hd_sin, num_heads)
    B, N = plan.out_shape[:2]
    if plan.device_index is not None and torch.cuda.current_device() != plan.device_index:
        with on_device(qkv):  # Triton launches on the current device, not the tensors'
            out = _launch(plan, qkv, sin, cos)
    else:
        out = _launch(plan, qkv, sin, cos)
    return out.view(B, N, -1)


def _rope_attention_tma(qkv, sin, cos, num_heads):
    B, N, three_d = qkv.shape
    D = three_d // 3
    hd = D // num_heads
    q = torch.empty((B, num_heads, N, hd), dtype=qkv.dtype, device=qkv.device)
    k = torch.empty_like(q)
    if sin is not None:
        if sin.shape[0] > N or sin.shape[1] != hd:
            raise ValueError(f"sin/cos {tuple(sin.shape)} do not fit qkv {tuple(qkv.shape)} with {num_heads} heads")
        qkv_rope_raw_into(qkv, sin, cos, num_heads, q, k)
    else:
        qkv_rope_into(qkv, None, None, num_heads, q, k, None)
    v = qkv.unflatten(-1, (3, num_heads, hd))[:, :, 2].transpose(1, 2)
    out = torch.empty((B, N, num_heads, hd), dtype=qkv.dtype, device=qkv.device)
    attention_into(q, k, v, out.transpose(1, 2), use_tma=True)
    return out.view(B, N, D)


_LIB.impl("rope_attention", _rope_attention, "CompositeExplicitAutograd")


@torch.library.register_fake("dinov3_deploy::rope_attention", lib=_LIB)
def _(qkv, sin, cos, num_heads, use_tma=False):
    B, N, three_d = qkv.shape
    return qkv.new_empty((B, N, three_d // 3))


rope_attention = torch.ops.dinov3_deploy.rope_attention  # (qkv, sin, cos, num_heads, use_tma=False)


def rope_attention_reference(
    qkv: torch.Tensor, sin: torch.Tensor | None, cos: torch.Tensor | None, num_heads: int
) -> torch.Tensor:
    """Plain PyTorch: split + rope_apply + softmax(q k^T / sqrt(hd)) v (scores in fp32) -> [B, N, D]."""
    B, N, three_d = qkv.shape
    out = attention_reference(*qkv_rope_reference(qkv, sin, cos, num_heads))
    return out.transpose(1, 2).reshape(B, N, three_d // 3)
