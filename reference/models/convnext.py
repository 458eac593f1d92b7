"""DINOv3 ConvNeXt backbone (no storage tokens; pooled "cls" = global average of the last stage)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..configs import ConvNeXtConfig
from .intermediate import IntermediateLayers
from .layers import LayerNorm, LayerNorm2d


class ConvNeXtBlock(nn.Module):
    """dwconv7x7 -> LN -> Linear x4 -> GELU -> Linear, times gamma, + residual."""

    def __init__(self, dim: int, eps: float, layerscale_init: float, device=None) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, device=device)
        self.norm = LayerNorm(dim, eps=eps, device=device)
        self.pwconv1 = nn.Linear(dim, 4 * dim, device=device)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim, device=device)
        self.gamma = nn.Parameter(torch.full((dim,), layerscale_init, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXt(IntermediateLayers, nn.Module):
    def __init__(self, cfg: ConvNeXtConfig, device=None) -> None:
        super().__init__()
        self.cfg = cfg
        dims, eps = cfg.dims, cfg.layer_norm_eps
        self.embed_dim = self.num_features = dims[-1]
        self.embed_dims = dims
        self.patch_size = cfg.patch_size
        self.n_storage_tokens = 0
        self.n_blocks = 4  # stages play the role of blocks for get_intermediate_layers
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, dims[0], 4, 4, device=device), LayerNorm2d(dims[0], eps=eps, device=device))]
            + [
                nn.Sequential(
                    LayerNorm2d(dims[i], eps=eps, device=device), nn.Conv2d(dims[i], dims[i + 1], 2, 2, device=device)
                )
                for i in range(3)
            ]
        )
        self.stages = nn.ModuleList(
            nn.Sequential(*[ConvNeXtBlock(dims[i], eps, cfg.layerscale_init, device) for _ in range(cfg.depths[i])])
            for i in range(4)
        )
        self.norm = LayerNorm(dims[-1], eps=eps, device=device)
        # The release keeps per-stage norms with the final one shared as norms.3 (duplicate keys).
        self.norms = nn.ModuleList([nn.Identity(), nn.Identity(), nn.Identity(), self.norm])
        if device is None or torch.device(device).type != "meta":
            self.init_weights()

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()
            elif isinstance(m, ConvNeXtBlock):
                nn.init.constant_(m.gamma, self.cfg.layerscale_init)

    def set_attn_impl(self, impl: str) -> ConvNeXt:
        return self  # no attention: every implementation is the same network

    def _stem_to(self, x: torch.Tensor, take: Sequence[int] = ()) -> list[torch.Tensor]:
        outs = []
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
            if i in take:
                outs.append(x)
        return outs + [x]

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self._stem_to(x)[-1]
        pool = x.mean(dim=(-2, -1))
        tokens = x.flatten(2).transpose(1, 2)
        x_norm = self.norm(torch.cat([pool.unsqueeze(1), tokens], dim=1))
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_storage_tokens": x_norm[:, 1:1],
            "x_norm_patchtokens": x_norm[:, 1:],
            "x_prenorm": tokens,
        }

    def _intermediate(self, x: torch.Tensor, take: list[int], *, reshape: bool, norm: bool):
        """Official ConvNeXt semantics (the release's hub models, built without a patch size): the
        raw stage maps, strides 4/8/16/32; `norm` applies the stage's norm (identity except the
        last); the class token is the stage's global average; there are no extra tokens."""
        maps = self._stem_to(x, take)[:-1]
        pools = [m.mean(dim=(-2, -1)) for m in maps]
        cls_tokens, outputs = pools, []
        if norm:
            norms = [self.norms[i] for i in take]
            cls_tokens = [nm(p) for nm, p in zip(norms, pools)]
            for nm, m in zip(norms, maps):
                t = nm(m.flatten(2).transpose(1, 2))
                outputs.append(t.transpose(1, 2).reshape(m.shape).contiguous() if reshape else t)
        else:
            outputs = maps if reshape else [m.flatten(2).transpose(1, 2) for m in maps]
        extra = [o.new_zeros(o.shape[0], 0, o.shape[1] if reshape else o.shape[-1]) for o in outputs]
        return outputs, cls_tokens, extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)["x_norm_clstoken"]
