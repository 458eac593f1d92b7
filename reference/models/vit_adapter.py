"""The ViT-Adapter of the release's Mask2Former segmentor: turns a plain ViT (one stride-16 map)
into the four-level pyramid (strides 4/8/16/32) a Mask2Former head needs.

A small convolutional stem (the spatial prior module) gives image features at strides 4-32; the
stride 8/16/32 ones, flattened to tokens, are the queries `c` that four interaction blocks update
by deformable attention into four backbone layers' patch tokens (extractors only: the ViT itself is
frozen and not modified). At the end, each level gets its backbone layer's map resized to its
stride added, and a BatchNorm. Key names follow the release (`spm`, `interactions.N.extractor`,
`extra_extractors`, `up`, `norm1..4`, `level_embed`, `backbone`), so its head file loads as it is.

Export-minded: sizes are Python ints from H and W (which must be multiples of 32), no
checkpointing, no custom autograd Function.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers.norm import LayerNorm  # fp32 statistics under fp16/bf16, as the backbone's
from .ms_deform_attn import MSDeformAttn, reference_points

LN_EPS = 1e-6


def conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SpatialPriorModule(nn.Module):
    """Conv stem: c1 (stride 4, `inplanes` ch), c2-c4 (strides 8/16/32, 2x/4x/4x), each projected
    to `dim` by a 1x1 conv (fc1-fc4)."""

    def __init__(self, inplanes: int, dim: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn_relu(3, inplanes, 2), *conv_bn_relu(inplanes, inplanes, 1),
                                  *conv_bn_relu(inplanes, inplanes, 1), nn.MaxPool2d(3, 2, 1))
        self.conv2 = nn.Sequential(*conv_bn_relu(inplanes, 2 * inplanes, 2))
        self.conv3 = nn.Sequential(*conv_bn_relu(2 * inplanes, 4 * inplanes, 2))
        self.conv4 = nn.Sequential(*conv_bn_relu(4 * inplanes, 4 * inplanes, 2))
        self.fc1 = nn.Conv2d(inplanes, dim, 1)
        self.fc2 = nn.Conv2d(2 * inplanes, dim, 1)
        self.fc3 = nn.Conv2d(4 * inplanes, dim, 1)
        self.fc4 = nn.Conv2d(4 * inplanes, dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return self.fc1(c1), self.fc2(c2), self.fc3(c3), self.fc4(c4)


class DWConv(nn.Module):
    """Depthwise 3x3 conv applied to each of the three query scales (stride 8/16/32 token groups)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        B, _, C = x.shape
        out, start = [], 0
        for h, w in shapes:
            part = x[:, start:start + h * w].transpose(1, 2).reshape(B, C, h, w)
            out.append(self.dwconv(part).flatten(2).transpose(1, 2))
            start += h * w
        return torch.cat(out, dim=1)


class ConvFFN(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), shapes)))


class Extractor(nn.Module):
    """c <- c + MSDeformAttn(query_norm(c), ref, feat_norm(x)); c <- c + ConvFFN(ffn_norm(c))."""

    def __init__(self, dim: int, n_heads: int, n_points: int, deform_ratio: float, cffn_ratio: float) -> None:
        super().__init__()
        self.query_norm = LayerNorm(dim, eps=LN_EPS)
        self.feat_norm = LayerNorm(dim, eps=LN_EPS)
        self.attn = MSDeformAttn(dim, n_levels=1, n_heads=n_heads, n_points=n_points, ratio=deform_ratio)
        self.ffn = ConvFFN(dim, int(dim * cffn_ratio))
        self.ffn_norm = LayerNorm(dim, eps=LN_EPS)

    def forward(self, c: torch.Tensor, ref: torch.Tensor, feat: torch.Tensor, feat_hw: tuple[int, int],
                c_shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        c = c + self.attn(self.query_norm(c), ref, self.feat_norm(feat), [feat_hw])
        return c + self.ffn(self.ffn_norm(c), c_shapes)


class InteractionBlock(nn.Module):
    """One extractor (two more in the last block), reading one backbone layer's patch tokens."""

    def __init__(self, dim: int, n_heads: int, n_points: int, deform_ratio: float, cffn_ratio: float,
                 extra_extractor: bool) -> None:
        super().__init__()
        args = (dim, n_heads, n_points, deform_ratio, cffn_ratio)
        self.extractor = Extractor(*args)
        self.extra_extractors = nn.Sequential(Extractor(*args), Extractor(*args)) if extra_extractor else None

    def forward(self, c, ref, feat, feat_hw, c_shapes):
        c = self.extractor(c, ref, feat, feat_hw, c_shapes)
        for extractor in self.extra_extractors or ():
            c = extractor(c, ref, feat, feat_hw, c_shapes)
        return c


class ViTAdapter(nn.Module):
    """backbone + adapter: forward(images [B,3,H,W]) -> {"1": stride 4, "2": 8, "3": 16, "4": 32}
    maps of the backbone's width. `layers` are the 0-based backbone blocks read (four)."""

    def __init__(self, backbone: nn.Module, layers: Sequence[int], *, conv_inplane: int = 64, n_points: int = 4,
                 n_heads: int = 16, deform_ratio: float = 0.5, cffn_ratio: float = 0.25) -> None:
        super().__init__()
        D = backbone.embed_dim
        self.backbone = backbone
        self.layers = [int(i) for i in layers]
        self.patch_size = int(backbone.patch_size)
        self.level_embed = nn.Parameter(torch.randn(3, D))
        self.spm = SpatialPriorModule(conv_inplane, D)
        self.interactions = nn.Sequential(*(
            InteractionBlock(D, n_heads, n_points, deform_ratio, cffn_ratio, extra_extractor=i == len(layers) - 1)
            for i in range(len(layers))
        ))
        self.up = nn.ConvTranspose2d(D, D, 2, 2)
        self.norm1, self.norm2, self.norm3, self.norm4 = (nn.BatchNorm2d(D) for _ in range(4))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        B, _, H, W = x.shape  # ints, or symbolic sizes under export (never specialised by int())
        c_shapes = [(H // 8, W // 8), (H // 16, W // 16), (H // 32, W // 32)]
        feat_hw = (H // self.patch_size, W // self.patch_size)
        c1, c2, c3, c4 = self.spm(x)
        c = torch.cat([ci.flatten(2).transpose(1, 2) + self.level_embed[i]
                       for i, ci in enumerate((c2, c3, c4))], dim=1)
        ref = reference_points(c_shapes, device=x.device)
        feats = self.backbone.get_intermediate_layers(x, n=self.layers)  # normed patch tokens [B, hw, D]
        for feat, block in zip(feats, self.interactions):
            c = block(c, ref, feat, feat_hw, c_shapes)
        D = c.shape[-1]
        sizes = [h * w for h, w in c_shapes]
        c2, c3, c4 = (t.transpose(1, 2).reshape(B, D, h, w)
                      for t, (h, w) in zip(torch.split(c, sizes, dim=1), c_shapes))
        c1 = self.up(c2) + c1
        pyramid = []
        for level, (ci, stride) in enumerate(zip((c1, c2, c3, c4), (4, 8, 16, 32))):
            fmap = feats[level].transpose(1, 2).reshape(B, D, *feat_hw)
            fmap = F.interpolate(fmap, size=(H // stride, W // stride), mode="bilinear", align_corners=False)
            pyramid.append(ci + fmap)
        norms = (self.norm1, self.norm2, self.norm3, self.norm4)
        return {str(i + 1): norm(p) for i, (norm, p) in enumerate(zip(norms, pyramid))}
