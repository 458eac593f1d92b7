"""Prediction figures, written as PNG (matplotlib, Agg, no pyplot global state): image | ground
truth | prediction rows for segmentation and depth (with a colour bar in metres), a captioned grid
for classification."""

from __future__ import annotations

import os


def colorize(mask, palette: list[list[int]]):
    """uint8 class map -> uint8 RGB; 255 (ignore) is black."""
    import numpy as np

    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return lut[np.asarray(mask, dtype=np.uint8)]


def save_prediction_figure(
    path: str | os.PathLike,
    rows: list[tuple],
    palette: list[list[int]],
    class_names: list[str] | None = None,
    title: str | None = None,
) -> None:
    """rows: (image uint8 [H,W,3], ground truth [H,W], prediction [H,W]) triples."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    n = max(1, len(rows))
    fig = Figure(figsize=(9, 3 * n + (0.8 if class_names else 0)), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 3, squeeze=False)
    for r, (image, gt, pred) in enumerate(rows):
        acc = float((np.asarray(pred) == np.asarray(gt))[np.asarray(gt) != 255].mean() * 100)
        panels = (
            (image, "image"),
            (colorize(gt, palette), "ground truth"),
            (colorize(pred, palette), f"prediction ({acc:.0f}% px)"),
        )
        for c, (img, label) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(img, interpolation="nearest")
            ax.set_axis_off()
            if r == 0 or c == 2:
                ax.set_title(label, fontsize=9)
    if class_names and len(class_names) <= 40:
        handles = [Patch(color=np.asarray(palette[i]) / 255, label=name) for i, name in enumerate(class_names)]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05 if class_names else 0, 1, 0.97 if title else 1))
    fig.savefig(os.fspath(path))


def save_depth_figure(path: str | os.PathLike, rows: list[tuple], title: str | None = None) -> None:
    """rows: (image uint8 [H,W,3], ground truth [H,W] metres (0 = none), prediction [H,W] metres).
    Ground truth and prediction of a row share one colour scale (the ground truth's valid range),
    shown by a colour bar in metres; pixels without ground truth are grey."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = max(1, len(rows))
    fig = Figure(figsize=(10, 3 * n), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 3, squeeze=False)
    cmap = colormaps["magma_r"].with_extremes(bad=(0.6, 0.6, 0.6))
    for r, (image, gt, pred) in enumerate(rows):
        gt, pred = np.asarray(gt, dtype=np.float32), np.asarray(pred, dtype=np.float32)
        valid = gt > 0
        lo, hi = (float(gt[valid].min()), float(gt[valid].max())) if valid.any() else (0.0, 1.0)
        absrel = float((np.abs(pred - gt)[valid] / gt[valid]).mean()) if valid.any() else float("nan")
        axes[r][0].imshow(image)
        axes[r][1].imshow(np.ma.masked_where(~valid, gt), cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        im = axes[r][2].imshow(pred, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        for c, label in enumerate(("image", "ground truth", f"prediction (AbsRel {absrel:.3f})")):
            axes[r][c].set_axis_off()
            if r == 0 or c == 2:
                axes[r][c].set_title(label, fontsize=9)
        fig.colorbar(im, ax=list(axes[r][1:]), fraction=0.03, pad=0.02).set_label("depth (m)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(os.fspath(path))


def save_cls_figure(path: str | os.PathLike, rows: list[tuple], class_names: list[str], title: str | None = None,
                    cols: int = 4) -> None:
    """rows: (image uint8 [H,W,3], true class, predicted class), drawn as a grid captioned
    'true / predicted' (green when right, red when wrong)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = max(1, len(rows))
    cols = min(cols, n)
    nrows = (n + cols - 1) // cols
    fig = Figure(figsize=(2.6 * cols, 2.8 * nrows + (0.4 if title else 0)), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, cols, squeeze=False)
    name = lambda i: class_names[i] if 0 <= i < len(class_names) else str(i)  # noqa: E731
    for i, ax in enumerate(ax for row in axes for ax in row):
        ax.set_axis_off()
        if i >= len(rows):
            continue
        image, true, pred = rows[i]
        ax.imshow(image)
        ax.set_title(f"{name(int(true))} / {name(int(pred))}", fontsize=8,
                     color="tab:green" if int(true) == int(pred) else "tab:red")
    if title:
        fig.suptitle(f"{title}   (true / predicted)", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
