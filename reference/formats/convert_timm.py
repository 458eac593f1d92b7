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
Keys this module does not know pass through unchanged, so a strict load names them.
"""

from __future__ import annotations

import re

import torch

from dinov3_deploy.errors import CheckpointError

from ..configs import BackboneConfig, ConvNeXtConfig, ViTConfig
from .convert_hf import _num_indexed, rope_periods

StateDict = dict[str, torch.Tensor]

_VIT_TOP = {"cls_token": "cls_token", "storage_tokens": "reg_token", "norm.weight": "norm.weight",
            "norm.bias": "norm.bias", "patch_embed.proj.weight": "patch_embed.proj.weight",
            "patch_embed.proj.bias": "patch_embed.proj.bias"}
# official block-local name <- timm block-local name
_VIT_BLOCK = {"norm1.": "norm1.", "norm2.": "norm2.", "attn.proj.": "attn.proj.", "attn.qkv.weight": "attn.qkv.weight",
              "ls1.gamma": "gamma_1", "ls2.gamma": "gamma_2"}
_VIT_MLP = {"mlp.fc1.": "mlp.fc1.", "mlp.fc2.": "mlp.fc2."}
_VIT_SWIGLU = {"mlp.w1.": "mlp.fc1_g.", "mlp.w2.": "mlp.fc1_x.", "mlp.w3.": "mlp.fc2."}
_CNX_BLOCK = {"dwconv.": "conv_dw.", "norm.": "norm.", "pwconv1.": "mlp.fc1.", "pwconv2.": "mlp.fc2.",
              "gamma": "gamma"}


# -- timm -> official ------------------------------------------------------------------------
def timm_to_official(sd: StateDict, cfg: BackboneConfig) -> StateDict:
    return _vit_to_official(sd, cfg) if isinstance(cfg, ViTConfig) else _convnext_to_official(sd, cfg)


def _vit_to_official(sd: StateDict, cfg: ViTConfig) -> StateDict:
    src = dict(sd)
    out: StateDict = {}
    for off, tm in _VIT_TOP.items():
        if tm in src:
            out[off] = src.pop(tm)
    for k in [k for k in src if k.startswith("rope.")]:
        src.pop(k)  # non-persistent in timm; never a trained value
    D = cfg.embed_dim
    dtype = out["cls_token"].dtype if "cls_token" in out else torch.float32
    out["rope_embed.periods"] = rope_periods(cfg)
    out["mask_token"] = torch.zeros(1, D, dtype=dtype)  # pretraining only; multiplied by 0 at inference
    ffn = _VIT_SWIGLU if cfg.ffn_layer == "swiglu" else _VIT_MLP
    block_map = {**_VIT_BLOCK, **ffn}
    for n in range(_num_indexed(src, r"blocks\.(\d+)\.")):
        pre = f"blocks.{n}."
        for off, tm in block_map.items():
            for k in [k for k in src if k.startswith(pre + tm)]:
                out[pre + off + k[len(pre + tm):]] = src.pop(k)
        q, v = src.pop(pre + "attn.q_bias", None), src.pop(pre + "attn.v_bias", None)
        if cfg.qkv_bias:
            # timm's bias-free variants are the official network with zero q/v biases.
            w = out.get(pre + "attn.qkv.weight")
            like = w[:D, 0] if w is not None else torch.zeros(D, dtype=dtype)
            q = torch.zeros_like(like) if q is None else q
            v = torch.zeros_like(like) if v is None else v
            out[pre + "attn.qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
            if cfg.mask_k_bias:
                ones = torch.ones_like(q)
                out[pre + "attn.qkv.bias_mask"] = torch.cat([ones, torch.zeros_like(q), ones])
        elif q is not None or v is not None:
            out.update({pre + "attn.q_bias": q, pre + "attn.v_bias": v})  # reported by the strict load
    if cfg.local_cls_norm and "local_cls_norm.weight" not in src:
        out["local_cls_norm.weight"], out["local_cls_norm.bias"] = torch.ones(D), torch.zeros(D)
    out.update(src)
    return {k: v for k, v in out.items() if v is not None}


def _convnext_to_official(sd: StateDict, cfg: ConvNeXtConfig) -> StateDict:
    out: StateDict = {}
    for k, v in sd.items():
        if m := re.match(r"stem\.([01])\.(.*)", k):
            out[f"downsample_layers.0.{m[1]}.{m[2]}"] = v
        elif m := re.match(r"stages\.(\d+)\.downsample\.([01])\.(.*)", k):
            out[f"downsample_layers.{m[1]}.{m[2]}.{m[3]}"] = v
        elif m := re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.*)", k):
            out[f"stages.{m[1]}.{m[2]}.{_rename(m[3], {t: o for o, t in _CNX_BLOCK.items()})}"] = v
        elif m := re.match(r"head\.norm\.(weight|bias)$", k):
            out[f"norm.{m[1]}"] = v
            out[f"norms.3.{m[1]}"] = v
        else:
            out[k] = v
    return out


# -- official -> timm ------------------------------------------------------------------------
def official_to_timm(sd: StateDict, cfg: BackboneConfig) -> StateDict:
    """Drops what timm cannot hold: `rope_embed.periods` (timm recomputes them in fp32),
    `mask_token`, `local_cls_norm`, and `bias_mask` (applied to the biases)."""
    return _vit_to_timm(sd, cfg) if isinstance(cfg, ViTConfig) else _convnext_to_timm(sd, cfg)


def _vit_to_timm(sd: StateDict, cfg: ViTConfig) -> StateDict:
    src = dict(sd)
    out: StateDict = {}
    for off, tm in _VIT_TOP.items():
        if off in src:
            out[tm] = src.pop(off)
    for k in ("rope_embed.periods", "mask_token", "local_cls_norm.weight", "local_cls_norm.bias"):
        src.pop(k, None)
    ffn = _VIT_SWIGLU if cfg.ffn_layer == "swiglu" else _VIT_MLP
    block_map = {**_VIT_BLOCK, **ffn}
    for n in range(_num_indexed(src, r"blocks\.(\d+)\.")):
        pre = f"blocks.{n}."
        for off, tm in block_map.items():
            for k in [k for k in src if k.startswith(pre + off)]:
                out[pre + tm + k[len(pre + off):]] = src.pop(k)
        bias = src.pop(pre + "attn.qkv.bias", None)
        mask = src.pop(pre + "attn.qkv.bias_mask", None)
        if bias is not None:
            eff = bias if mask is None else bias * mask.to(bias.dtype)
            q, k, v = eff.chunk(3)
            if torch.count_nonzero(k):
                raise CheckpointError(f"{pre}attn.qkv.bias has a non-zero key bias; timm's Eva fixes it at zero")
            out[pre + "attn.q_bias"], out[pre + "attn.v_bias"] = q.clone(), v.clone()
    if src:
        raise CheckpointError(f"no timm name for: {', '.join(sorted(src)[:8])}; is --model right?")
    return out


def _convnext_to_timm(sd: StateDict, cfg: ConvNeXtConfig) -> StateDict:
    out: StateDict = {}
    for k, v in sd.items():
        if m := re.match(r"downsample_layers\.0\.([01])\.(.*)", k):
            out[f"stem.{m[1]}.{m[2]}"] = v
        elif m := re.match(r"downsample_layers\.(\d+)\.([01])\.(.*)", k):
            out[f"stages.{m[1]}.downsample.{m[2]}.{m[3]}"] = v
        elif m := re.match(r"stages\.(\d+)\.(\d+)\.(.*)", k):
            out[f"stages.{m[1]}.blocks.{m[2]}.{_rename(m[3], _CNX_BLOCK)}"] = v
        elif m := re.match(r"norm\.(weight|bias)$", k):
            out[f"head.norm.{m[1]}"] = v
        elif m := re.match(r"norms\.3\.(weight|bias)$", k):
            other = sd.get(f"norm.{m[1]}")
            if other is not None and not torch.equal(other, v):
                raise CheckpointError(f"{k} differs from norm.{m[1]}; the official model shares them")
        else:
            raise CheckpointError(f"no timm name for '{k}'; is --model right?")
    return out


def _rename(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest
