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
The layout is one table of rules, `HF`; both directions are derived from it (`key_map`).
On the way in, keys the table does not know pass through unchanged, so a strict load names them.
"""

from __future__ import annotations

import torch

from ..configs import BackboneConfig, ConvNeXtConfig
from .key_map import LOCAL_CLS_NORM, PERIODS, Discard, Fuse, KeyMap, QkvBias, Rename, mlp, renames, rope_periods, swiglu

__all__ = ["HF", "hf_config", "hf_to_official", "official_to_hf", "rope_periods", "strip_hf_prefixes"]

StateDict = dict[str, torch.Tensor]

# official <-> hub layout; the first rule that claims a key wins.
_BLOCK = ("blocks.{i}.", "layer.{i}.")
HF = KeyMap("Hugging Face", {
    "vit": (
        *renames({"cls_token": "embeddings.cls_token", "storage_tokens": "embeddings.register_tokens",
                  "patch_embed.proj.*": "embeddings.patch_embeddings.*", "norm.*": "norm.*"}),
        Rename("mask_token", "embeddings.mask_token", shapes=((1, -1), (1, 1, -1))),
        Discard("rope_embeddings.*"),  # HF keeps only non-persistent inverse frequencies
        PERIODS, LOCAL_CLS_NORM,
        *renames({"norm1.*": "norm1.*", "norm2.*": "norm2.*", "attn.proj.*": "attention.o_proj.*",
                  "ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1"}, within=_BLOCK),
        Fuse("blocks.{i}.attn.qkv.weight", tuple(f"layer.{{i}}.attention.{p}_proj.weight" for p in "qkv")),
        QkvBias("blocks.{i}.attn.qkv", q="layer.{i}.attention.q_proj.bias", v="layer.{i}.attention.v_proj.bias",
                k="layer.{i}.attention.k_proj.bias", refuse="Hugging Face DINOv3 has no k_proj bias"),
        *renames({"mlp.fc1.*": "mlp.up_proj.*", "mlp.fc2.*": "mlp.down_proj.*"}, within=_BLOCK, when=mlp),
        *renames({"mlp.w1.*": "mlp.gate_proj.*", "mlp.w2.*": "mlp.up_proj.*", "mlp.w3.*": "mlp.down_proj.*"},
                 within=_BLOCK, when=swiglu),
    ),
    "convnext": (
        Rename("downsample_layers.{s}.{j}.*", "stages.{s}.downsample_layers.{j}.*"),
        *renames({"dwconv.*": "depthwise_conv.*", "norm.*": "layer_norm.*", "pwconv1.*": "pointwise_conv1.*",
                  "pwconv2.*": "pointwise_conv2.*", "gamma": "gamma"},
                 within=("stages.{s}.{b}.", "stages.{s}.layers.{b}.")),
        # The official model registers its final norm under two names (norm, norms.3).
        Rename("norm.*", "layer_norm.*", also=("norms.3.*",)),
    ),
})


def strip_hf_prefixes(sd: StateDict) -> StateDict:
    """Hub layout keys: drop every leading `model.` (wrapper prefix and the v5 encoder name)."""
    out = {}
    for k, v in sd.items():
        while k.startswith("model."):
            k = k[len("model."):]
        out[k] = v
    return out


def hf_to_official(sd: StateDict, cfg: BackboneConfig) -> StateDict:
    return HF.to_official(strip_hf_prefixes(sd), cfg)


def official_to_hf(sd: StateDict, cfg: BackboneConfig) -> StateDict:
    """Hub layout. Drops what HF cannot hold: `rope_embed.periods` (HF recomputes it in fp32, so
    bf16-rounded periods of a Meta checkpoint are lost), `bias_mask` (applied to the biases),
    the training-only `local_cls_norm`."""
    return HF.from_official(sd, cfg)


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

