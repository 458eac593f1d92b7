"""The M2F evaluation protocol: its windows (crop 896, stride 596) on odd sizes, its TTA sizes, the
cost per image, flip handling and the averaging of softmaxed views."""

import pytest
import torch

from dinov3_deploy.reference.protocol.m2f import (
    check_windows,
    forwards_per_image,
    tta_probabilities,
    tta_short_sides,
    view_size,
)
from dinov3_deploy.reference.protocol.sliding_window import window_grid


def test_windows_of_crop_896_stride_596_on_odd_sizes():
    # rows: n = max(h - 896 + 595, 0) // 596 + 1; window i ends at min(596 i + 896, h), starts 896 before
    assert window_grid(985, 1313, 896, 596) == [(0, 896, 0, 896), (0, 896, 417, 1313),
                                                (89, 985, 0, 896), (89, 985, 417, 1313)]
    assert window_grid(901, 1777, 896, 596) == [(0, 896, 0, 896), (0, 896, 596, 1492), (0, 896, 881, 1777),
                                                (5, 901, 0, 896), (5, 901, 596, 1492), (5, 901, 881, 1777)]
    # shorter than the crop on one axis: the window spans that whole side (832, a multiple of 32)
    assert window_grid(832, 1109, 896, 596) == [(0, 832, 0, 896), (0, 832, 213, 1109)]
    check_windows(832, 1109, 896, 596)
    with pytest.raises(ValueError, match="multiples of 32"):
        check_windows(850, 1109, 896, 596)


def test_tta_short_sides_round_up_below_one():
    assert tta_short_sides(896) == [832, 864, 896, 940, 985]  # 806 -> 832, 851 -> 864; 940.8, 985.6 floored
    assert tta_short_sides(64) == [64, 64, 64, 67, 70]
    assert view_size(512, 683, 896) == (896, 1195) and view_size(683, 512, 832) == (1110, 832)


def test_forwards_per_image_of_a_typical_ade20k_image():
    # 512x683 -> views 832x1110 (2 windows), 864x1153 (2), 896x1195 (2), 940x1254 (4), 985x1314 (4), x2 flips
    assert forwards_per_image(512, 683) == 28
    assert forwards_per_image(512, 683, flip=False, ratios=(1.0,)) == 2


def per_pixel_model(n_classes=4):
    weight = torch.randn(n_classes, 3, 1, 1)
    return lambda x: torch.nn.functional.conv2d(x, weight)


def test_a_mirror_symmetric_model_gives_the_same_probabilities_with_and_without_flip():
    torch.manual_seed(0)
    model = per_pixel_model()
    views = [torch.randn(1, 3, 64, 96)]
    with_flip = tta_probabilities(model, views, 4, (50, 75), crop=64, stride=43, flip=True)
    without = tta_probabilities(model, views, 4, (50, 75), crop=64, stride=43, flip=False)
    torch.testing.assert_close(with_flip, without, rtol=1e-4, atol=1e-5)  # window sums in another order
    # a model that sees the left half differently is not symmetric: the flipped view changes the average

    def skewed(x):  # class 0 grows from left to right
        return model(x) + torch.linspace(0, 3, x.shape[-1]) * torch.tensor([1.0, 0, 0, 0])[:, None, None]

    a = tta_probabilities(skewed, views, 4, (50, 75), crop=64, stride=43, flip=True)
    b = tta_probabilities(skewed, views, 4, (50, 75), crop=64, stride=43, flip=False)
    assert (a - b).abs().max() > 1e-2


def test_views_are_averaged_after_their_softmax():
    """Each view scores a constant vector; the result is the mean of their softmaxes (not the softmax of
    the mean), at the label size, whatever each view's size."""
    per_view = {64: torch.tensor([2.0, 0.0, -1.0]), 96: torch.tensor([-1.0, 3.0, 0.5])}

    def constant(x):
        s = per_view[int(x.shape[-2])]
        return s[None, :, None, None].expand(x.shape[0], 3, *x.shape[-2:])

    views = [torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 96, 96)]
    got = tta_probabilities(constant, views, 3, (20, 30), crop=96, stride=64)
    want = (per_view[64].softmax(0) + per_view[96].softmax(0)) / 2
    assert got.shape == (1, 3, 20, 30)
    torch.testing.assert_close(got[0, :, 7, 11], want)
    assert not torch.allclose(want, ((per_view[64] + per_view[96]) / 2).softmax(0))
