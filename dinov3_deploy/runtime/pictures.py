"""The pictures `infer` writes beside its results: the seg panel (image | overlay | mask, with a legend
strip of the classes present), the depth picture with a colour bar in metres, and the PCA picture of
patch features. Colours come from training's visualize.py (`colorize`), one palette for both."""

from __future__ import annotations

import os

import numpy as np


def seg_panel(image: np.ndarray, labels: np.ndarray, shares: dict[int, float], palette: list[list[int]],
              names: list[str]) -> np.ndarray:
    """image | overlay | mask side by side, over a legend strip of the classes present."""
    from dinov3_deploy.reference.training.visualize import colorize

    color = colorize(labels, palette)
    overlay = (0.5 * image + 0.5 * color).astype(np.uint8)
    panel = np.concatenate([image, overlay, color], axis=1)
    return np.concatenate([panel, legend_strip(panel.shape[1], shares, palette, names)], axis=0)


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



def legend_strip(width: int, shares: dict[int, float], palette: list[list[int]], names: list[str]) -> np.ndarray:
    """A white strip `width` pixels wide: a colour swatch, the class name and its share of the
    image for each class present (most frequent first), wrapped onto as many rows as needed.
    Drawn with PIL at the panel's own resolution, so the mask beside it keeps exact colours."""
    from PIL import Image, ImageDraw, ImageFont

    size = int(np.clip(width // 45, 11, 28))
    font = ImageFont.load_default(size=size)
    entries = [(palette[i] if i < len(palette) else [0, 0, 0], f"{class_name(names, i)} {share:.0%}")
               for i, share in sorted(shares.items(), key=lambda kv: -kv[1])]
    pad, line = size // 2, size + size // 2
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    rows: list[list[tuple[int, list[int], str]]] = [[]]
    x = pad
    for colour, text in entries:
        w = size + pad // 2 + int(measure.textlength(text, font=font)) + 2 * pad
        if rows[-1] and x + w > width:
            rows.append([])
            x = pad
        rows[-1].append((x, colour, text))
        x += w
    strip = Image.new("RGB", (width, pad + line * len(rows)), "white")
    draw = ImageDraw.Draw(strip)
    for r, row in enumerate(rows):
        y = pad + r * line
        for x0, colour, text in row:
            draw.rectangle((x0, y, x0 + size - 1, y + size - 1), fill=tuple(int(c) for c in colour))
            draw.text((x0 + size + pad // 2, y + size // 2), text, fill="black", font=font, anchor="lm")
    return np.asarray(strip)



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
