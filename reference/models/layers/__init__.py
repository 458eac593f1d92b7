"""Building blocks of the DINOv3 ViT, one per file, named as in the official release."""

from .attention import SelfAttention
from .block import SelfAttentionBlock
from .ffn import Mlp, SwiGLUFFN
from .layer_scale import LayerScale
from .norm import GroupNorm, LayerNorm, LayerNorm2d
from .patch_embed import PatchEmbed
from .rope import RopePositionEmbedding, rope_apply

__all__ = [
    "GroupNorm",
    "LayerNorm",
    "LayerNorm2d",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "RopePositionEmbedding",
    "SelfAttention",
    "SelfAttentionBlock",
    "SwiGLUFFN",
    "rope_apply",
]
