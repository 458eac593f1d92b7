"""The deformable-attention core against an independent computation: bilinear sampling written out
per point with hand loops (pixel centres at (i + 0.5) / size, zero outside the map), on
non-square levels and with points outside the map."""

import math

import torch

from dinov3_deploy.reference.models.ms_deform_attn import MSDeformAttn, ms_deform_attn_core, reference_points


def bilinear(vmap: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """vmap [h, w, D] read at normalised (x, y): the 4 neighbours of the pixel coordinate
    (x*w - 0.5, y*h - 0.5), each weighted by the opposite area, zero where off the map."""
    h, w, D = vmap.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(D, dtype=torch.float64)
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            if 0 <= yy < h and 0 <= xx < w:
                out += (1 - abs(px - xx)) * (1 - abs(py - yy)) * vmap[yy, xx].double()
    return out


def literal(value, shapes, loc, weights):
    B, _, M, Dh = value.shape
    _, Q, _, L, P, _ = loc.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(B, Q, M * Dh, dtype=torch.float64)
    for b in range(B):
        for q in range(Q):
            for m in range(M):
                acc = torch.zeros(Dh, dtype=torch.float64)
                for lvl, (h, w) in enumerate(shapes):
                    vmap = value[b, starts[lvl]:starts[lvl + 1], m].reshape(h, w, Dh)
                    for p in range(P):
                        x, y = (float(t) for t in loc[b, q, m, lvl, p])
                        acc += float(weights[b, q, m, lvl, p]) * bilinear(vmap, x, y)
                out[b, q, m * Dh:(m + 1) * Dh] = acc
    return out


def test_core_matches_per_point_bilinear_with_zero_padding_on_non_square_levels():
    shapes = [(3, 5), (2, 7)]
    B, Q, M, Dh, P = 2, 4, 2, 3, 3
    value = torch.randn(B, sum(h * w for h, w in shapes), M, Dh)
    loc = torch.rand(B, Q, M, len(shapes), P, 2) * 1.6 - 0.3  # many points off the map or half on it
    loc[0, 0, 0, 0, 0] = torch.tensor([-0.5, 0.5])  # wholly outside: contributes 0
    loc[0, 0, 0, 0, 1] = torch.tensor([0.01, 0.99])  # a corner pixel's outer half
    loc[1, 2, 1, 1, 2] = torch.tensor([1.2, 1.4])
    weights = torch.rand(B, Q, M, len(shapes), P)
    got = ms_deform_attn_core(value, shapes, loc, weights)
    want = literal(value, shapes, loc, weights)
    assert got.shape == (B, Q, M * Dh)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    only_outside = torch.zeros_like(weights)
    only_outside[0, 0, 0, 0, 0] = 1.0
    assert ms_deform_attn_core(value, shapes, loc, only_outside)[0, 0, :Dh].abs().max() == 0  # zero padding


def test_module_offsets_are_pixels_of_each_level():
    """sampling location = reference point + offset / (level width, level height), weights a softmax
    over levels x points per head: the module reproduced from its own linears and the literal core."""
    torch.manual_seed(1)
    shapes = [(4, 6), (2, 3)]
    attn = MSDeformAttn(16, n_levels=2, n_heads=2, n_points=2, ratio=0.5).eval()
    with torch.no_grad():
        for lin in (attn.sampling_offsets, attn.attention_weights):
            lin.weight.normal_(0, 0.5)
            lin.bias.normal_(0, 1.0)
    ref = reference_points([(2, 2)])  # 4 queries
    query = torch.randn(1, 4, 16)
    value_in = torch.randn(1, 24 + 6, 16)
    with torch.no_grad():
        got = attn(query, ref, value_in, shapes)
        off = attn.sampling_offsets(query).view(1, 4, 2, 2, 2, 2)
        norm = torch.tensor([[6.0, 4.0], [3.0, 2.0]])  # (w, h) per level
        loc = ref[None, :, None, None, None, :] + off / norm[None, None, None, :, None, :]
        w = attn.attention_weights(query).view(1, 4, 2, 4).softmax(-1).view(1, 4, 2, 2, 2)
        value = attn.value_proj(value_in).view(1, 30, 2, 4)
        want = attn.output_proj(literal(value, shapes, loc, w).float())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_reference_points_are_pixel_centres_as_linspace_gives():
    pts = reference_points([(3, 4), (1, 2)])
    assert pts.dtype == torch.float32 and pts.shape == (14, 2)
    ys, xs = torch.meshgrid(torch.linspace(0.5, 2.5, 3) / 3, torch.linspace(0.5, 3.5, 4) / 4, indexing="ij")
    torch.testing.assert_close(pts[:12], torch.stack([xs.reshape(-1), ys.reshape(-1)], -1), rtol=0, atol=0)
    torch.testing.assert_close(pts[12:], torch.tensor([[0.25, 0.5], [0.75, 0.5]]), rtol=0, atol=0)
