"""DINOv3 Vision Transformer (patch 16, 4 storage tokens, axial RoPE, LayerScale)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..configs import ViTConfig
from .intermediate import IntermediateLayers
from .layers import LayerNorm, LayerScale, PatchEmbed, RopePositionEmbedding, SelfAttentionBlock
from .layers.attention import ATTN_IMPLS, LinearKMaskedBias


class DinoVisionTransformer(IntermediateLayers, nn.Module):
    def __init__(self, cfg: ViTConfig, device=None) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        self.embed_dim = self.num_features = D
        self.patch_size = cfg.patch_size
        self.n_blocks = cfg.depth
        self.num_heads = cfg.num_heads
        self.n_storage_tokens = cfg.n_storage_tokens

        self.patch_embed = PatchEmbed(cfg.patch_size, 3, D, device=device)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D, device=device))
        self.storage_tokens = nn.Parameter(torch.zeros(1, cfg.n_storage_tokens, D, device=device))
        self.mask_token = nn.Parameter(torch.zeros(1, D, device=device))
        self.rope_embed = RopePositionEmbedding(
            cfg.head_dim, base=cfg.rope_base, rescale_coords=cfg.rope_rescale_coords, device=device
        )
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(
                D, cfg.num_heads, cfg.ffn_hidden, cfg.ffn_layer, cfg.qkv_bias, cfg.mask_k_bias,
                cfg.layer_norm_eps, cfg.layerscale_init, device=device,
            )
            for _ in range(cfg.depth)
        )
        self.norm = LayerNorm(D, eps=cfg.layer_norm_eps, device=device)
        # Training-only norm of the 7B and satellite checkpoints; kept so they load strictly.
        self.local_cls_norm = LayerNorm(D, eps=cfg.layer_norm_eps, device=device) if cfg.local_cls_norm else None
        if device is None or torch.device(device).type != "meta":
            self.init_weights()

    # -- initialisation ---------------------------------------------------------------------
    def init_weights(self) -> None:
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.storage_tokens, std=0.02)
        nn.init.zeros_(self.mask_token)
        self.rope_embed._init_weights()
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            if isinstance(m, LinearKMaskedBias):
                o = m.out_features
                m.bias_mask.fill_(1)
                m.bias_mask[o // 3 : 2 * o // 3] = 0
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()
            elif isinstance(m, LayerScale):
                m.reset_parameters()

    def set_attn_impl(self, impl: str) -> DinoVisionTransformer:
        if impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got '{impl}'")
        for blk in self.blocks:
            blk.attn.impl = impl
        return self

    # -- forward ----------------------------------------------------------------------------
    def prepare_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.patch_embed(x)
        B, H, W, _ = x.shape
        # The tokens' dtype: a no-op normally; a deployment graph that holds the residual stream in fp32
        # keeps these token parameters fp32 while the patch embedding runs in fp16/bf16.
        x = x.flatten(1, 2).to(self.cls_token.dtype)
        # `+ 0 * mask_token` keeps the official graph (and gradient flow) identical.
        cls = self.cls_token + 0 * self.mask_token
        x = torch.cat([cls.expand(B, -1, -1), self.storage_tokens.expand(B, -1, -1), x], dim=1)
        return x, (H, W)

    def _run_blocks(self, x: torch.Tensor, hw: tuple[int, int], take: Sequence[int] = ()) -> list[torch.Tensor]:
        # The release calls rope_embed inside the block loop: in train mode every block draws its own
        # coordinate rescale. Without augmentation all blocks share one table, computed once.
        per_block = self.rope_embed.training and self.rope_embed.rescale_coords is not None
        rope = None if per_block else self.rope_embed(*hw)
        outs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x, self.rope_embed(*hw) if per_block else rope)
            if i in take:
                outs.append(x)
        return outs + [x]

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens, hw = self.prepare_tokens(x)
        x_prenorm = self._run_blocks(tokens, hw)[-1]
        x_norm = self.norm(x_prenorm)
        p = self.n_storage_tokens + 1
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_storage_tokens": x_norm[:, 1:p],
            "x_norm_patchtokens": x_norm[:, p:],
            "x_prenorm": x_prenorm,
        }

    def _intermediate(self, x: torch.Tensor, take: list[int], *, reshape: bool, norm: bool):
        """Block outputs split into patch tokens (or [B, D, H/16, W/16] maps), class and storage tokens."""
        tokens, (H, W) = self.prepare_tokens(x)
        outputs = self._run_blocks(tokens, (H, W), take)[:-1]
        if norm:
            outputs = [self.norm(o) for o in outputs]
        p = self.n_storage_tokens + 1
        cls_tokens = [o[:, 0] for o in outputs]
        extra = [o[:, 1:p] for o in outputs]
        outputs = [o[:, p:] for o in outputs]
        if reshape:
            B = x.shape[0]
            outputs = [o.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous() for o in outputs]
        return outputs, cls_tokens, extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)["x_norm_clstoken"]
