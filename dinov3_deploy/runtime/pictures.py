"""The pictures `infer` writes beside its results: the seg panel (image | overlay | mask, with a legend
strip of the classes present), the depth picture with a colour bar in metres, and the PCA picture of
patch features. The seg picture comes from training's visualize.py, one palette and one look for both."""

from __future__ import annotations

import os

import numpy as np


def seg_panel(image: np.ndarray, labels: np.ndarray, shares: dict[int, float], palette: list[list[int]],
              names: list[str]) -> np.ndarray:
    """image | overlay | mask under column titles, over a legend strip of the classes present (the
    picture is composed in training's visualize.py, one look for both)."""
    from dinov3_deploy.reference.training.visualize import seg_picture

    return seg_picture(image, labels, palette, names, shares)


def pca_rgb(patch: np.ndarray) -> np.ndarray:
    """Patch features [h, w, D] -> uint8 RGB [h, w, 3] from their first three principal components."""
    h, w, d = patch.shape
    x = patch.reshape(-1, d).astype(np.float64)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    p = x @ vt[:3].T
    lo, hi = np.percentile(p, 1, axis=0), np.percentile(p, 99, axis=0)
    p = np.clip((p - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
    return (p.reshape(h, w, 3) * 255).astype(np.uint8)



def class_name(names: list[str], i: int) -> str:
    return names[i] if 0 <= i < len(names) else str(i)



def save_depth_picture(path: str | os.PathLike, image: np.ndarray, depth: np.ndarray) -> None:
    """image | depth map side by side, the depth with a colour bar in metres (matplotlib, Agg, no
    pyplot global state); near is bright, as in `train`'s depth figure."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = depth.shape
    tall = float(np.clip(h / 100, 3, 10))  # inches: readable labels on small images, bounded on big ones
    fig = Figure(figsize=(min(2 * tall * w / h + 1.6, 40), tall + 0.3), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    left.imshow(image)
    shown = right.imshow(depth, cmap=colormaps["magma_r"], interpolation="nearest")
    for ax, title in ((left, "image"), (right, "depth")):
        ax.set_axis_off()
        ax.set_title(title, fontsize=9)
    fig.colorbar(shown, ax=right, fraction=0.046, pad=0.02).set_label("depth (m)", fontsize=9)
    fig.savefig(os.fspath(path), format="png")



def fallback_palette(n: int) -> list[list[int]]:
    from dinov3_deploy.reference.protocol.synthetic import palette

    try:
        return palette(n)
    except Exception:  # noqa: BLE001 - beyond the synthetic palette: a deterministic colour wheel
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, size=(max(n, 1), 3)).tolist()
