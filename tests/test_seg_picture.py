"""infer's `*_seg.png` picture (visualize.seg_picture): column titles, a minimum width, exact colours."""

from __future__ import annotations

import numpy as np

from dinov3_deploy.reference.training.visualize import MIN_PICTURE_WIDTH, SEG_TITLES, seg_picture, title_strip

PALETTE = [[200, 30, 30], [30, 200, 30], [30, 30, 200]]


def _picture(h: int, w: int):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    labels = (np.arange(w)[None, :] * 3 // w).repeat(h, 0).astype(np.uint8)
    shares = {i: float((labels == i).mean()) for i in range(3)}
    return labels, seg_picture(image, labels, PALETTE, ["sky", "tree", "road"], shares)


def test_a_small_input_is_scaled_up_to_a_readable_width_with_exact_colours():
    labels, pic = _picture(40, 50)  # three 50-px panels: 150 px before scaling
    k = pic.shape[1] // 150
    assert pic.shape[1] == 150 * k >= MIN_PICTURE_WIDTH and k == 5
    top = title_strip(pic.shape[1], SEG_TITLES).shape[0]
    mask = pic[top:top + 40 * k, 100 * k:]  # the third panel, whole-factor nearest scaling
    expected = np.asarray(PALETTE, dtype=np.uint8)[labels].repeat(k, 0).repeat(k, 1)
    assert np.array_equal(mask, expected)
    assert pic.shape[0] > top + 40 * k  # the legend below


def test_each_column_has_a_title():
    _, pic = _picture(40, 50)
    top = title_strip(pic.shape[1], SEG_TITLES).shape[0]
    strip = pic[:top]
    thirds = np.array_split(np.arange(pic.shape[1]), 3)
    for cols in thirds:  # dark text pixels over every column
        assert (strip[:, cols].min(axis=2) < 100).any()


def test_a_wide_input_is_left_at_its_size():
    _, pic = _picture(30, 400)
    assert pic.shape[1] == 1200
