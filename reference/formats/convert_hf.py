"""Hugging Face `transformers` layouts <-> the official DINOv3 layout.

`DINOv3ViTModel` (facebook/dinov3-vit*):
  embeddings.{cls_token, mask_token [1,1,D], register_tokens, patch_embeddings.*}
  layer.N.{norm1, attention.{q,k,v,o}_proj (k without bias), layer_scale1.lambda1, norm2,
           mlp.{up,down}_proj | mlp.{gate,up,down}_proj, layer_scale2.lambda1}, norm
  RoPE frequencies are a non-persistent `rope_embeddings.inv_freq` (recomputed in fp32).
`DINOv3ConvNextModel` (facebook/dinov3-convnext-*):
  stages.S.downsample_layers.{0,1}.*, stages.S.layers.B.{depthwise_conv, layer_norm,
  pointwise_conv1, pointwise_conv2, gamma}, layer_norm (official: norm and its duplicate norms.3).

Hub files use the keys above; transformers >= 5 keeps the encoder under `model.` in memory
(`model.layer.N`, `model.stages.S`) and wrappers may prefix everything with `model.`: all of
these are accepted. `official_to_hf` writes the hub layout, which every transformers version loads.
Keys this module does not know pass through unchanged, so a strict load names them.
"""

from __future__ import annotations

import re

import torch

from dinov3_deploy.errors import CheckpointError

from ..configs import BackboneConfig, ConvNeXtConfig, ViTConfig

StateDict = dict[str, torch.Tensor]

# official block-local name <- HF block-local name (ViT)
_VIT_BLOCK = {
    "norm1.": "norm1.",
    "norm2.": "norm2.",
    "attn.proj.": "attention.o_proj.",
    "ls1.gamma": "layer_scale1.lambda1",
    "ls2.gamma": "layer_scale2.lambda1",
}
_VIT_MLP = {"mlp.fc1.": "mlp.up_proj.", "mlp.fc2.": "mlp.down_proj."}
_VIT_SWIGLU = {"mlp.w1.": "mlp.gate_proj.", "mlp.w2.": "mlp.up_proj.", "mlp.w3.": "mlp.down_proj."}
_VIT_TOP = {
    "cls_token": "embeddings.cls_token",
    "storage_tokens": "embeddings.register_tokens",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.bias",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
}
_CNX_BLOCK = {
    "dwconv.": "depthwise_conv.",
    "norm.": "layer_norm.",
    "pwconv1.": "pointwise_conv1.",
    "pwconv2.": "pointwise_conv2.",
    "gamma": "gamma",
}


def rope_periods(cfg: ViTConfig, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The periods buffer as the official code computes it at init (fp32, not rounded)."""
    q = cfg.head_dim // 4
    return (cfg.rope_base ** (2 * torch.arange(q, dtype=torch.float32) / (cfg.head_dim // 2))).to(dtype)


def strip_hf_prefixes(sd: StateDict) -> StateDict:
    """Hub layout keys: drop every leading `model.` (wrapper prefix and the v5 encoder name)."""
    out = {}
    for k, v in sd.items():
        while k.startswith("model."):
            k = k[len("model."):]
        out[k] = v
    return out


# -- HF -> official --------------------------------------------------------------------------
def hf_to_official(sd: StateDict, cfg: BackboneConfig) -> StateDict:
    sd = strip_hf_prefixes(sd)
    return _vit_to_official(sd, cfg) if isinstance(cfg, ViTConfig) else _convnext_to_official(sd, cfg)


def _vit_to_official(sd: StateDict, cfg: ViTConfig) -> StateDict:
    src = dict(sd)
    out: StateDict = {}
    for off, hf in _VIT_TOP.items():
        if hf in src:
            out[off] = src.pop(hf)
    if "embeddings.mask_token" in src:
        out["mask_token"] = src.pop("embeddings.mask_token").reshape(1, -1)
    # RoPE: HF keeps only non-persistent inverse frequencies; the official buffer is recomputed.
    for k in [k for k in src if k.startswith("rope_embeddings.")]:
        src.pop(k)
    out["rope_embed.periods"] = rope_periods(cfg)

    ffn = _VIT_SWIGLU if cfg.ffn_layer == "swiglu" else _VIT_MLP
    block_map = {**_VIT_BLOCK, **ffn}
    depth = _num_indexed(src, r"layer\.(\d+)\.")
    for n in range(depth):
        pre = f"layer.{n}."
        for off, hf in block_map.items():
            for k in [k for k in src if k.startswith(pre + hf)]:
                out[f"blocks.{n}." + off + k[len(pre + hf):]] = src.pop(k)
        _qkv_to_official(src, out, pre + "attention.", f"blocks.{n}.attn.qkv.", cfg)
    if cfg.local_cls_norm and "local_cls_norm.weight" not in src:
        # Training-only norm (7B, SAT); HF drops it. Identity init keeps strict loading possible.
        D = cfg.embed_dim
        out["local_cls_norm.weight"], out["local_cls_norm.bias"] = torch.ones(D), torch.zeros(D)
    out.update(src)  # leftovers: unknown keys, reported by the strict load
    return out


def _qkv_to_official(src: StateDict, out: StateDict, hf: str, off: str, cfg: ViTConfig) -> None:
    names = [f"{hf}{p}_proj.weight" for p in "qkv"]
    if not all(n in src for n in names):
        return
    out[off + "weight"] = torch.cat([src.pop(n) for n in names], dim=0)
    biases = {p: src.pop(f"{hf}{p}_proj.bias", None) for p in "qkv"}
    if not cfg.qkv_bias:
        for p, b in biases.items():
            if b is not None:  # let the strict load name it
                out[f"{hf}{p}_proj.bias"] = b
        return
    ref = out[off + "weight"]
    D = ref.shape[1]
    parts = [biases[p] if biases[p] is not None else torch.zeros(D, dtype=ref.dtype) for p in "qkv"]
    out[off + "bias"] = torch.cat(parts)
    if cfg.mask_k_bias:
        # The official mask (q 1, k 0, v 1); a checkpoint that does have a K bias keeps it unmasked.
        k_on = 1.0 if biases["k"] is not None else 0.0
        out[off + "bias_mask"] = torch.cat([torch.ones(D), torch.full((D,), k_on), torch.ones(D)]).to(ref.dtype)


def _convnext_to_official(sd: StateDict, cfg: ConvNeXtConfig) -> StateDict:
    out: StateDict = {}
    for k, v in sd.items():
        m = re.match(r"stages\.(\d+)\.downsample_layers\.(\d+)\.(.*)", k)
        if m:
            out[f"downsample_layers.{m[1]}.{m[2]}.{m[3]}"] = v
            continue
        m = re.match(r"stages\.(\d+)\.layers\.(\d+)\.(.*)", k)
        if m:
            rest = m[3]
            for off, hf in _CNX_BLOCK.items():
                if rest.startswith(hf):
                    rest = off + rest[len(hf):]
                    break
            out[f"stages.{m[1]}.{m[2]}.{rest}"] = v
            continue
        m = re.match(r"layer_norm\.(weight|bias)$", k)
        if m:
            out[f"norm.{m[1]}"] = v
            out[f"norms.3.{m[1]}"] = v
            continue
        out[k] = v
    return out


# -- official -> HF --------------------------------------------------------------------------
def official_to_hf(sd: StateDict, cfg: BackboneConfig) -> StateDict:
    """Hub layout. Drops what HF cannot hold: `rope_embed.periods` (HF recomputes it in fp32, so
    bf16-rounded periods of a Meta checkpoint are lost), `bias_mask` (applied to the biases),
    the training-only `local_cls_norm`."""
    return _vit_to_hf(sd, cfg) if isinstance(cfg, ViTConfig) else _convnext_to_hf(sd, cfg)


def _vit_to_hf(sd: StateDict, cfg: ViTConfig) -> StateDict:
    src = dict(sd)
    out: StateDict = {}
    for off, hf in _VIT_TOP.items():
        if off in src:
            out[hf] = src.pop(off)
    if "mask_token" in src:
        out["embeddings.mask_token"] = src.pop("mask_token").reshape(1, 1, -1)
    for k in ("rope_embed.periods", "local_cls_norm.weight", "local_cls_norm.bias"):
        src.pop(k, None)
    ffn = _VIT_SWIGLU if cfg.ffn_layer == "swiglu" else _VIT_MLP
    block_map = {**_VIT_BLOCK, **ffn}
    for n in range(_num_indexed(src, r"blocks\.(\d+)\.")):
        pre = f"blocks.{n}."
        for off, hf in block_map.items():
            for k in [k for k in src if k.startswith(pre + off)]:
                out[f"layer.{n}." + hf + k[len(pre + off):]] = src.pop(k)
        _qkv_to_hf(src, out, pre + "attn.qkv.", f"layer.{n}.attention.")
    unknown = sorted(src)
    if unknown:
        raise CheckpointError(f"no Hugging Face name for: {', '.join(unknown[:8])}; is --model right?")
    return out


def _qkv_to_hf(src: StateDict, out: StateDict, off: str, hf: str) -> None:
    if off + "weight" not in src:
        return
    for p, w in zip("qkv", src.pop(off + "weight").chunk(3, dim=0)):
        out[f"{hf}{p}_proj.weight"] = w.clone()
    if off + "bias" not in src:
        return
    bias = src.pop(off + "bias")
    mask = src.pop(off + "bias_mask", None)
    eff = bias if mask is None else bias * mask.to(bias.dtype)
    q, k, v = eff.chunk(3)
    if torch.count_nonzero(k):
        raise CheckpointError(
            f"{off}bias has a non-zero key bias (after bias_mask); Hugging Face DINOv3 has no k_proj bias"
        )
    out[f"{hf}q_proj.bias"], out[f"{hf}v_proj.bias"] = q.clone(), v.clone()


def _convnext_to_hf(sd: StateDict, cfg: ConvNeXtConfig) -> StateDict:
    out: StateDict = {}
    for k, v in sd.items():
        m = re.match(r"downsample_layers\.(\d+)\.(\d+)\.(.*)", k)
        if m:
            out[f"stages.{m[1]}.downsample_layers.{m[2]}.{m[3]}"] = v
            continue
        m = re.match(r"stages\.(\d+)\.(\d+)\.(.*)", k)
        if m:
            rest = m[3]
            for off, hf in _CNX_BLOCK.items():
                if rest.startswith(off):
                    rest = hf + rest[len(off):]
                    break
            out[f"stages.{m[1]}.layers.{m[2]}.{rest}"] = v
            continue
        m = re.match(r"norm\.(weight|bias)$", k)
        if m:
            out[f"layer_norm.{m[1]}"] = v
            continue
        m = re.match(r"norms\.3\.(weight|bias)$", k)
        if m:
            other = sd.get(f"norm.{m[1]}")
            if other is not None and not torch.equal(other, v):
                raise CheckpointError(f"{k} differs from norm.{m[1]}; the official model shares them")
            continue
        raise CheckpointError(f"no Hugging Face name for '{k}'; is --model right?")
    return out


# -- config.json -----------------------------------------------------------------------------
def hf_config(cfg: BackboneConfig) -> dict:
    """A minimal `config.json` from which transformers builds the matching model."""
    if isinstance(cfg, ConvNeXtConfig):
        return {
            "architectures": ["DINOv3ConvNextModel"],
            "model_type": "dinov3_convnext",
            "hidden_sizes": list(cfg.dims),
            "depths": list(cfg.depths),
            "hidden_act": "gelu",
            "layer_norm_eps": cfg.layer_norm_eps,
            "layer_scale_init_value": cfg.layerscale_init,
            "num_channels": 3,
        }
    return {
        "architectures": ["DINOv3ViTModel"],
        "model_type": "dinov3_vit",
        "hidden_size": cfg.embed_dim,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.num_heads,
        "hidden_act": "silu" if cfg.ffn_layer == "swiglu" else "gelu",
        "use_gated_mlp": cfg.ffn_layer == "swiglu",
        "layer_norm_eps": cfg.layer_norm_eps,
        "layerscale_value": cfg.layerscale_init,
        "rope_theta": cfg.rope_base,
        "patch_size": cfg.patch_size,
        "num_register_tokens": cfg.n_storage_tokens,
        "query_bias": cfg.qkv_bias,
        "key_bias": False,
        "value_bias": cfg.qkv_bias,
        "proj_bias": True,
        "mlp_bias": True,
        "pos_embed_rescale": cfg.rope_rescale_coords,
        "num_channels": 3,
        "image_size": 224,
    }


def _num_indexed(sd: StateDict, pattern: str) -> int:
    rx = re.compile(pattern)
    idx = [int(m[1]) for k in sd if (m := rx.match(k))]
    return max(idx) + 1 if idx else 0
