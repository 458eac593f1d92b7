"""Mask2Former's pixel decoder (MSDeformAttn encoder + one FPN step), as the release configures it.

The adapter's stride 32/16/8 maps are projected to `hidden` (1x1 conv + GroupNorm 32), given a sine
position encoding plus a per-level embedding, and refined jointly by six deformable-attention
encoder layers (post-norm, ReLU FFN). The stride-4 map joins through one FPN step (lateral 1x1 conv
+ GN, upsampled stride-8 output added, 3x3 conv + GN + ReLU) and a 1x1 conv gives the mask
features. Outputs: mask features (stride 4) and the three encoder levels (stride 32, 16, 8) the
transformer decoder attends to. Key names follow the release (`input_convs`, `encoder.level_encoding`,
`encoder.encoder.layers.N`, `lateral_convs.0`, `output_convs.0`, `mask_feature`).

The release runs this part in fp32 under autocast; so does this reference (it computes in the
dtype of its input, which the segmentor keeps fp32).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers.norm import GroupNorm, LayerNorm  # fp32 statistics under fp16/bf16, as the backbone's
from .ms_deform_attn import MSDeformAttn, reference_points

N_LEVELS = 3  # the encoder's levels: strides 32, 16, 8 (in that order)


def sine_position_encoding(h: int, w: int, channels: int, device=None, temperature: float = 10000.0
                           ) -> torch.Tensor:
    """[1, channels, h, w] DETR's normalised sine encoding: channels/2 features of y then of x, each
    sin/cos interleaved at the same frequency, on positions (i + 1) / (size + 1e-6) * 2 pi."""
    half = channels // 2
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device)
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device)
    y = y / (y[-1:] + eps) * scale
    x = x / (x[-1:] + eps) * scale
    dim_t = torch.arange(half, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / half)

    def encode(pos: torch.Tensor) -> torch.Tensor:  # [n] -> [n, half], sin(even), cos(odd) interleaved
        p = pos[:, None] / dim_t
        return torch.stack([p[:, 0::2].sin(), p[:, 1::2].cos()], dim=-1).flatten(1)

    pos_y = encode(y)[:, None, :].expand(h, w, half)
    pos_x = encode(x)[None, :, :].expand(h, w, half)
    return torch.cat([pos_y, pos_x], dim=-1).permute(2, 0, 1)[None]


class ConvNorm(nn.Conv2d):
    """Conv2d followed by a norm (child `norm`) and an optional ReLU: keys `weight`, `norm.*`."""

    def __init__(self, cin: int, cout: int, kernel: int, *, relu: bool = False) -> None:
        super().__init__(cin, cout, kernel, padding=kernel // 2, bias=False)
        self.norm = GroupNorm(32, cout)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(super().forward(x))
        return F.relu(x) if self.relu else x


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, ffn: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(dim, N_LEVELS, n_heads, n_points)
        self.norm1 = LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm2 = LayerNorm(dim)

    def forward(self, src, pos, ref, shapes):
        src = self.norm1(src + self.self_attn(src + pos, ref, src, shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class Encoder(nn.Module):
    def __init__(self, dim: int, n_layers: int, ffn: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(dim, ffn, n_heads, n_points) for _ in range(n_layers))


class EncoderOnly(nn.Module):
    """Holds `level_encoding` [3, hidden] and `encoder.layers` (the release's nesting)."""

    def __init__(self, dim: int, n_layers: int, ffn: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.level_encoding = nn.Parameter(torch.randn(N_LEVELS, dim))
        self.encoder = Encoder(dim, n_layers, ffn, n_heads, n_points)

    def forward(self, srcs: list[torch.Tensor]) -> list[torch.Tensor]:
        B, C = srcs[0].shape[:2]
        shapes = [(s.shape[-2], s.shape[-1]) for s in srcs]
        x = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], dim=1)
        pos = torch.cat([sine_position_encoding(h, w, C, device=x.device).to(x.dtype).flatten(2).transpose(1, 2)
                         + self.level_encoding[lvl] for lvl, (h, w) in enumerate(shapes)], dim=1)
        ref = reference_points(shapes, device=x.device)
        for layer in self.encoder.layers:
            x = layer(x, pos, ref, shapes)
        parts = torch.split(x, [h * w for h, w in shapes], dim=1)
        return [p.transpose(1, 2).reshape(B, C, h, w) for p, (h, w) in zip(parts, shapes)]


class MSDeformAttnPixelDecoder(nn.Module):
    def __init__(self, in_dim: int, hidden: int, *, n_layers: int = 6, ffn: int = 4096, n_heads: int = 16,
                 n_points: int = 4) -> None:
        super().__init__()
        self.input_convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_dim, hidden, 1), GroupNorm(32, hidden)) for _ in range(N_LEVELS)
        )
        self.encoder = EncoderOnly(hidden, n_layers, ffn, n_heads, n_points)
        self.mask_feature = nn.Conv2d(hidden, hidden, 1)
        self.lateral_convs = nn.ModuleList([ConvNorm(in_dim, hidden, 1)])
        self.output_convs = nn.ModuleList([ConvNorm(hidden, hidden, 3, relu=True)])

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """features {"1": s4, "2": s8, "3": s16, "4": s32} -> (mask_features [B, hidden, H/4, W/4],
        [s32, s16, s8] encoder outputs)."""
        srcs = [conv(features[k]) for conv, k in zip(self.input_convs, ("4", "3", "2"))]
        levels = self.encoder(srcs)
        lateral = self.lateral_convs[0](features["1"])
        up = F.interpolate(levels[-1], size=tuple(lateral.shape[-2:]), mode="bilinear", align_corners=False)
        s4 = self.output_convs[0](lateral + up)
        return self.mask_feature(s4), levels
