"""The Mask2Former evaluation protocol of the release: multi-scale + flip test-time augmentation
around the sliding window.

Per image, one view per TTA ratio (the image resized so its short side is `short_side * ratio`,
long side in proportion) and the same views flipped horizontally. Each view goes through the
sliding window (`sliding_window.slide_inference`: crop 896, stride 596 in the release; per window
the segmentor's semantic scores at the window size, summed and divided by the window count), is
resized to the label size, flipped back, and softmaxed over classes. The views' probabilities are
averaged; the argmax is the prediction.

Short sides below ratio 1.0 are rounded *up* to a multiple of 32: with the crop a multiple of 32,
every window side is then either the crop or the whole short side, so each window fits the
segmentor's input rule (multiples of 32). Above 1.0 the short side exceeds the crop and windows are
crop-sized.

Resizing the views is the caller's (the evaluation resizes the uint8 image as the release does);
this module holds the protocol's arithmetic and its combination of views.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .sliding_window import slide_inference, window_geometry

TTA_RATIOS = (0.9, 0.95, 1.0, 1.05, 1.1)
CROP = 896
STRIDE = 596
SHORT_SIDE = 896
SIZE_MULTIPLE = 32


def tta_short_sides(short_side: int = SHORT_SIDE, ratios: Sequence[float] = TTA_RATIOS) -> list[int]:
    """The short side of each view: int(short_side * ratio), rounded up to a multiple of 32 below 1.0."""
    sides = []
    for r in ratios:
        s = int(short_side * r)
        if r < 1:
            s = math.ceil(s / SIZE_MULTIPLE) * SIZE_MULTIPLE
        sides.append(s)
    return sides


def view_size(h: int, w: int, short: int) -> tuple[int, int]:
    """(h, w) of an h x w image resized to short side `short`, the long side int(short * long / short + 0.5)."""
    if h > w:
        return int(short * h / w + 0.5), short
    return short, int(short * w / h + 0.5)


def forwards_per_image(h: int, w: int, *, short_side: int = SHORT_SIDE, crop: int = CROP, stride: int = STRIDE,
                       ratios: Sequence[float] = TTA_RATIOS, flip: bool = True) -> int:
    """Segmentor forwards (windows) the protocol runs on one h x w image."""
    n = sum(len(window_geometry(*view_size(h, w, s), crop, stride)) for s in tta_short_sides(short_side, ratios))
    return n * (2 if flip else 1)


def check_windows(h: int, w: int, crop: int, stride: int) -> None:
    """Raise ValueError unless every window of an h x w view has sides that are multiples of 32."""
    g = window_geometry(h, w, crop, stride)
    if g.win_h % SIZE_MULTIPLE or g.win_w % SIZE_MULTIPLE:
        raise ValueError(f"a {h}x{w} view gives {g.win_h}x{g.win_w} windows with crop {crop}: the segmentor needs "
                         f"multiples of {SIZE_MULTIPLE} (use a crop that is one, and a short side >= the crop)")


@torch.no_grad()
def tta_probabilities(predict: Callable[[torch.Tensor], torch.Tensor], views: Sequence[torch.Tensor], n_classes: int,
                      out_size: tuple[int, int], *, crop: int = CROP, stride: int = STRIDE, flip: bool = True,
                      ) -> torch.Tensor:
    """[1, C, out_h, out_w] class probabilities averaged over `views` (normalised images [1, 3, h, w],
    one per TTA ratio) and, with `flip`, their horizontal mirrors. `predict(windows)` returns the
    semantic scores [b, C, h, w] at the window size (M2FSegmentor.predict)."""
    total = None
    count = 0
    for view in views:
        check_windows(int(view.shape[-2]), int(view.shape[-1]), crop, stride)
        for flipped in (False, True) if flip else (False,):
            x = view.flip(-1) if flipped else view
            scores = slide_inference(predict, x, n_classes, crop, stride, out_size=out_size)
            if flipped:
                scores = scores.flip(-1)
            probs = F.softmax(scores, dim=1)
            total = probs if total is None else total + probs
            count += 1
    return total / count
