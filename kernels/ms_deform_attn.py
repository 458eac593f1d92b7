"""Multi-scale deformable attention in one Triton pass.

    out[b, q, m*Dh:(m+1)*Dh] = sum over levels l and points p of
        weights[b, q, m, l, p] * bilinear(value of level l, head m, at locations[b, q, m, l, p])

The plain PyTorch core (`reference.models.ms_deform_attn.ms_deform_attn_core`, the reference these
kernels are tested against) runs one `grid_sample` per level and stacks the results: a
[B*M, Dh, Q, L*P] tensor per layer (~1.6 GB at 896x896 with the 7B model) that is written, read
back, multiplied and summed. Here one program owns BLOCK_Q queries of one (batch, head): for every
level and point it gathers the four neighbouring value rows ([BLOCK_Q, Dh], contiguous Dh, zero
where a neighbour is off the map), blends them with the bilinear and attention weights into an
fp32 accumulator and writes [BLOCK_Q, Dh] once, straight into the [B, Q, M*Dh] layout the output
projection reads. Nothing per level or per point touches global memory.

Sampling is grid_sample's (bilinear, align_corners=False, zero padding): the pixel coordinate of a
normalised x on a map of width w is ((2x - 1 + 1) * w - 1) / 2, computed in that order so the
rounding follows PyTorch's; coordinates are clamped to [-2, size + 1] first (still wholly off the
map there) so a wild offset cannot overflow the integer conversion.

Level shapes come either as Python ints (the torch op: runtime int arguments H0..W3, up to
MAX_LEVELS levels, L and P compile-time) or as an int32 [L, 2] (h, w) tensor read in the kernel
(SHAPES_FROM_TENSOR: the TensorRT plugin, whose level sizes follow the engine's dynamic H/W and
cannot be build-time scalars). Level starts in the flattened value are the running sums of h*w.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dinov3_deploy.errors import DeployError

from .attention import interpreting, on_device

MAX_LEVELS = 4  # Deformable DETR's 4; the Mask2Former pixel decoder and the ViT-Adapter use 3


@triton.jit
def _level_hw(SHAPES, lvl: tl.constexpr, H0, W0, H1, W1, H2, W2, H3, W3, SHAPES_FROM_TENSOR: tl.constexpr):
    """(h, w) of level `lvl`: from the [L, 2] int32 tensor, or from the scalar arguments."""
    if SHAPES_FROM_TENSOR:
        h = tl.load(SHAPES + 2 * lvl)
        w = tl.load(SHAPES + 2 * lvl + 1)
    elif lvl == 0:
        h, w = H0, W0
    elif lvl == 1:
        h, w = H1, W1
    elif lvl == 2:
        h, w = H2, W2
    else:
        h, w = H3, W3
    return h, w


@triton.jit
def _corner(v_base, acc, yy, xx, h, w, s_s, coef, offs_d, d_ok, q_ok):
    """acc + coef * value[yy, xx] for the queries whose corner lies on the map (zero padding)."""
    ok = q_ok & (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
    row = tl.where(ok, yy * w + xx, 0).to(tl.int64)
    v = tl.load(v_base + row[:, None] * s_s + offs_d[None, :], mask=ok[:, None] & d_ok[None, :], other=0.0)
    return acc + tl.where(ok, coef, 0.0)[:, None] * v.to(tl.float32)


@triton.jit
def _ms_deform_attn_kernel(
    VALUE, SHAPES, LOC, WEIGHT,
    Q, M, H0, W0, H1, W1, H2, W2, H3, W3,
    OUT,
    DH: tl.constexpr, N_LEVELS: tl.constexpr, N_POINTS: tl.constexpr, BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr, SHAPES_FROM_TENSOR: tl.constexpr,
):
    # Parameter order (tensor inputs, integer scalars, tensor output) is the calling convention of
    # TensorRT's AOT plugins. All tensors are contiguous: value [B, S, M, DH], locations
    # [B, Q, M, L, P, 2], weights [B, Q, M, L, P], out [B, Q, M, DH].
    pid_bm = tl.program_id(1)
    b = pid_bm // M
    m = pid_bm % M
    offs_q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_ok = offs_q < Q
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < DH
    s_s = M * DH  # value stride between tokens
    # total tokens S: the levels' sizes summed
    S = 0
    for lvl in tl.static_range(N_LEVELS):
        h, w = _level_hw(SHAPES, lvl, H0, W0, H1, W1, H2, W2, H3, W3, SHAPES_FROM_TENSOR)
        S += h * w
    # scalars through tl.cast: an int argument equal to 1 arrives as a compile-time constant
    v_head = VALUE + (tl.cast(b, tl.int64) * S * M + m) * DH
    LP: tl.constexpr = N_LEVELS * N_POINTS
    # index of (b, q, m) in [B, Q, M], times L*P: the weights' row; the locations' is twice that
    wrow = ((tl.cast(b, tl.int64) * Q + offs_q) * M + m) * LP

    acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=tl.float32)
    start = 0
    for lvl in tl.static_range(N_LEVELS):
        h, w = _level_hw(SHAPES, lvl, H0, W0, H1, W1, H2, W2, H3, W3, SHAPES_FROM_TENSOR)
        v_base = v_head + tl.cast(start, tl.int64) * s_s
        hf = tl.cast(h, tl.float32)
        wf = tl.cast(w, tl.float32)
        for p in tl.static_range(N_POINTS):
            k = lvl * N_POINTS + p
            x = tl.load(LOC + (wrow + k) * 2, mask=q_ok, other=0.0).to(tl.float32)
            y = tl.load(LOC + (wrow + k) * 2 + 1, mask=q_ok, other=0.0).to(tl.float32)
            a = tl.load(WEIGHT + wrow + k, mask=q_ok, other=0.0).to(tl.float32)
            # grid_sample's unnormalisation of grid = 2 * loc - 1 (align_corners=False)
            px = (((2.0 * x - 1.0) + 1.0) * wf - 1.0) * 0.5
            py = (((2.0 * y - 1.0) + 1.0) * hf - 1.0) * 0.5
            px = tl.minimum(tl.maximum(px, -2.0), wf + 1.0)
            py = tl.minimum(tl.maximum(py, -2.0), hf + 1.0)
            fx = tl.floor(px)
            fy = tl.floor(py)
            lx = px - fx
            ly = py - fy
            x0 = fx.to(tl.int32)
            y0 = fy.to(tl.int32)
            acc = _corner(v_base, acc, y0, x0, h, w, s_s, a * (1.0 - ly) * (1.0 - lx), offs_d, d_ok, q_ok)
            acc = _corner(v_base, acc, y0, x0 + 1, h, w, s_s, a * (1.0 - ly) * lx, offs_d, d_ok, q_ok)
            acc = _corner(v_base, acc, y0 + 1, x0, h, w, s_s, a * ly * (1.0 - lx), offs_d, d_ok, q_ok)
            acc = _corner(v_base, acc, y0 + 1, x0 + 1, h, w, s_s, a * ly * lx, offs_d, d_ok, q_ok)
        start += h * w

    o_ptrs = OUT + ((tl.cast(b, tl.int64) * Q + offs_q[:, None]) * M + m) * DH + offs_d[None, :]
    tl.store(o_ptrs, acc.to(OUT.dtype.element_ty), mask=q_ok[:, None] & d_ok[None, :])


# ----------------------------------------------------------------------------------------------
# launcher
# ----------------------------------------------------------------------------------------------
def ms_deform_attn_config(head_dim: int, device: torch.device) -> dict:
    """BLOCK_Q queries per program. GPU: 64 queries at head dim <= 64, 32 above (the fp32
    accumulator is BLOCK_Q x Dh registers: 32 x 128 is 32 per thread at 4 warps), not yet swept on
    a GPU (bench/kernels_bench.py --sections msda measures it). Interpreter: small blocks so tiny
    tests cover several programs and a partial last one."""
    if interpreting() or device.type != "cuda":
        return dict(BLOCK_Q=8, num_warps=4)
    return dict(BLOCK_Q=64 if head_dim <= 64 else 32, num_warps=4)


def check_device(*tensors: torch.Tensor) -> None:
    if interpreting():
        return
    if any(t.device.type != "cuda" for t in tensors):
        raise DeployError("the Triton deformable-attention kernel needs CUDA tensors: run on a GPU, use "
                          "deform_impl='plain', or set TRITON_INTERPRET=1 (before importing triton) for the CPU "
                          "interpreter")


def _check(value: torch.Tensor, shapes, locations: torch.Tensor, weights: torch.Tensor) -> None:
    if value.dim() != 4 or locations.dim() != 6 or weights.dim() != 5:
        raise ValueError(f"expected value [B, S, M, Dh], locations [B, Q, M, L, P, 2], weights [B, Q, M, L, P]; "
                         f"got {tuple(value.shape)}, {tuple(locations.shape)}, {tuple(weights.shape)}")
    B, S, M, _ = value.shape
    L = len(shapes)
    if not 1 <= L <= MAX_LEVELS:
        raise ValueError(f"1 to {MAX_LEVELS} levels, got {L}")
    if sum(h * w for h, w in shapes) != S:
        raise ValueError(f"level shapes {list(shapes)} hold {sum(h * w for h, w in shapes)} tokens, value has {S}")
    if locations.shape[:4] != (B, locations.shape[1], M, L) or locations.shape[-1] != 2:
        raise ValueError(f"locations {tuple(locations.shape)} do not match value {tuple(value.shape)} and {L} levels")
    if weights.shape != locations.shape[:-1]:
        raise ValueError(f"weights {tuple(weights.shape)} must be locations' shape without the last dim")


def ms_deform_attn_into(value: torch.Tensor, shapes, locations: torch.Tensor, weights: torch.Tensor,
                        out: torch.Tensor, config: dict | None = None) -> torch.Tensor:
    """Write the deformable attention of value [B, S, M, Dh] (levels `shapes` = [(h, w), ...]
    flattened row-major and concatenated) at locations [B, Q, M, L, P, 2] ((x, y) in [0, 1]) with
    weights [B, Q, M, L, P] into out [B, Q, M*Dh] (contiguous). Inputs may be fp32/fp16/bf16 (any
    mix); sums in fp32."""
    check_device(value, locations, weights, out)
    shapes = [(int(h), int(w)) for h, w in shapes]
    _check(value, shapes, locations, weights)
    B, _, M, Dh = value.shape
    Q, L, P = locations.shape[1], locations.shape[3], locations.shape[4]
    if out.shape != (B, Q, M * Dh) or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous [{B}, {Q}, {M * Dh}] tensor, got {tuple(out.shape)}")
    value, locations, weights = value.contiguous(), locations.contiguous(), weights.contiguous()
    cfg = dict(config or ms_deform_attn_config(Dh, value.device))
    bq = cfg.pop("BLOCK_Q")
    hw = [x for hw in shapes for x in hw] + [0] * (2 * (MAX_LEVELS - L))
    with on_device(value):
        _ms_deform_attn_kernel[(triton.cdiv(Q, bq), B * M)](
            value, None, locations, weights, Q, M, *hw, out,
            DH=Dh, N_LEVELS=L, N_POINTS=P, BLOCK_Q=bq, BLOCK_D=triton.next_power_of_2(Dh),
            SHAPES_FROM_TENSOR=False, **cfg,
        )
    return out


# ----------------------------------------------------------------------------------------------
# custom op (torch.compile / export trace it through the fake implementation)
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("dinov3_deploy::ms_deform_attn", mutates_args=())
def ms_deform_attn(value: torch.Tensor, level_shapes: list[int], locations: torch.Tensor,
                   weights: torch.Tensor) -> torch.Tensor:
    """[B, Q, M*Dh] in value's dtype; level_shapes flat [h0, w0, h1, w1, ...]. Forward only."""
    B, _, M, Dh = value.shape
    out = value.new_empty((B, locations.shape[1], M * Dh))
    return ms_deform_attn_into(value, list(zip(level_shapes[::2], level_shapes[1::2])), locations, weights, out)


@ms_deform_attn.register_fake
def _(value, level_shapes, locations, weights):
    B, _, M, Dh = value.shape
    return value.new_empty((B, locations.shape[1], M * Dh))


def ms_deform_attn_flat(value: torch.Tensor, shapes, locations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The custom op with the reference core's signature (shapes as [(h, w), ...])."""
    return ms_deform_attn(value, [x for hw in shapes for x in hw], locations, weights)


def ms_deform_attn_bytes(B: int, S: int, Q: int, M: int, Dh: int, L: int, P: int, itemsize: int) -> int:
    """Bytes the kernel must move at least: value, locations, weights read once, output written
    once (the gathers re-read value rows from cache): what GB/s figures are quoted against."""
    return itemsize * (B * S * M * Dh + B * Q * M * L * P * 3 + B * Q * M * Dh)


__all__ = ["MAX_LEVELS", "ms_deform_attn", "ms_deform_attn_flat", "ms_deform_attn_into", "ms_deform_attn_config",
           "ms_deform_attn_bytes"]
