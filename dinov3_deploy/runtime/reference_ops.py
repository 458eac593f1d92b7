"""Ops the ONNX reference evaluator (onnx-reference) runs our way, passed to it as `new_ops`.

GridSample (Mask2Former's deformable attention, one per level and layer): onnx's own implementation
loops in Python over every output element and channel, and at opset 16-19 it refuses the mode our graphs
carry ("bilinear", renamed "linear" at opset 20: "GridSample interpolation only supports nearest, linear,
and cubic modes"). This one is vectorised numpy for the 4-D bilinear case, zero or border padding, either
align_corners: the four corner reads are gathers over all positions at once.
"""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun


def _unnormalise(g: np.ndarray, size: int, align_corners: bool) -> np.ndarray:
    """grid coordinates in [-1, 1] -> pixel coordinates (ONNX / PyTorch grid_sample semantics)."""
    return (g + 1) / 2 * (size - 1) if align_corners else ((g + 1) * size - 1) / 2


def grid_sample_bilinear(x: np.ndarray, grid: np.ndarray, align_corners: bool = False,
                         padding: str = "zeros") -> np.ndarray:
    """x [N, C, H, W], grid [N, Ho, Wo, 2] as (x, y) -> [N, C, Ho, Wo], computed in float32 at least
    (an fp16 input is widened, its result rounded back, as a GPU kernel accumulates)."""
    n, c, h, w = x.shape
    work = np.promote_types(x.dtype, np.float32) if x.dtype.kind == "f" else np.float32
    xs = x.astype(work, copy=False).reshape(n, c, h * w)
    px = _unnormalise(grid[..., 0].astype(work), w, align_corners).reshape(n, 1, -1)
    py = _unnormalise(grid[..., 1].astype(work), h, align_corners).reshape(n, 1, -1)
    if padding == "border":
        px, py = np.clip(px, 0, w - 1), np.clip(py, 0, h - 1)
    x0, y0 = np.floor(px), np.floor(py)
    fx, fy = px - x0, py - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    out = np.zeros((n, c, px.shape[-1]), dtype=work)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)  # zero padding: outside reads 0
            idx = np.where(inside, yi * w + xi, 0)
            out += np.take_along_axis(xs, idx, axis=2) * (wx * wy * inside)
    return out.reshape(n, c, *grid.shape[1:3]).astype(x.dtype, copy=False)


class GridSample(OpRun):
    """GridSample for the reference evaluator: 4-D bilinear (opset 16-19 "bilinear", 20+ "linear") with
    zero or border padding; anything else is refused by name rather than computed slowly."""

    op_domain = ""

    def _run(self, X, grid, mode=None, padding_mode=None, align_corners=None):  # noqa: N803 - ONNX's names
        mode = mode or self.mode
        padding = padding_mode or self.padding_mode
        corners = bool(self.align_corners if align_corners is None else align_corners)
        if X.ndim != 4 or mode not in ("bilinear", "linear") or padding not in ("zeros", "border"):
            raise NotImplementedError(f"onnx-reference GridSample: only 4-D bilinear with zeros / border padding "
                                      f"is implemented here, got {X.ndim}-D {mode} / {padding}")
        return (grid_sample_bilinear(X, grid, corners, padding),)


REFERENCE_OPS = [GridSample]
