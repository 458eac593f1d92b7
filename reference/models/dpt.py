"""DPT depth head (Ranftl et al.) on four backbone layers, with the AdaBins-style bins output of
the DINOv3 depth evaluation: reassemble each layer to a pyramid (4x, 2x, 1x, 1/2x of the patch
grid), fuse from the deepest up with residual conv units, and predict `n_bins` logits per pixel
that become a depth in metres (`relu(x) + 0.1` normalised over linearly spaced bins).

Readout of the class token is "ignore" (patch tokens only). All resizes take their target size
from tensors, so the head traces with dynamic H and W; the deepest level is the patch grid halved,
so inputs need a grid of at least 3 x 3 patches (48 px for ViT-16) - give export ranges from there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .heads import bins_to_depth


class ResidualConvUnit(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FeatureFusionBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.res1 = ResidualConvUnit(ch)
        self.res2 = ResidualConvUnit(ch)
        self.out_conv = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size: Sequence) -> torch.Tensor:
        if skip is not None:
            x = x + self.res1(skip)
        x = self.res2(x)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.out_conv(x)


class DPTDepthHead(nn.Module):
    """forward(maps: 4 x [B, D_i, h, w]) -> depth [B, 1, 4h, 4w] in metres (h, w: patch grid).
    ConvNeXt maps come at strides 4-32 already and skip the reassembly; the output has the same
    stride-1 resolution for both families."""

    def __init__(self, backbone: nn.Module, layer_ids: Sequence[int], spec) -> None:
        super().__init__()
        if len(layer_ids) != 4:
            raise ValueError(f"the DPT head takes 4 layers (layers='four_even' or 'four_last'), got {list(layer_ids)}")
        dims = getattr(backbone, "embed_dims", None)
        in_dims = [dims[i] for i in layer_ids] if dims is not None else [backbone.embed_dim] * 4
        feats = int(getattr(spec, "dpt_features", 256))
        d = backbone.embed_dim
        post = [max(d // 4, 8), max(d // 2, 8), d, d]  # ViT-L: 256, 512, 1024, 1024 as in DPT
        self.project = nn.ModuleList(nn.Conv2d(c, p, 1) for c, p in zip(in_dims, post))
        if backbone.cfg.family == "convnext":
            # ConvNeXt stages already form the pyramid (strides 4, 8, 16, 32): nothing to reassemble.
            self.resample = nn.ModuleList(nn.Identity() for _ in range(4))
        else:
            self.resample = nn.ModuleList(
                [
                    nn.ConvTranspose2d(post[0], post[0], 4, stride=4),
                    nn.ConvTranspose2d(post[1], post[1], 2, stride=2),
                    nn.Identity(),
                    nn.Conv2d(post[3], post[3], 3, stride=2, padding=1),
                ]
            )
        self.layer_rn = nn.ModuleList(nn.Conv2d(p, feats, 3, padding=1, bias=False) for p in post)
        self.fusion = nn.ModuleList(FeatureFusionBlock(feats) for _ in range(4))
        self.head = nn.Sequential(
            nn.Conv2d(feats, feats // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(feats // 2, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, spec.n_bins, 1),
        )
        self.register_buffer(
            "bin_centers", torch.linspace(spec.min_depth, spec.max_depth, spec.n_bins), persistent=False
        )

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        x = [rn(rs(pr(m))) for m, pr, rs, rn in zip(maps, self.project, self.resample, self.layer_rn)]
        l1, l2, l3, l4 = x
        path = self.fusion[3](l4, None, l3.shape[-2:])
        path = self.fusion[2](path, l3, l2.shape[-2:])
        path = self.fusion[1](path, l2, l1.shape[-2:])
        size = (l1.shape[-2] * 2, l1.shape[-1] * 2)
        path = self.fusion[0](path, l1, size)
        return bins_to_depth(self.head(path), self.bin_centers)
