"""timm layouts <-> the official DINOv3 layout.

ViT: timm's `Eva` models `vit_*_patch16_dinov3[_qkvb]`:
  cls_token, reg_token, patch_embed.proj.*, blocks.N.{norm1, attn.qkv.weight, attn.q_bias,
  attn.v_bias (only the `_qkvb` variants), attn.proj, gamma_1, norm2, mlp.fc1/fc2 |
  mlp.fc1_g/fc1_x/fc2 (SwiGLU), gamma_2}, norm. No mask_token, no RoPE buffer (timm recomputes
  its periods in fp32), no local_cls_norm, and the K bias is a fixed zero buffer.
ConvNeXt: timm's `convnext_*` (`.dinov3_lvd1689m` weights):
  stem.{0,1}, stages.S.downsample.{0,1} (S >= 1), stages.S.blocks.B.{conv_dw, norm, mlp.fc1,
  mlp.fc2, gamma}, head.norm (applied to the pooled features only).

`official_to_timm` writes q_bias/v_bias whenever the config has a qkv bias, i.e. the `_qkvb`
variants; timm's bias-free variants are the same network with those biases zero.
The layout is one table of rules, `TIMM`; both directions are derived from it (`key_map`).
On the way in, keys the table does not know pass through unchanged, so a strict load names them.
"""

from __future__ import annotations

import torch

from ..configs import BackboneConfig
from .key_map import LOCAL_CLS_NORM, MASK_TOKEN, PERIODS, Discard, KeyMap, QkvBias, Rename, mlp, renames, swiglu

StateDict = dict[str, torch.Tensor]

# official <-> timm; the first rule that claims a key wins. Most ViT names are shared.
_SAME = ("cls_token", "patch_embed.proj.*", "norm.*", "blocks.{i}.norm1.*", "blocks.{i}.norm2.*",
         "blocks.{i}.attn.proj.*", "blocks.{i}.attn.qkv.weight")
_BLOCK = ("blocks.{i}.", "blocks.{i}.")
TIMM = KeyMap("timm", {
    "vit": (
        *renames({k: k for k in _SAME}),
        Rename("storage_tokens", "reg_token"),
        *renames({"ls1.gamma": "gamma_1", "ls2.gamma": "gamma_2"}, within=_BLOCK),
        Discard("rope.*"),  # non-persistent in timm; never a trained value
        PERIODS, MASK_TOKEN, LOCAL_CLS_NORM,
        QkvBias("blocks.{i}.attn.qkv", q="blocks.{i}.attn.q_bias", v="blocks.{i}.attn.v_bias",
                refuse="timm's Eva fixes it at zero"),
        *renames({"mlp.fc1.*": "mlp.fc1.*", "mlp.fc2.*": "mlp.fc2.*"}, within=_BLOCK, when=mlp),
        *renames({"mlp.w1.*": "mlp.fc1_g.*", "mlp.w2.*": "mlp.fc1_x.*", "mlp.w3.*": "mlp.fc2.*"},
                 within=_BLOCK, when=swiglu),
    ),
    "convnext": (
        Rename("downsample_layers.0.{j}.*", "stem.{j}.*"),
        Rename("downsample_layers.{s}.{j}.*", "stages.{s}.downsample.{j}.*"),
        *renames({"dwconv.*": "conv_dw.*", "norm.*": "norm.*", "pwconv1.*": "mlp.fc1.*", "pwconv2.*": "mlp.fc2.*",
                  "gamma": "gamma"}, within=("stages.{s}.{b}.", "stages.{s}.blocks.{b}.")),
        # timm's head.norm norms the pooled features, which is the official final norm (norm, norms.3).
        Rename("norm.*", "head.norm.*", also=("norms.3.*",)),
    ),
})


def timm_to_official(sd: StateDict, cfg: BackboneConfig) -> StateDict:
    return TIMM.to_official(sd, cfg)


def official_to_timm(sd: StateDict, cfg: BackboneConfig) -> StateDict:
    """Drops what timm cannot hold: `rope_embed.periods` (timm recomputes them in fp32),
    `mask_token`, `local_cls_norm`, and `bias_mask` (applied to the biases)."""
    return TIMM.from_official(sd, cfg)
