"""Prediction figures: image | ground truth | prediction rows, written as PNG (matplotlib, Agg,
no pyplot global state)."""

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
