"""The chunked Mask2Former stitch (runtime/m2f_stitch.py) against the reference path it replaces: per
window the release's semantic scores (upsampled mask logits, sigmoid, times the class probabilities)
summed by the reference slide_inference. Logits of trained-like magnitude, chunks that do not divide
the query and class counts, non-square views with overlapping windows."""

from __future__ import annotations

import pytest
import torch

from dinov3_deploy.reference.models.m2f_segmentor import semantic_scores
from dinov3_deploy.reference.protocol.sliding_window import slide_inference, window_geometry
from dinov3_deploy.runtime.m2f_stitch import add_windows, finish_view, m2f_canvas


def _window_logits(n: int, queries: int, classes: int, h: int, w: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    cls = 4 * torch.randn(n, queries, classes + 1, generator=g)  # peaked class softmaxes, as trained heads give
    masks = 8 * torch.randn(n, queries, h // 4, w // 4, generator=g)  # saturating sigmoids and near-zero ones
    return cls, masks


def _reference(view_hw, cls, masks, crop, stride, out_size, batch):
    it = iter(range(0, cls.shape[0], batch))

    def scores(crops):
        k = next(it)
        return semantic_scores(cls[k:k + batch], masks[k:k + batch], tuple(crops.shape[-2:]))

    image = torch.zeros(1, 3, *view_hw)
    return slide_inference(scores, image, cls.shape[-1] - 1, crop, stride, out_size=out_size, batch_size=batch)


@pytest.mark.parametrize("view_hw,crop,stride,out_size,q_chunk,c_chunk,batch", [
    ((64, 91), 64, 43, (70, 100), 7, 5, 2),  # the tiny artifact's view of a 70x100 image: 2 windows
    ((96, 160), 64, 43, (60, 100), 16, 32, 1),  # 2 x 3 windows, chunks larger than the counts
    ((128, 96), 64, 40, (128, 96), 1, 1, 3),  # portrait, one query and one class a step, no final resize
])
def test_chunked_stitch_equals_the_reference_scores_and_labels(view_hw, crop, stride, out_size, q_chunk, c_chunk,
                                                              batch):
    geometry = window_geometry(*view_hw, crop, stride)
    n_classes = 11
    cls, masks = _window_logits(len(geometry), 10, n_classes, geometry.win_h, geometry.win_w, seed=len(geometry))
    want = _reference(view_hw, cls, masks, crop, stride, out_size, batch)

    canvas, count = m2f_canvas(geometry, n_classes, "cpu")
    windows = geometry.windows()
    for start in range(0, len(windows), batch):
        add_windows(canvas, cls[start:start + batch], masks[start:start + batch], windows[start:start + batch],
                    q_chunk=q_chunk, c_chunk=c_chunk)
    got = finish_view(canvas, count, out_size)
    assert got.shape == want.shape == (1, n_classes, *out_size)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)  # only the order of the sum over queries differs
    assert torch.equal(got.argmax(1), want.argmax(1))


def test_every_window_is_counted_where_windows_overlap():
    """A class that every query predicts with certainty and masks that are all foreground give scores
    of Q everywhere: the canvas is the sum over windows divided by their count, not the last window's."""
    geometry = window_geometry(64, 150, 64, 43)
    assert len(geometry) == 3
    cls = torch.full((3, 4, 3), -30.0)
    cls[..., 1] = 30.0
    masks = torch.full((3, 4, 16, 16), 30.0)
    canvas, count = m2f_canvas(geometry, 2, "cpu")
    add_windows(canvas, cls, masks, geometry.windows(), q_chunk=3, c_chunk=1)
    assert count.max() == 2 and count.min() == 1
    out = finish_view(canvas, count, (64, 150))
    torch.testing.assert_close(out[0, 1], torch.full((64, 150), 4.0))
    torch.testing.assert_close(out[0, 0], torch.zeros(64, 150), atol=1e-12, rtol=0)
