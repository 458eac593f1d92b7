"""Property tests (hypothesis) for the geometry every backend relies on: sliding windows and RoPE."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dinov3_deploy.reference.models.layers.rope import RopePositionEmbedding, rope_apply
from dinov3_deploy.reference.protocol.sliding_window import count_map, window_geometry, window_grid

sizes = st.integers(min_value=1, max_value=300)


@settings(max_examples=200, deadline=None)
@given(h=sizes, w=sizes, crop=st.integers(8, 160), stride=st.integers(1, 200))
def test_windows_cover_the_image_inside_its_bounds_with_one_size(h, w, crop, stride):
    windows = window_grid(h, w, crop, stride)
    g = window_geometry(h, w, crop, stride)
    ch, cw = g.crop_h, g.crop_w
    for y0, y1, x0, x1 in windows:
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
        assert (y1 - y0, x1 - x0) == (min(ch, h), min(cw, w))  # never padded, never shrunk
    assert count_map(h, w, windows).min() >= 1  # every pixel is predicted
    # the official count per axis whenever the stride does not exceed the crop
    if stride <= min(ch, cw):
        rows = max(h - ch + stride - 1, 0) // stride + 1
        cols = max(w - cw + stride - 1, 0) // stride + 1
        assert len(windows) == rows * cols


@settings(max_examples=40, deadline=None)
@given(H=st.integers(1, 12), W=st.integers(1, 12), head_dim=st.sampled_from([16, 32, 64]), prefix=st.integers(0, 5))
def test_rope_is_a_rotation_of_patch_tokens_only(H, W, head_dim, prefix):
    rope = RopePositionEmbedding(head_dim).eval()
    sin, cos = rope(H, W)
    assert sin.shape == cos.shape == (H * W, head_dim)
    torch.testing.assert_close(sin**2 + cos**2, torch.ones_like(sin))
    x = torch.randn(2, 3, prefix + H * W, head_dim)
    y = rope_apply(x, sin, cos)
    assert torch.equal(y[..., :prefix, :], x[..., :prefix, :])  # storage / cls tokens untouched
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))  # a rotation preserves norms
    # the rotation depends on the token's grid position only, never on the batch item or head
    same = x[:1, :1].expand(2, 3, -1, -1)
    out = rope_apply(same, sin, cos)
    assert torch.equal(out, out[:1, :1].expand(2, 3, -1, -1))
    # coordinates are normalised to the grid ("separate"): the first patch's h angle is 2pi*c0/p0
    c0 = (0.5 / H) * 2 - 1
    theta = 2 * math.pi * c0 / float(rope.periods[0])
    assert abs(float(sin[0, 0]) - math.sin(theta)) < 1e-5 and abs(float(cos[0, 0]) - math.cos(theta)) < 1e-5
    # and the w angles of the last patch in a row use the w coordinate
    cw = ((W - 0.5) / W) * 2 - 1
    theta_w = 2 * math.pi * cw / float(rope.periods[0])
    assert abs(float(sin[W - 1, head_dim // 4]) - math.sin(theta_w)) < 1e-5
