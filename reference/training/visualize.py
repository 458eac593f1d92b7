"""Prediction figures, written as PNG (matplotlib, Agg, no pyplot global state): image | ground
truth | prediction rows for segmentation and depth (with a colour bar in metres), a captioned grid
for classification; and `seg_picture`, infer's image | overlay | labels panel (PIL, exact colours)."""

from __future__ import annotations

import os

import numpy as np


def colorize(mask, palette: list[list[int]]):
    """uint8 class map -> uint8 RGB; 255 (ignore) is black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return lut[np.asarray(mask, dtype=np.uint8)]


# Pictures narrower than this are scaled up by a whole factor (nearest neighbour, so the label colours
# stay exact): below it the titles and the legend (font width // 45, at least 11 px) crowd each other.
MIN_PICTURE_WIDTH = 720
SEG_TITLES = ("image", "overlay", "labels")


def _font(width: int):
    from PIL import ImageFont

    size = int(np.clip(width // 45, 11, 28))
    return size, ImageFont.load_default(size=size)


def _name(names: list[str], i: int) -> str:
    return names[i] if 0 <= i < len(names) else str(i)


def title_strip(width: int, titles: tuple[str, ...]) -> np.ndarray:
    """A white strip `width` pixels wide with one title centred over each of len(titles) equal columns."""
    from PIL import Image, ImageDraw

    size, font = _font(width)
    strip = Image.new("RGB", (width, 2 * size), "white")
    draw = ImageDraw.Draw(strip)
    col = width / len(titles)
    for c, text in enumerate(titles):
        draw.text(((c + 0.5) * col, size), text, fill="black", font=font, anchor="mm")
    return np.asarray(strip)


def legend_strip(width: int, shares: dict[int, float], palette: list[list[int]], names: list[str]) -> np.ndarray:
    """A white strip `width` pixels wide: a colour swatch, the class name and its share of the
    image for each class present (most frequent first), wrapped onto as many rows as needed.
    Drawn with PIL at the panel's own resolution, so the mask beside it keeps exact colours."""
    from PIL import Image, ImageDraw

    size, font = _font(width)
    entries = [(palette[i] if i < len(palette) else [0, 0, 0], f"{_name(names, i)} {share:.0%}")
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



def seg_picture(image, labels, palette: list[list[int]], names: list[str], shares: dict[int, float]) -> np.ndarray:
    """infer's `*_seg.png`: image | overlay | labels under column titles, the legend of the classes
    present below; scaled up by a whole factor to at least MIN_PICTURE_WIDTH pixels wide."""
    color = colorize(labels, palette)
    overlay = (0.5 * np.asarray(image) + 0.5 * color).astype(np.uint8)
    panel = np.concatenate([np.asarray(image), overlay, color], axis=1)
    k = -(-MIN_PICTURE_WIDTH // panel.shape[1])
    if k > 1:
        panel = panel.repeat(k, axis=0).repeat(k, axis=1)
    width = panel.shape[1]
    return np.concatenate([title_strip(width, SEG_TITLES), panel, legend_strip(width, shares, palette, names)], axis=0)


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
