"""Non-causal scaled-dot-product attention (online softmax, fp32 accumulation) in Triton.

    out[b, h] = softmax(q[b, h] @ k[b, h]^T * scale) @ v[b, h]

q, k, v and the output are 4-D [B, H, N, head_dim] tensors with *any* strides (last stride 1),
so the fused path can read V straight out of the packed qkv activation and write the output in
[B, N, H, head_dim] order (= [B, N, D], ready for the projection) without copies.

One program computes BLOCK_M query rows of one (batch, head) against all keys, streaming
BLOCK_N keys at a time. Key blocks are loaded unmasked except the last, partial one (sequence
lengths such as 1029 or 4101 are not multiples of any block), whose missing columns are set to
-inf before the softmax. Programs are ordered query-block fastest so that the programs of one
head run together and share its K/V in L2. For small grids (B=1) the launcher's 64-row blocks at
4 warps (`attention_config`) give enough programs, several resident per SM, to cover the SMs,
instead of splitting the keys (which needs scratch memory and a second pass).

Two variants, one kernel body:
  * pointer loads (`use_tma=False`): no TMA descriptors, no scratch memory; the variant meant
    for TensorRT plugins / AOT PTX (engines/plugins.py);
  * host-side TMA tensor descriptors (`use_tma=True`, Hopper only): the bulk copy engine moves
    the tiles, out-of-range rows are zero-filled / clipped by the hardware.
Head dims 64 and 128 are what the GPU configurations are tuned for; any power of two >= 16
works (the tests also run 32).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os

import torch
import triton
import triton.language as tl

from dinov3_deploy.errors import DeployError

from .precision import dot_input_precision, dot_precision  # noqa: F401 - re-exported

LOG2E = 1.4426950408889634
log = logging.getLogger("dinov3_deploy.kernels")


# ----------------------------------------------------------------------------------------------
# kernel
# ----------------------------------------------------------------------------------------------
@triton.jit
def _tile_load(desc, b, h, start, BNH: tl.constexpr, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Load a [ROWS, HEAD_DIM] tile of head h through a TMA descriptor indexed in memory order:
    (b, n, h, d) when BNH (packed qkv, [B, N, D] output), else (b, h, n, d)."""
    if BNH:
        x = desc.load([b, start, h, 0])
    else:
        x = desc.load([b, h, start, 0])
    return x.reshape(ROWS, HEAD_DIM)


@triton.jit
def _program_rows(H, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr):
    """This program's (b, h, row offsets [BLOCK], column offsets [HEAD_DIM]): grid axis 0 walks
    blocks of BLOCK rows (tokens), axis 1 the (batch, head) pairs."""
    pid_bh = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    return pid_bh // H, pid_bh % H, rows, tl.arange(0, HEAD_DIM)


@triton.jit
def _kv_tile(src, b, h, start_n, N, s_n,
             HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, USE_TMA: tl.constexpr,
             BNH: tl.constexpr):
    """[BLOCK_N, HEAD_DIM] K or V tile from key start_n; rows past N read as 0 when MASKED."""
    # one branch per constexpr case, no early return: the compiler would trace the code after it
    if USE_TMA:
        x = _tile_load(src, b, h, start_n, BNH, BLOCK_N, HEAD_DIM)
    else:
        offs_n = start_n + tl.arange(0, BLOCK_N)
        ptrs = src + offs_n[:, None] * s_n + tl.arange(0, HEAD_DIM)[None, :]
        if MASKED:
            x = tl.load(ptrs, mask=offs_n[:, None] < N, other=0.0)
        else:
            x = tl.load(ptrs)
    return x


@triton.jit
def _attn_kv_step(
    acc, m_i, l_i, q, k_src, v_src, b, h, start_n, N, qk_scale,
    sk_n, sv_n,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, USE_TMA: tl.constexpr,
    K_BNH: tl.constexpr, V_BNH: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    k = _kv_tile(k_src, b, h, start_n, N, sk_n, HEAD_DIM, BLOCK_N, MASKED, USE_TMA, K_BNH)
    # [BLOCK_M, BLOCK_N] fp32, in log2 units
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if MASKED:
        s = tl.where((start_n + tl.arange(0, BLOCK_N))[None, :] < N, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    v = _kv_tile(v_src, b, h, start_n, N, sv_n, HEAD_DIM, BLOCK_N, MASKED, USE_TMA, V_BNH)
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def _attn_fwd_kernel(
    Q, K, V,
    sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, so_b, so_h, so_n,
    H, N,
    Out,
    QK_SCALE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    USE_TMA: tl.constexpr, Q_BNH: tl.constexpr = False, K_BNH: tl.constexpr = False,
    V_BNH: tl.constexpr = False, O_BNH: tl.constexpr = False, DOT_PRECISION: tl.constexpr = "ieee",
):
    # Parameter order (tensor inputs, integer scalars, tensor outputs; float scale a constexpr)
    # is the calling convention of TensorRT's AOT plugins: the same kernel serves both.
    qk_scale = QK_SCALE
    b, h, offs_m, offs_d = _program_rows(H, BLOCK_M, HEAD_DIM)
    start_m = tl.program_id(0) * BLOCK_M
    row_ok = offs_m[:, None] < N

    if USE_TMA:
        q = _tile_load(Q, b, h, start_m, Q_BNH, BLOCK_M, HEAD_DIM)
        k_src = K
        v_src = V
    else:
        q_base = Q + b.to(tl.int64) * sq_b + h.to(tl.int64) * sq_h
        q = tl.load(q_base + offs_m[:, None] * sq_n + offs_d[None, :], mask=row_ok, other=0.0)
        k_src = K + b.to(tl.int64) * sk_b + h.to(tl.int64) * sk_h
        v_src = V + b.to(tl.int64) * sv_b + h.to(tl.int64) * sv_h

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    n_full = (N // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        acc, m_i, l_i = _attn_kv_step(
            acc, m_i, l_i, q, k_src, v_src, b, h, start_n, N, qk_scale, sk_n, sv_n,
            HEAD_DIM, BLOCK_N, False, USE_TMA, K_BNH, V_BNH, DOT_PRECISION,
        )
    if n_full < N:
        acc, m_i, l_i = _attn_kv_step(
            acc, m_i, l_i, q, k_src, v_src, b, h, n_full, N, qk_scale, sk_n, sv_n,
            HEAD_DIM, BLOCK_N, True, USE_TMA, K_BNH, V_BNH, DOT_PRECISION,
        )

    out = acc / l_i[:, None]
    if USE_TMA:
        if O_BNH:
            Out.store([b, start_m, h, 0], out.to(Out.dtype).reshape(1, BLOCK_M, 1, HEAD_DIM))
        else:
            Out.store([b, h, start_m, 0], out.to(Out.dtype).reshape(1, 1, BLOCK_M, HEAD_DIM))
    else:
        o_base = Out + b.to(tl.int64) * so_b + h.to(tl.int64) * so_h
        tl.store(o_base + offs_m[:, None] * so_n + offs_d[None, :], out.to(Out.dtype.element_ty), mask=row_ok)


# ----------------------------------------------------------------------------------------------
# launcher
# ----------------------------------------------------------------------------------------------
def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_device(*tensors: torch.Tensor) -> None:
    if interpreting():
        return
    for t in tensors:
        if t.device.type != "cuda":
            raise DeployError(
                f"the Triton kernels need CUDA tensors, got one on '{t.device}'. Run on a GPU, use "
                "attn_impl='sdpa', or set TRITON_INTERPRET=1 (before importing triton) for the slow CPU interpreter."
            )


def attention_config(B: int, H: int, N: int, head_dim: int, device: torch.device) -> dict:
    """Block sizes / warps / stages.

    GPU, head dim <= 64: BLOCK_M 64 / BLOCK_N 64 / 4 warps / 3 stages at every grid size. On the
    H200 (GPU-BASELINES.md, 2026-12-04) it was the best of the swept configurations at B=8, 12
    heads, 1029 tokens (311 against 288 TFLOP/s for BLOCK_M 128 / 8 warps), level at 4101 tokens,
    and at B=1 the small grid is where it matters most: 128-row blocks give 12 heads x 9 blocks =
    108 programs for 132 SMs (57 TFLOP/s), 64-row blocks at 4 warps give 204 programs of which
    several fit on one SM at a time (16 heads, 272 programs: 181 TFLOP/s). Head dim 128: BLOCK_M
    128 (8 warps) or 64 (4 warps), whichever finishes in fewer "row-waves" (ceil(programs / SMs) *
    BLOCK_M, 64 charged 15% for its lower efficiency per row), 2 stages (shared memory).
    Interpreter: small blocks, so tiny tests still cover several blocks and a partial last one.
    """
    if interpreting() or device.type != "cuda":
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)
    if head_dim <= 64:
        return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3)
    sms = _sm_count(device)

    def cost(bm: int) -> float:
        return -(-triton.cdiv(N, bm) * B * H // sms) * bm * (1.15 if bm == 64 else 1.0)

    if cost(64) < cost(128):
        return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2)
    return dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2)


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _memory_order(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """t [B, H, N, hd] as the 4-D view whose strides decrease (what a TMA descriptor wants):
    ([B, N, H, hd], True) for packed-qkv / [B, N, D]-output views, else (t, False)."""
    if t.stride(2) > t.stride(1):
        return t.transpose(1, 2), True
    return t, False


def _descriptor_layout_ok(t: torch.Tensor) -> bool:
    """A TMA descriptor needs a 16-byte aligned base and strides, and strides decreasing in
    memory order."""
    view, _ = _memory_order(t)
    st = view.stride()
    if t.data_ptr() % 16 or any((x * t.element_size()) % 16 for x in st[:-1]):
        return False
    return st[1] >= st[2] >= st[3] == 1 and (st[0] >= st[1] or t.shape[0] == 1)


@functools.cache
def _warn_fallback(reason: str) -> None:
    # once per distinct reason: a model launches this kernel once per block per forward
    log.warning("use_tma=True falls back to pointer loads: %s", reason)


def resolve_load_path(use_tma: bool, device, tensors: tuple[torch.Tensor, ...] = ()) -> tuple[str, str]:
    """("tma" | "pointer", why) for an attention launch on `device` (and, when given, these
    q/k/v/out tensors). A requested TMA path that cannot be taken is logged as a warning on the
    "dinov3_deploy.kernels" logger, so a benchmark never reports pointer loads as TMA."""
    if not use_tma:
        return "pointer", "use_tma=False"
    device = torch.device(device)
    if interpreting():
        path, reason = "tma", "the Triton interpreter emulates TMA descriptors"
    elif device.type != "cuda":
        path, reason = "pointer", f"TMA needs a CUDA device, got '{device}'"
    elif (cap := torch.cuda.get_device_capability(device))[0] < 9:
        path, reason = "pointer", f"TMA needs compute capability 9.0+ (Hopper), this device is {cap[0]}.{cap[1]}"
    else:
        path, reason = "tma", "host-side TMA descriptors (compute capability 9.0+)"
    if path == "tma" and not all(_descriptor_layout_ok(t) for t in tensors):
        path, reason = "pointer", "a q/k/v/out view has a base or stride that is not 16-byte aligned"
    if path == "pointer":
        _warn_fallback(reason)
    return path, reason


def on_device(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the *current* CUDA device, not the tensors': make it the tensor's."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _descriptor(t: torch.Tensor, rows: int):
    from triton.tools.tensor_descriptor import TensorDescriptor

    view, bnh = _memory_order(t)
    block = [1, rows, 1, t.shape[-1]] if bnh else [1, 1, rows, t.shape[-1]]
    return TensorDescriptor(view, list(view.shape), list(view.stride()), block), bnh


def attention_into(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    scale: float | None = None,
    *,
    use_tma: bool = False,
    config: dict | None = None,
) -> torch.Tensor:
    """Write softmax(q k^T * scale) v into `out`. All four are [B, H, N, hd] (views allowed, last
    stride 1). use_tma=True uses host TMA descriptors where `resolve_load_path` allows them (it
    warns when not); the default pointer variant needs neither descriptors nor scratch memory."""
    check_device(q, k, v, out)
    B, H, N, hd = q.shape
    if k.shape != q.shape or v.shape != q.shape or out.shape != q.shape:
        raise ValueError(f"q, k, v, out shapes differ: {q.shape} {k.shape} {v.shape} {out.shape}")
    if hd < 16 or hd & (hd - 1):
        raise ValueError(f"head dim must be a power of two >= 16, got {hd}")
    if any(t.stride(-1) != 1 for t in (q, k, v, out)):
        raise ValueError("q, k, v and out need a contiguous last dimension")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype} {k.dtype} {v.dtype}")
    scale = hd**-0.5 if scale is None else float(scale)
    cfg = dict(config or attention_config(B, H, N, hd, q.device))
    bm, bn = cfg.pop("BLOCK_M"), cfg.pop("BLOCK_N")
    grid = (triton.cdiv(N, bm), B * H)
    path, _ = resolve_load_path(use_tma, q.device, (q, k, v, out))
    common = dict(QK_SCALE=scale * LOG2E, HEAD_DIM=hd, BLOCK_M=bm, BLOCK_N=bn,
                  DOT_PRECISION=dot_input_precision(q.dtype), **cfg)
    with on_device(q):
        if path == "tma":
            # Host-side descriptors (no scratch memory); out-of-range rows are zero-filled on load
            # and clipped on store by the copy engine.
            tiles = ((q, bm), (k, bn), (v, bn), (out, bm))
            (qd, qb), (kd, kb), (vd, vb), (od, ob) = (_descriptor(t, rows) for t, rows in tiles)
            _attn_fwd_kernel[grid](qd, kd, vd, *([0] * 12), H, N, od, USE_TMA=True,
                                   Q_BNH=qb, K_BNH=kb, V_BNH=vb, O_BNH=ob, **common)
        else:
            _attn_fwd_kernel[grid](
                q, k, v,
                q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
                H, N, out, USE_TMA=False, **common,
            )
    return out


# ----------------------------------------------------------------------------------------------
# custom op (torch.compile / export can trace it through the fake implementation)
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("dinov3_deploy::attention", mutates_args=())
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v for [B, H, N, hd] q/k/v; returns a fresh [B, H, N, hd] tensor."""
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    return attention_into(q, k, v, out, scale)


@attention.register_fake
def _(q, k, v, scale=None):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


# ----------------------------------------------------------------------------------------------
# reference
# ----------------------------------------------------------------------------------------------
def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Plain PyTorch, scores and softmax in fp32; result in q's dtype."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q.float() @ k.float().transpose(-2, -1)) * scale
    return (s.softmax(-1) @ v.float()).to(q.dtype)


def attention_flops(B: int, H: int, N: int, head_dim: int) -> float:
    """Two matmuls of 2*N*N*hd flops per (batch, head): the figure TFLOP/s are quoted against."""
    return 4.0 * B * H * N * N * head_dim


__all__ = ["attention", "attention_into", "attention_reference", "attention_config", "attention_flops",
           "dot_input_precision", "dot_precision", "resolve_load_path"]
