"""Reference sliding-window inference with the official DINOv3 segmentation semantics.

This is the ground truth the stitching kernel, `infer`, `verify` and `bench` are compared with.

Placement (per axis, as in the release): `n = max(size - crop + stride - 1, 0) // stride + 1`
windows; window i starts at `i * stride`, ends at `min(start + crop, size)` and is shifted back to
`max(end - crop, 0)` so the image is never padded. When the crop is larger than the image on
*both* axes it becomes the shorter side (a square crop), as in the release. When it is larger on
one axis only, the windows on that axis span the whole (shorter) side.

One deliberate deviation: a stride larger than the (effective) crop is clamped to the crop. In
every case where the official placement covers the whole image the windows are identical; where
it would leave uncovered pixels (count 0, a division by zero in the release) ours covers them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Window = tuple[int, int, int, int]  # y0, y1, x0, x1 (end exclusive)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    a, b = v
    return int(a), int(b)


def _axis_start(i: int, size: int, crop: int, stride: int) -> int:
    # window i ends at min(i*stride + crop, size) and starts crop before that, never before 0
    return max(min(i * stride + crop, size) - crop, 0)


@dataclass(frozen=True)
class WindowGeometry:
    """Window placement on an image_h x image_w image: everything the reference loop, the stitch
    kernel (which recomputes each window from these scalars) and the plugin need.

    crop_* is the effective crop, stride_* is clamped to it, win_* = min(crop, image side) is the
    size of every window (never padded), n_rows x n_cols windows in row-major order.
    """

    image_h: int
    image_w: int
    crop_h: int
    crop_w: int
    stride_h: int
    stride_w: int
    n_rows: int
    n_cols: int
    win_h: int
    win_w: int

    def __len__(self) -> int:
        return self.n_rows * self.n_cols

    def windows(self) -> list[Window]:
        """(y0, y1, x0, x1) of every window, rows outer, columns inner (the official loop order)."""
        rows = [_axis_start(i, self.image_h, self.crop_h, self.stride_h) for i in range(self.n_rows)]
        cols = [_axis_start(j, self.image_w, self.crop_w, self.stride_w) for j in range(self.n_cols)]
        return [(y0, y0 + self.win_h, x0, x0 + self.win_w) for y0 in rows for x0 in cols]


def window_geometry(h: int, w: int, crop: int | tuple[int, int], stride: int | tuple[int, int]) -> WindowGeometry:
    """The official placement of crop windows with the given stride on an h x w image."""
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    ch, cw = _pair(crop)
    if ch > h and cw > w:  # larger than the image on both axes: a square crop of the shorter side
        ch = cw = min(h, w)
    sh, sw = _pair(stride)
    if min(ch, cw, sh, sw) <= 0:
        raise ValueError(f"crop and stride must be positive, got crop={crop} stride={stride}")
    sh, sw = min(sh, ch), min(sw, cw)
    return WindowGeometry(
        image_h=h, image_w=w, crop_h=ch, crop_w=cw, stride_h=sh, stride_w=sw,
        n_rows=max(h - ch + sh - 1, 0) // sh + 1, n_cols=max(w - cw + sw - 1, 0) // sw + 1,
        win_h=min(ch, h), win_w=min(cw, w),
    )


def window_grid(h: int, w: int, crop: int | tuple[int, int], stride: int | tuple[int, int]) -> list[Window]:
    """Windows (y0, y1, x0, x1) covering an h x w image, row-major (official loop order)."""
    return window_geometry(h, w, crop, stride).windows()


def count_map(h: int, w: int, windows: list[Window]) -> torch.Tensor:
    """How many windows cover each pixel, [1, 1, h, w] float32."""
    count = torch.zeros(1, 1, h, w)
    for y0, y1, x0, x1 in windows:
        count[..., y0:y1, x0:x1] += 1
    return count


@torch.no_grad()
def slide_inference(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    n_classes: int,
    crop: int | tuple[int, int] = 512,
    stride: int | tuple[int, int] = 341,
    out_size: tuple[int, int] | None = None,
    *,
    batch_size: int = 1,
) -> torch.Tensor:
    """Sliding-window logits of one image.

    logits_fn(windows [b,3,ch,cw]) returns low-resolution logits [b,C,h',w'] (e.g. a TaskModel's
    `forward(x)["logits"]`); each window's logits are upsampled bilinearly (align_corners=False)
    to the window size, summed into a full-size canvas, divided by the per-pixel window count and
    finally resized (bilinear, align_corners=False) to out_size (default: the image size).
    Returns float32 logits [1, C, out_h, out_w]. `batch_size` windows go through logits_fn at once
    (all windows of an image have the same size); the result does not depend on it.
    """
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"slide_inference takes one image [1,3,H,W], got {tuple(image.shape)}")
    H, W = int(image.shape[-2]), int(image.shape[-1])
    windows = window_grid(H, W, crop, stride)
    canvas = torch.zeros(1, n_classes, H, W, dtype=torch.float32, device=image.device)
    count = torch.zeros(1, 1, H, W, dtype=torch.float32, device=image.device)
    for start in range(0, len(windows), max(1, batch_size)):
        chunk = windows[start : start + max(1, batch_size)]
        crops = torch.cat([image[..., y0:y1, x0:x1] for y0, y1, x0, x1 in chunk], dim=0)
        logits = logits_fn(crops)
        if logits.shape[0] != len(chunk) or logits.shape[1] != n_classes:
            raise ValueError(
                f"logits_fn returned {tuple(logits.shape)} for {len(chunk)} windows; expected [{len(chunk)},"
                f" {n_classes}, h, w]"
            )
        logits = F.interpolate(logits.float(), size=tuple(crops.shape[-2:]), mode="bilinear", align_corners=False)
        for k, (y0, y1, x0, x1) in enumerate(chunk):
            canvas[..., y0:y1, x0:x1] += logits[k : k + 1]
            count[..., y0:y1, x0:x1] += 1
    out = canvas / count
    if out_size is not None and tuple(out_size) != (H, W):
        out = F.interpolate(out, size=tuple(out_size), mode="bilinear", align_corners=False)
    return out


def slide_predict(
    model: torch.nn.Module,
    image: torch.Tensor,
    crop: int | tuple[int, int] = 512,
    stride: int | tuple[int, int] = 341,
    out_size: tuple[int, int] | None = None,
    *,
    batch_size: int = 1,
) -> torch.Tensor:
    """Sliding-window logits of a segmentation TaskModel (its `forward(x)["logits"]` per window) for
    one normalised image [1,3,H,W]; argmax over dim 1 gives the label map."""
    n_classes = int(model.spec.n_classes)
    return slide_inference(lambda x: model(x)["logits"], image, n_classes, crop, stride, out_size,
                           batch_size=batch_size)
