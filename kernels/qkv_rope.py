"""qkv split + RoPE in Triton: one read of the packed qkv activation, q/k rotated in fp32.

    qkv [B, N, 3*D]  (the qkv Linear's output: q | k | v, each H heads of head_dim)
      -> q, k, v     [B, H, N, head_dim]  (the layout the attention kernel reads)

DINOv3's axial RoPE rotates q and k of the patch tokens only, half-split:
`x*cos + rotate_half(x)*sin`, rotate_half(x) = cat(-x2, x1). The kernel works from a per-token
table (`rope_table`) of N = n_prefix + HW rows in which the prefix rows are the identity
(cos=1, sin=0), so every token takes the same path: no branch on the token index. The sign of
rotate_half is folded into the table (sin's first half negated), so in the kernel the rotation
is `x*cos_t + swap_halves(x)*sin_t`.

One program handles BLOCK_T tokens of one (batch, head): loads q and k rows, rotates them in fp32,
casts back to the input dtype and stores; v is copied (the fused path skips that and reads v
straight from qkv, see fused_attention.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dinov3_deploy.reference.models.layers.rope import rope_apply

from .attention import _program_rows, check_device, interpreting, on_device


@triton.jit
def _rotate_store(src, dst, cos, sin, offs_t, offs_d, swap_d, row_ok, HAS_ROPE: tl.constexpr):
    if HAS_ROPE:
        x = tl.load(src + offs_d[None, :], mask=row_ok, other=0.0).to(tl.float32)
        xs = tl.load(src + swap_d[None, :], mask=row_ok, other=0.0).to(tl.float32)
        y = x * cos + xs * sin
    else:
        y = tl.load(src + offs_d[None, :], mask=row_ok, other=0.0)
    tl.store(dst + offs_d[None, :], y.to(dst.dtype.element_ty), mask=row_ok)


@triton.jit
def _qkv_rope_kernel(
    QKV, COS, SIN, Q, K, V,
    s_b, s_n, so_b, so_h, so_n,
    H, N, D, N_PREFIX,
    HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr, HAS_ROPE: tl.constexpr, WRITE_V: tl.constexpr,
    RAW_SIN: tl.constexpr = False,
):
    b, h, offs_t, offs_d = _program_rows(H, BLOCK_T, HEAD_DIM)
    swap_d = (offs_d + HEAD_DIM // 2) % HEAD_DIM  # partner column of the half-split rotation
    row_ok = offs_t[:, None] < N

    src = QKV + b.to(tl.int64) * s_b + offs_t[:, None] * s_n + h * HEAD_DIM
    dst_off = b.to(tl.int64) * so_b + h.to(tl.int64) * so_h + offs_t[:, None] * so_n
    if HAS_ROPE:
        # table row of token t is t - N_PREFIX; prefix tokens (and rows past N) take the identity
        rope_row = offs_t[:, None] - N_PREFIX
        rot_ok = row_ok & (rope_row >= 0)
        tab = rope_row * HEAD_DIM + offs_d[None, :]
        cos = tl.load(COS + tab, mask=rot_ok, other=1.0)
        sin = tl.load(SIN + tab, mask=rot_ok, other=0.0)
        if RAW_SIN:  # the model's own sin: rotate_half's sign (first half negated) applied here
            sin = tl.where(offs_d[None, :] < HEAD_DIM // 2, -sin, sin)
    else:
        cos = 1.0
        sin = 0.0
    _rotate_store(src, Q + dst_off, cos, sin, offs_t, offs_d, swap_d, row_ok, HAS_ROPE)
    _rotate_store(src + D, K + dst_off, cos, sin, offs_t, offs_d, swap_d, row_ok, HAS_ROPE)
    if WRITE_V:
        _rotate_store(src + 2 * D, V + dst_off, cos, sin, offs_t, offs_d, swap_d, row_ok, False)


# ----------------------------------------------------------------------------------------------
# table + launcher
# ----------------------------------------------------------------------------------------------
def rope_table(sin: torch.Tensor, cos: torch.Tensor, n_prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos_t, sin_t), each [n_prefix + HW, hd] fp32 contiguous: identity rows for the prefix
    tokens, rotate_half's sign folded into sin_t (first half negated)."""
    hw, hd = sin.shape
    half = hd // 2
    sin, cos = sin.float(), cos.float()
    cos_t = torch.cat([cos.new_ones(n_prefix, hd), cos]).contiguous()
    sin_t = torch.cat([sin.new_zeros(n_prefix, hd), torch.cat([-sin[:, :half], sin[:, half:]], dim=1)]).contiguous()
    return cos_t, sin_t


def qkv_rope_config(device: torch.device, head_dim: int = 64) -> dict:
    """GPU: 4096 elements per tensor per program, 8 warps (64 registers/thread for head dims 64
    and 128 in the sm_90 ptxas report; 64 tokens x 128 dims at 4 warps took 255)."""
    if interpreting() or device.type != "cuda":
        return dict(BLOCK_T=16, num_warps=4)
    return dict(BLOCK_T=max(16, 4096 // head_dim), num_warps=8)


def qkv_rope_into(
    qkv: torch.Tensor,
    cos_t: torch.Tensor | None,
    sin_t: torch.Tensor | None,
    num_heads: int,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | None,
    config: dict | None = None,
) -> None:
    """Split qkv [B, N, 3D] into q, k (rotated by the table when given) and v (copied unless
    None), each a [B, H, N, hd] tensor with a contiguous last dim (same strides for all three)."""
    if cos_t is not None and (cos_t.shape != (qkv.shape[1], qkv.shape[2] // 3 // num_heads)
                              or sin_t.shape != cos_t.shape):
        raise ValueError(f"RoPE table must be [N, hd] = {(qkv.shape[1], qkv.shape[2] // 3 // num_heads)}, "
                         f"got {tuple(cos_t.shape)}")
    _launch(qkv, cos_t, sin_t, num_heads, q, k, v, config, n_prefix=0, raw_sin=False)


def _launch(qkv, cos, sin, num_heads, q, k, v, config, *, n_prefix: int, raw_sin: bool) -> None:
    check_device(qkv, q, k)
    B, N, three_d = qkv.shape
    if three_d % (3 * num_heads):
        raise ValueError(f"qkv last dim {three_d} is not 3 * num_heads({num_heads}) * head_dim")
    D = three_d // 3
    hd = D // num_heads
    if hd % 2 or hd & (hd - 1):
        raise ValueError(f"head dim must be a power of two, got {hd}")
    if qkv.stride(-1) != 1 or q.stride(-1) != 1:
        raise ValueError("qkv and the outputs need a contiguous last dimension")
    if q.shape != (B, num_heads, N, hd) or k.stride() != q.stride() or (v is not None and v.stride() != q.stride()):
        raise ValueError(f"q/k/v must be [B, H, N, hd] = {(B, num_heads, N, hd)} with equal strides")
    has_rope = cos is not None
    cfg = dict(config or qkv_rope_config(qkv.device, hd))
    bt = cfg.pop("BLOCK_T")
    grid = (triton.cdiv(N, bt), B * num_heads)
    with on_device(qkv):
        _qkv_rope_kernel[grid](
            qkv, cos if has_rope else qkv, sin if has_rope else qkv, q, k, v if v is not None else q,
            qkv.stride(0), qkv.stride(1), q.stride(0), q.stride(1), q.stride(2),
            num_heads, N, D, n_prefix,
            HEAD_DIM=hd, BLOCK_T=bt, HAS_ROPE=has_rope, WRITE_V=v is not None, RAW_SIN=raw_sin, **cfg,
        )


def qkv_rope_raw_into(
    qkv: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, num_heads: int, q: torch.Tensor, k: torch.Tensor,
    config: dict | None = None,
) -> None:
    """q, k of qkv [B, N, 3D] rotated by the model's own sin/cos [HW, hd] (fp32 contiguous) on the
    last HW tokens: no table to build, so nothing to cache between calls (rope_attention)."""
    _launch(qkv, cos, sin, num_heads, q, k, None, config, n_prefix=qkv.shape[1] - sin.shape[0], raw_sin=True)


# ----------------------------------------------------------------------------------------------
# custom op
# ----------------------------------------------------------------------------------------------
def _split_shape(qkv: torch.Tensor, num_heads: int) -> tuple[int, ...]:
    B, N, three_d = qkv.shape
    return (B, num_heads, N, three_d // 3 // num_heads)


@torch.library.custom_op("dinov3_deploy::qkv_rope", mutates_args=())
def qkv_rope(
    qkv: torch.Tensor, cos_t: torch.Tensor | None, sin_t: torch.Tensor | None, num_heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """qkv [B, N, 3D] + table from `rope_table` (or None: no rotation) -> q, k, v [B, H, N, hd]."""
    shape = _split_shape(qkv, num_heads)
    q, k, v = (torch.empty(shape, dtype=qkv.dtype, device=qkv.device) for _ in range(3))
    qkv_rope_into(qkv, cos_t, sin_t, num_heads, q, k, v)
    return q, k, v


@qkv_rope.register_fake
def _(qkv, cos_t, sin_t, num_heads):
    shape = _split_shape(qkv, num_heads)
    return tuple(qkv.new_empty(shape) for _ in range(3))


# ----------------------------------------------------------------------------------------------
# reference
# ----------------------------------------------------------------------------------------------
def qkv_rope_reference(
    qkv: torch.Tensor, sin: torch.Tensor | None, cos: torch.Tensor | None, num_heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain PyTorch: split, then DINOv3's rope_apply on q and k (the reference model's own
    function: rotation in fp32, prefix tokens passed through)."""
    B, N, three_d = qkv.shape
    hd = three_d // 3 // num_heads
    q, k, v = qkv.reshape(B, N, 3, num_heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
    if sin is None:
        return q.contiguous(), k.contiguous(), v.contiguous()
    return rope_apply(q, sin, cos), rope_apply(k, sin, cos), v.contiguous()
