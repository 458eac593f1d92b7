"""Window placement and stitching of the reference sliding-window inference (official semantics)."""

import pytest
import torch
import torch.nn.functional as F

from dinov3_deploy.reference.protocol.sliding_window import (
    count_map,
    slide_inference,
    slide_predict,
    window_geometry,
    window_grid,
)


def _axes(windows):
    return sorted({(y0, y1) for y0, y1, _, _ in windows}), sorted({(x0, x1) for _, _, x0, x1 in windows})


@pytest.mark.parametrize(
    "h, w, crop, stride, rows, cols",
    [
        # exactly one crop: max(0 + 340, 0) // 341 + 1 = 1
        (512, 512, 512, 341, [(0, 512)], [(0, 512)]),
        # ADE20K-like 512x683: (683-512+340)//341+1 = 2, second window 341..853 clipped to 683 -> 171..683
        (512, 683, 512, 341, [(0, 512)], [(0, 512), (171, 683)]),
        # (1000-512+340)//341+1 = 3: starts 0, 341, 682 -> the last shifted back to 488
        (1000, 512, 512, 341, [(0, 512), (341, 853), (488, 1000)], [(0, 512)]),
        # non-divisible small sizes: h (37-16+9)//10+1 = 4, w (50-16+9)//10+1 = 5
        (37, 50, 16, 10, [(0, 16), (10, 26), (20, 36), (21, 37)], [(0, 16), (10, 26), (20, 36), (30, 46), (34, 50)]),
        # crop larger than the image on both axes: becomes the shorter side (300), square
        (300, 400, 512, 341, [(0, 300)], [(0, 300), (100, 400)]),
        # crop larger on one axis only: that axis spans the image, the other slides with the full crop
        (300, 700, 512, 341, [(0, 300)], [(0, 512), (188, 700)]),
    ],
)
def test_window_grid_hand_worked(h, w, crop, stride, rows, cols):
    windows = window_grid(h, w, crop, stride)
    assert len(windows) == len(rows) * len(cols)
    assert _axes(windows) == (rows, cols)
    # official loop order: rows outer, columns inner
    assert windows[: len(cols)] == [(rows[0][0], rows[0][1], x0, x1) for x0, x1 in cols]


def test_effective_crop():
    def crop_of(h, w, crop):
        g = window_geometry(h, w, crop, 341)
        return g.crop_h, g.crop_w

    assert crop_of(300, 400, 512) == (300, 300)
    assert crop_of(300, 700, 512) == (512, 512)  # only when both sides are smaller
    assert crop_of(600, 700, (512, 256)) == (512, 256)


def test_window_geometry_fields():
    """What the stitch kernel is launched with: clamped stride, counts, window size."""
    g = window_geometry(100, 511, 512, 341)  # crop -> 100 (square), stride clamped to 100
    assert (g.crop_h, g.crop_w, g.stride_h, g.stride_w) == (100, 100, 100, 100)
    assert (g.n_rows, g.n_cols, g.win_h, g.win_w) == (1, 6, 100, 100) and len(g) == 6
    g = window_geometry(300, 700, (512, 256), (341, 100))  # taller crop than the image: one row
    assert (g.n_rows, g.n_cols, g.win_h, g.win_w) == (1, 6, 300, 256)
    assert g.windows() == window_grid(300, 700, (512, 256), (341, 100))


def test_stride_larger_than_crop_still_covers_everything():
    # crop shrinks to 100 (shorter side) but the stride stays 341: the release would leave pixels
    # 100..341 uncovered (count 0); ours clamps the stride to the crop.
    windows = window_grid(100, 511, 512, 341)
    assert count_map(100, 511, windows).min() >= 1
    assert all(x1 - x0 == 100 for _, _, x0, x1 in windows)


@pytest.mark.parametrize("h, w", [(1, 1), (17, 5), (64, 64), (97, 131), (513, 257), (1024, 700)])
@pytest.mark.parametrize("crop, stride", [(64, 43), (512, 341), (32, 32)])
def test_windows_cover_image_inside_bounds(h, w, crop, stride):
    """Larger images than the property test draws; the window size the kernel is given is the
    size of every window."""
    g = window_geometry(h, w, crop, stride)
    windows = window_grid(h, w, crop, stride)
    assert all(0 <= y0 and y1 <= h and 0 <= x0 and x1 <= w for y0, y1, x0, x1 in windows)
    assert {(y1 - y0, x1 - x0) for y0, y1, x0, x1 in windows} == {(g.win_h, g.win_w)}  # never padded
    assert count_map(h, w, windows).min() >= 1 and len(set(windows)) == len(windows) == g.n_rows * g.n_cols


def test_stitching_equals_per_pixel_average():
    # logits_fn returns a constant per call (the call index): each output pixel must be the mean
    # of the indices of the windows that cover it, computed here pixel by pixel.
    h, w, crop, stride = 23, 31, 12, 7
    calls = []

    def fn(x):
        calls.append(x.shape)
        return torch.full((1, 2, 3, 3), float(len(calls) - 1))

    out = slide_inference(fn, torch.zeros(1, 3, h, w), n_classes=2, crop=crop, stride=stride)
    windows = window_grid(h, w, crop, stride)
    assert len(calls) == len(windows)
    for y in range(h):
        for x in range(w):
            ids = [k for k, (y0, y1, x0, x1) in enumerate(windows) if y0 <= y < y1 and x0 <= x < x1]
            assert out[0, 0, y, x].item() == pytest.approx(sum(ids) / len(ids))


def test_stitching_equals_padded_canvas_computation():
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, 5, 4, stride=4)  # low-resolution logits, like a patch-level head
    fn = lambda x: conv(x)
    image = torch.randn(1, 3, 70, 90)
    crop, stride = 32, 21
    out = slide_inference(fn, image, 5, crop, stride, batch_size=3)
    # The release's formulation: pad each upsampled window to the full canvas.
    preds = torch.zeros(1, 5, 70, 90)
    count = torch.zeros(1, 1, 70, 90)
    with torch.no_grad():
        for y0, y1, x0, x1 in window_grid(70, 90, crop, stride):
            logit = F.interpolate(fn(image[..., y0:y1, x0:x1]), size=(y1 - y0, x1 - x0), mode="bilinear",
                                  align_corners=False)
            preds += F.pad(logit, (x0, 90 - x1, y0, 70 - y1))
            count += F.pad(torch.ones(1, 1, y1 - y0, x1 - x0), (x0, 90 - x1, y0, 70 - y1))
    torch.testing.assert_close(out, preds / count, rtol=1e-5, atol=1e-5)
    # final resize to the label size
    resized = slide_inference(fn, image, 5, crop, stride, out_size=(35, 45))
    torch.testing.assert_close(resized, F.interpolate(preds / count, size=(35, 45), mode="bilinear",
                                                      align_corners=False), rtol=1e-5, atol=1e-5)


def test_identity_logits_reproduce_the_image():
    image = torch.randn(1, 3, 40, 57)
    out = slide_inference(lambda x: x, image, 3, crop=24, stride=16)
    torch.testing.assert_close(out, image, rtol=1e-5, atol=1e-5)


def test_bad_inputs():
    with pytest.raises(ValueError):
        slide_inference(lambda x: x, torch.zeros(2, 3, 8, 8), 3, 4, 4)
    with pytest.raises(ValueError):
        slide_inference(lambda x: x[:, :2], torch.zeros(1, 3, 8, 8), 3, 4, 4)
    with pytest.raises(ValueError):
        window_grid(0, 5, 4, 4)


def test_slide_predict_against_a_per_pixel_computation():
    """slide_predict vs a computation written here: every window cut out by hand (explicit
    placement), run through the model, upsampled, and each pixel averaged over the windows that
    cover it in a plain loop; then the final resize."""
    from dinov3_deploy.reference.factory import build_task_model

    model = build_task_model("seg", "vit_tiny_test", n_classes=3).eval()
    image = torch.randn(1, 3, 48, 80)
    # crop 32, stride 16: rows start at 0 and 16 (48 = 16 + 32), columns at 0, 16, 32, 48 (80 = 48 + 32)
    starts = [(y0, x0) for y0 in (0, 16) for x0 in (0, 16, 32, 48)]
    out = slide_predict(model, image, crop=32, stride=16, out_size=(24, 40), batch_size=3)
    assert out.shape == (1, 3, 24, 40)

    with torch.no_grad():
        ups = [F.interpolate(model(image[..., y0 : y0 + 32, x0 : x0 + 32])["logits"], size=(32, 32),
                             mode="bilinear", align_corners=False)[0] for y0, x0 in starts]
    full = torch.empty(3, 48, 80)
    for y in range(48):
        for x in range(80):
            covering = [up[:, y - y0, x - x0] for (y0, x0), up in zip(starts, ups)
                        if y0 <= y < y0 + 32 and x0 <= x < x0 + 32]
            assert len(covering) == (1 if y < 16 or y >= 32 else 2) * (1 if x < 16 or x >= 64 else 2)
            full[:, y, x] = torch.stack(covering).mean(0)
    expected = F.interpolate(full[None], size=(24, 40), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
