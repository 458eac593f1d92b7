"""Sliding-window stitching in Triton: per-window low-res logits -> full-image labels in one pass.

The official DINOv3 / mmseg semantics (reference/protocol/sliding_window.py is the truth): each window's
logits [C, h', w'] are upsampled bilinearly (align_corners=False) to the window size, summed into
an image-size canvas with a per-pixel count, averaged, optionally resized (bilinear,
align_corners=False) to the label size, then argmax (and softmax, if asked).

Here no canvas exists. One program owns BLOCK_P output pixels of one output row and *gathers*:
for each pixel it samples the upsampled logits of every window covering it straight from the
low-res tensor (4 taps each), averages them, and for the final resize blends four such averaged
samples. Classes stream through in chunks of BLOCK_C with a running max / argmax (and an online
sum of exponentials for the probabilities, written in a second sweep over the classes).

Window geometry comes from `window_geometry` (reference/protocol/sliding_window.py, the one
definition of the placement): the launcher passes its scalars (effective crop, clamped stride,
window counts and size) and the kernel derives each window's start from them, on each axis
max(min(i*stride + crop, size) - crop, 0). Windows are row-major: logits[i * n_cols + j] is row i,
column j.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dinov3_deploy.reference.protocol.sliding_window import window_geometry

from .attention import check_device, interpreting, on_device


@triton.jit
def _axis_start(i, size, crop, stride):
    return tl.maximum(tl.minimum(i * stride + crop, size) - crop, 0)


@triton.jit
def _stitched(
    LOGITS, y, xs, xs_lo, xs_hi, offs_c, c_ok,
    H, W, C, LH, LW, crop_h, crop_w, stride_h, stride_w, n_rows, n_cols, win_h, win_w, scale_y, scale_x,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Window-averaged, upsampled logits at image row `y` (scalar), columns `xs` [BLOCK_P]
    (all within [xs_lo, xs_hi]) for classes offs_c: [BLOCK_P, BLOCK_C] fp32."""
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    cnt = tl.zeros([BLOCK_P], dtype=tl.float32)
    plane = LH * LW
    for i in range(n_rows):
        y0 = _axis_start(i, H, crop_h, stride_h)
        if (y >= y0) & (y < y0 + win_h):
            # bilinear source row in the window's low-res logits (align_corners=False)
            sy = tl.maximum((y - y0 + 0.5) * scale_y - 0.5, 0.0)
            ya = sy.to(tl.int32)
            yb = tl.minimum(ya + 1, LH - 1)
            wy = sy - ya
            for j in range(n_cols):
                x0 = _axis_start(j, W, crop_w, stride_w)
                if (xs_hi >= x0) & (xs_lo < x0 + win_w):
                    cover = (xs >= x0) & (xs < x0 + win_w)
                    sx = tl.maximum((xs - x0 + 0.5) * scale_x - 0.5, 0.0)
                    xa = tl.minimum(sx.to(tl.int32), LW - 1)
                    xb = tl.minimum(xa + 1, LW - 1)
                    wx = (sx - xa)[:, None]
                    base = LOGITS + (i * n_cols + j).to(tl.int64) * C * plane + offs_c[None, :] * plane
                    m = cover[:, None] & c_ok[None, :]
                    v00 = tl.load(base + ya * LW + xa[:, None], mask=m, other=0.0).to(tl.float32)
                    v01 = tl.load(base + ya * LW + xb[:, None], mask=m, other=0.0).to(tl.float32)
                    v10 = tl.load(base + yb * LW + xa[:, None], mask=m, other=0.0).to(tl.float32)
                    v11 = tl.load(base + yb * LW + xb[:, None], mask=m, other=0.0).to(tl.float32)
                    val = (1.0 - wy) * ((1.0 - wx) * v00 + wx * v01) + wy * ((1.0 - wx) * v10 + wx * v11)
                    acc += tl.where(m, val, 0.0)
                    cnt += cover.to(tl.float32)
    return acc / tl.maximum(cnt, 1.0)[:, None]


@triton.jit
def _class_chunk(
    LOGITS, oy, offs_x, x_ok, c0,
    H, W, C, LH, LW, crop_h, crop_w, stride_h, stride_w, n_rows, n_cols, win_h, win_w, scale_y, scale_x,
    rscale_y, rscale_x,
    RESIZE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Final logits (averaged, then resized to the output size if RESIZE) of one output row's
    pixels offs_x for the classes c0 .. c0 + BLOCK_C: (logits [BLOCK_P, BLOCK_C] with invalid
    pixels/classes at -inf, class offsets, class mask)."""
    offs_c = c0 + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    if RESIZE:
        sy = tl.maximum((oy + 0.5) * rscale_y - 0.5, 0.0)
        ya = sy.to(tl.int32)
        yb = tl.minimum(ya + 1, H - 1)
        wy = sy - ya
        sx = tl.maximum((offs_x + 0.5) * rscale_x - 0.5, 0.0)
        xa = tl.minimum(sx.to(tl.int32), W - 1)
        xb = tl.minimum(xa + 1, W - 1)
        wx = (sx - xa)[:, None]
        lo = tl.min(tl.where(x_ok, xa, W))
        hi = tl.max(tl.where(x_ok, xb, 0))
        f00 = _stitched(LOGITS, ya, xa, lo, hi, offs_c, c_ok, H, W, C, LH, LW, crop_h, crop_w, stride_h, stride_w,
                        n_rows, n_cols, win_h, win_w, scale_y, scale_x, BLOCK_P, BLOCK_C)
        f01 = _stitched(LOGITS, ya, xb, lo, hi, offs_c, c_ok, H, W, C, LH, LW, crop_h, crop_w, stride_h, stride_w,
                        n_rows, n_cols, win_h, win_w, scale_y, scale_x, BLOCK_P, BLOCK_C)
        f10 = _stitched(LOGITS, yb, xa, lo, hi, offs_c, c_ok, H, W, C, LH, LW, crop_h, crop_w, stride_h, stride_w,
                        n_rows, n_cols, win_h, win_w, scale_y, scale_x, BLOCK_P, BLOCK_C)
        f11 = _stitched(LOGITS, yb, xb, lo, hi, offs_c, c_ok, H, W, C, LH, LW, crop_h, crop_w, stride_h, stride_w,
                        n_rows, n_cols, win_h, win_w, scale_y, scale_x, BLOCK_P, BLOCK_C)
        val = (1.0 - wy) * ((1.0 - wx) * f00 + wx * f01) + wy * ((1.0 - wx) * f10 + wx * f11)
    else:
        lo = tl.min(tl.where(x_ok, offs_x, W))
        hi = tl.max(tl.where(x_ok, offs_x, 0))
        val = _stitched(LOGITS, oy, offs_x, lo, hi, offs_c, c_ok, H, W, C, LH, LW, crop_h, crop_w, stride_h,
                        stride_w, n_rows, n_cols, win_h, win_w, scale_y, scale_x, BLOCK_P, BLOCK_C)
    return tl.where(x_ok[:, None] & c_ok[None, :], val, float("-inf")), offs_c, c_ok


@triton.jit
def _stitch_kernel(
    LOGITS,
    H, W, C, LH, LW, crop_h, crop_w, stride_h, stride_w, n_rows, n_cols, win_h, win_w, OH, OW,
    LABELS, PROBS,
    RESIZE: tl.constexpr, WRITE_PROBS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Parameter order (tensor inputs, integer scalars, tensor outputs) is the calling convention
    # of TensorRT's AOT plugins. The geometry scalars are window_geometry's fields; the float
    # scales are derived here (a plugin passes only integers).
    # float(in) / out, correctly rounded: the scale PyTorch's bilinear resize uses
    scale_y = tl.div_rn(LH.to(tl.float32), win_h.to(tl.float32))
    scale_x = tl.div_rn(LW.to(tl.float32), win_w.to(tl.float32))
    rscale_y = tl.div_rn(H.to(tl.float32), OH.to(tl.float32))
    rscale_x = tl.div_rn(W.to(tl.float32), OW.to(tl.float32))
    oy = tl.program_id(0)  # output rows on axis x (up to 2^31 - 1; CUDA caps axis y at 65535)
    pid_x = tl.program_id(1)
    offs_x = pid_x * BLOCK_P + tl.arange(0, BLOCK_P)
    x_ok = offs_x < OW
    best = tl.full([BLOCK_P], float("-inf"), dtype=tl.float32)
    best_c = tl.zeros([BLOCK_P], dtype=tl.int32)
    sum_e = tl.zeros([BLOCK_P], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        val, _, _ = _class_chunk(LOGITS, oy, offs_x, x_ok, c0, H, W, C, LH, LW, crop_h, crop_w, stride_h, stride_w,
                                 n_rows, n_cols, win_h, win_w, scale_y, scale_x, rscale_y, rscale_x,
                                 RESIZE, BLOCK_P, BLOCK_C)
        cmax, carg = tl.max(val, 1, return_indices=True, return_indices_tie_break_left=True)
        if WRITE_PROBS:
            new_max = tl.maximum(best, cmax)
            safe = tl.where(new_max == float("-inf"), 0.0, new_max)
            sum_e = sum_e * tl.exp(best - safe) + tl.sum(tl.exp(val - safe[:, None]), 1)
        better = cmax > best  # strict: the first of equal maxima wins, as torch.argmax
        best_c = tl.where(better, c0 + carg, best_c)
        best = tl.where(better, cmax, best)
    out_row = oy.to(tl.int64) * OW
    tl.store(LABELS + out_row + offs_x, best_c.to(LABELS.dtype.element_ty), mask=x_ok)
    if WRITE_PROBS:
        plane = OH.to(tl.int64) * OW
        for c0 in range(0, C, BLOCK_C):
            val, offs_c, c_ok = _class_chunk(LOGITS, oy, offs_x, x_ok, c0, H, W, C, LH, LW, crop_h, crop_w, stride_h,
                                             stride_w, n_rows, n_cols, win_h, win_w, scale_y, scale_x, rscale_y,
                                             rscale_x, RESIZE, BLOCK_P, BLOCK_C)
            p = tl.exp(val - tl.where(x_ok, best, 0.0)[:, None]) / tl.where(x_ok, sum_e, 1.0)[:, None]
            ptrs = PROBS + offs_c[None, :] * plane + out_row + offs_x[:, None]
            tl.store(ptrs, p, mask=x_ok[:, None] & c_ok[None, :])


# ----------------------------------------------------------------------------------------------
# launcher
# ----------------------------------------------------------------------------------------------
def stitch_config(device: torch.device, out_w: int, n_classes: int) -> dict:
    if interpreting() or device.type != "cuda":
        # the interpreter pays per operation, not per element: few, wide programs
        return dict(BLOCK_P=min(triton.next_power_of_2(out_w), 128), BLOCK_C=min(triton.next_power_of_2(n_classes), 64),
                    num_warps=4)
    # 128 pixels x 8 classes at 4 warps: ~90 registers (sm_90 ptxas), 168 with the final resize
    return dict(BLOCK_P=128, BLOCK_C=8, num_warps=4)


def stitch_grid(out_h: int, out_w: int, block_p: int) -> tuple[int, int]:
    """Launch grid: output rows on axis x, which CUDA allows up to 2^31 - 1 (axis y stops at 65535:
    a label map taller than that would not launch), column blocks on axis y."""
    return (out_h, triton.cdiv(out_w, block_p))


def stitch_into(
    logits: torch.Tensor,
    image_size: tuple[int, int],
    crop,
    stride,
    labels: torch.Tensor,
    probs: torch.Tensor | None = None,
    config: dict | None = None,
) -> None:
    """logits [n_windows, C, h', w'] (row-major windows of `window_grid`) -> labels [OH, OW]
    (int32/int64) and optionally softmax probabilities probs [C, OH, OW] fp32, where (OH, OW) is
    the labels' shape: resized from the image size when it differs."""
    check_device(logits, labels)
    H, W = int(image_size[0]), int(image_size[1])
    g = window_geometry(H, W, crop, stride)
    n, C, LH, LW = logits.shape
    if n != len(g):
        raise ValueError(f"{n} windows of logits, but {H}x{W} crop {crop} stride {stride} has "
                         f"{g.n_rows}x{g.n_cols} windows")
    logits = logits.contiguous()
    OH, OW = labels.shape
    if not labels.is_contiguous() or (probs is not None and (probs.shape != (C, OH, OW) or not probs.is_contiguous())):
        raise ValueError("labels must be a contiguous [OH, OW] tensor and probs a contiguous [C, OH, OW] one")
    cfg = dict(config or stitch_config(logits.device, OW, C))
    bp, bc = cfg.pop("BLOCK_P"), cfg.pop("BLOCK_C")
    grid = stitch_grid(OH, OW, bp)
    with on_device(logits):
        _stitch_kernel[grid](
            logits, H, W, C, LH, LW, g.crop_h, g.crop_w, g.stride_h, g.stride_w, g.n_rows, g.n_cols, g.win_h, g.win_w,
            OH, OW, labels, probs,
            RESIZE=(OH, OW) != (H, W), WRITE_PROBS=probs is not None, BLOCK_P=bp, BLOCK_C=bc, **cfg,
        )


# ----------------------------------------------------------------------------------------------
# custom op
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("dinov3_deploy::stitch", mutates_args=())
def stitch(
    logits: torch.Tensor,
    image_h: int,
    image_w: int,
    crop_h: int,
    crop_w: int,
    stride_h: int,
    stride_w: int,
    out_h: int,
    out_w: int,
    with_probs: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels [out_h, out_w] int64, probs [C, out_h, out_w] fp32, or an empty [0] tensor when
    with_probs is False) from per-window logits [n_windows, C, h', w']."""
    labels = torch.empty((out_h, out_w), dtype=torch.int64, device=logits.device)
    probs = torch.empty((logits.shape[1], out_h, out_w) if with_probs else (0,), dtype=torch.float32,
                        device=logits.device)
    stitch_into(logits, (image_h, image_w), (crop_h, crop_w), (stride_h, stride_w), labels,
                probs if with_probs else None)
    return labels, probs


@stitch.register_fake
def _(logits, image_h, image_w, crop_h, crop_w, stride_h, stride_w, out_h, out_w, with_probs):
    labels = logits.new_empty((out_h, out_w), dtype=torch.int64)
    probs = logits.new_empty((logits.shape[1], out_h, out_w) if with_probs else (0,), dtype=torch.float32)
    return labels, probs
