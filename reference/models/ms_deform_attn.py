"""Multi-scale deformable attention (Deformable DETR), the operator the ViT-Adapter and the
Mask2Former pixel decoder are built on, with one plain-PyTorch core.

Each query looks at `n_points` positions per head and per level, placed by learned offsets around
its reference point, reads the value map there by bilinear interpolation (zero outside the map,
pixel centres at (i + 0.5) / size: `grid_sample(align_corners=False, padding_mode="zeros")`, the
release's semantics) and sums them with softmax weights. The release wraps its core in a custom
autograd Function, keeps level sizes in tensors and asserts on their values; none of that exports
(ONNX/TensorRT), so here level sizes are Python ints derived from H and W (symbolic sizes under
torch.export: the graph computes them from the input's shape) and the core is one plain function:
`ms_deform_attn_core`. The Triton kernel (kernels/ms_deform_attn.py, forward only) is compared
with it and plugs in through `MSDeformAttn.impl` ("triton"; `M2FSegmentor.set_deform_impl`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

DEFORM_IMPLS = ("plain", "triton")  # "triton": dinov3_deploy.kernels.ms_deform_attn, imported lazily
Shapes = Sequence[tuple[int, int]]  # (h, w) per level, in the order of the flattened value


def ms_deform_attn_core(value: torch.Tensor, shapes: Shapes, locations: torch.Tensor,
                        weights: torch.Tensor) -> torch.Tensor:
    """value [B, S, M, Dh] (levels flattened row-major and concatenated, S = sum h*w);
    locations [B, Q, M, L, P, 2] as (x, y) in [0, 1] of each level's extent; weights [B, Q, M, L, P].
    Returns [B, Q, M*Dh]: sum over levels and points of weight * bilinear sample (zero outside)."""
    B, _, M, Dh = value.shape
    _, Q, _, L, P, _ = locations.shape
    grids = 2 * locations - 1  # grid_sample's [-1, 1] coordinates
    sampled = []
    start = 0
    for lvl, (h, w) in enumerate(shapes):
        v = value[:, start:start + h * w]  # [B, hw, M, Dh]
        start += h * w
        v = v.permute(0, 2, 3, 1).reshape(B * M, Dh, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(B * M, Q, P, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    samples = torch.stack(sampled, dim=-2).flatten(-2)  # [B*M, Dh, Q, L*P]
    w = weights.transpose(1, 2).reshape(B * M, 1, Q, L * P)
    out = (samples * w).sum(-1).view(B, M * Dh, Q)
    return out.transpose(1, 2)


def reference_points(shapes: Shapes, device=None) -> torch.Tensor:
    """[sum h*w, 2] pixel centres ((j + 0.5) / w, (i + 0.5) / h) of each level, row-major, in fp32
    (the release builds them with linspace over sizes held in tensors; identical values)."""
    pts = []
    for h, w in shapes:
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        pts.append(torch.stack([xs.expand(h, w), ys[:, None].expand(h, w)], dim=-1).reshape(h * w, 2))
    return torch.cat(pts, dim=0)


class MSDeformAttn(nn.Module):
    """Deformable attention over `n_levels` value maps; parameter names as in the release
    (`sampling_offsets`, `attention_weights`, `value_proj`, `output_proj`). `ratio` narrows the value
    (the ViT-Adapter uses 0.5)."""

    def __init__(self, d_model: int, n_levels: int, n_heads: int, n_points: int, ratio: float = 1.0) -> None:
        super().__init__()
        if d_model % n_heads or int(d_model * ratio) % n_heads:
            raise ValueError(f"d_model {d_model} (x ratio {ratio}) must be divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.value_dim = int(d_model * ratio)
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, self.value_dim)
        self.output_proj = nn.Linear(self.value_dim, d_model)
        self.impl = "plain"
        self.sampling = DeformSampling()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Deformable DETR's start: zero offset weights, the bias placing point k of head m at distance
        k+1 in direction 2*pi*m/heads (scaled to the unit square's border), uniform attention."""
        nn.init.zeros_(self.sampling_offsets.weight)
        self.sampling_offsets.bias.copy_(ring_offsets(self.n_heads, self.n_levels, self.n_points))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, query: torch.Tensor, ref: torch.Tensor, value_in: torch.Tensor, shapes: Shapes) -> torch.Tensor:
        """query [B, Q, C]; ref [Q, 2] (x, y) in [0, 1], the same point on every level (all the
        release's callers); value_in [B, S, C] flattened over `shapes`. Returns [B, Q, C]."""
        B, Q, _ = query.shape
        M, L, P = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(value_in).view(B, -1, M, self.value_dim // M)
        offsets = self.sampling_offsets(query).view(B, Q, M, L, P, 2)
        logits = self.attention_weights(query).view(B, Q, M, L * P)
        weights = logits.float().softmax(-1).to(value.dtype).view(B, Q, M, L, P)
        # Offsets are in pixels of each level: divide x by its width and y by its height (Python ints).
        norm = [torch.stack([offsets[:, :, :, lvl, :, 0] / w, offsets[:, :, :, lvl, :, 1] / h], dim=-1)
                for lvl, (h, w) in enumerate(shapes)]
        locations = ref[None, :, None, None, None, :].to(offsets.dtype) + torch.stack(norm, dim=3)
        return self.output_proj(self.sampling(value, shapes, locations, weights, self.impl))


class DeformSampling(nn.Module):
    """The sampling core of MSDeformAttn (no parameters) as a module of its own, so a low-precision
    export can keep just it in fp32 (a bf16 graph: ONNX's GridSample has no bf16 below opset 22, nor has
    TensorRT's; deploy_module.DeployModule) while the projections around it stay in the graph's precision.
    `impl` is the MSDeformAttn's switch, honoured here whichever precision the module runs in."""

    def forward(self, value: torch.Tensor, shapes: Shapes, locations: torch.Tensor, weights: torch.Tensor,
                impl: str = "plain") -> torch.Tensor:
        if impl == "triton":
            from dinov3_deploy.kernels.ms_deform_attn import ms_deform_attn_flat

            return ms_deform_attn_flat(value, shapes, locations, weights)
        if impl == "plain":
            return ms_deform_attn_core(value, shapes, locations, weights)
        raise ValueError(f"unknown deformable attention impl '{impl}', expected one of {DEFORM_IMPLS}")


def ring_offsets(n_heads: int, n_levels: int, n_points: int) -> torch.Tensor:
    """The flattened [heads, levels, points, 2] offset bias of Deformable DETR's initialisation."""
    theta = torch.arange(n_heads, dtype=torch.float32) * (2.0 * math.pi / n_heads)
    d = torch.stack([theta.cos(), theta.sin()], -1)
    d = d / d.abs().amax(-1, keepdim=True)
    scale = torch.arange(1, n_points + 1, dtype=torch.float32)
    grid = d[:, None, None, :] * scale[None, None, :, None]
    return grid.expand(n_heads, n_levels, n_points, 2).reshape(-1)
