"""The one registry of backbone configurations, named as in the official release."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ViTConfig:
    name: str
    embed_dim: int
    depth: int
    num_heads: int
    ffn_layer: str = "mlp"  # "mlp" | "swiglu"
    ffn_ratio: float = 4.0
    ffn_align: int = 8  # SwiGLU hidden size is rounded up to this multiple
    qkv_bias: bool = True
    mask_k_bias: bool = True
    patch_size: int = 16
    n_storage_tokens: int = 4
    layer_norm_eps: float = 1e-5
    layerscale_init: float = 1e-5
    rope_base: float = 100.0
    rope_rescale_coords: float | None = 2.0  # train-mode augmentation only
    local_cls_norm: bool = False  # training-only norm present in 7B / SAT checkpoints
    family: str = field(default="vit", init=False)

    @property
    def input_multiple(self) -> int:
        return self.patch_size

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def ffn_hidden(self) -> int:
        hidden = int(self.embed_dim * self.ffn_ratio)
        if self.ffn_layer == "swiglu":
            hidden = int(hidden * 2 / 3)
            hidden = (hidden + self.ffn_align - 1) // self.ffn_align * self.ffn_align
        return hidden


@dataclass(frozen=True)
class ConvNeXtConfig:
    name: str
    depths: tuple[int, int, int, int]
    dims: tuple[int, int, int, int]
    layer_norm_eps: float = 1e-6
    layerscale_init: float = 1e-6
    # Stride of the tokens forward_features returns (the last stage's). get_intermediate_layers
    # returns each stage's own map (stride 4..32), as the release's hub models do.
    patch_size: int = 32
    n_storage_tokens: int = 0
    family: str = field(default="convnext", init=False)

    @property
    def embed_dim(self) -> int:
        return self.dims[-1]

    @property
    def input_multiple(self) -> int:
        return 32  # total stride of the last stage: keeps every stage's map integral


BackboneConfig = ViTConfig | ConvNeXtConfig

_REGISTRY: dict[str, BackboneConfig] = {
    c.name: c
    for c in [
        ViTConfig("vits16", 384, 12, 6),
        ViTConfig("vits16plus", 384, 12, 6, ffn_layer="swiglu", ffn_ratio=6),
        ViTConfig("vitb16", 768, 12, 12),
        ViTConfig("vitl16", 1024, 24, 16),
        ViTConfig("vitl16plus", 1024, 24, 16, ffn_layer="swiglu", ffn_ratio=6),
        ViTConfig("vith16plus", 1280, 32, 20, ffn_layer="swiglu", ffn_ratio=6),
        ViTConfig(
            "vit7b16", 4096, 40, 32, ffn_layer="swiglu", ffn_ratio=3, ffn_align=64,
            qkv_bias=False, mask_k_bias=False, local_cls_norm=True,
        ),
        ConvNeXtConfig("convnext_tiny", (3, 3, 9, 3), (96, 192, 384, 768)),
        ConvNeXtConfig("convnext_small", (3, 3, 27, 3), (96, 192, 384, 768)),
        ConvNeXtConfig("convnext_base", (3, 3, 27, 3), (128, 256, 512, 1024)),
        ConvNeXtConfig("convnext_large", (3, 3, 27, 3), (192, 384, 768, 1536)),
    ]
}

# Tiny configurations for tests and CPU demos: same code paths, seconds instead of minutes.
_TINY: dict[str, BackboneConfig] = {
    c.name: c
    for c in [
        ViTConfig("vit_tiny_test", 64, 4, 2),
        ViTConfig("vit_tiny_swiglu_test", 64, 4, 2, ffn_layer="swiglu", ffn_ratio=6),
        ConvNeXtConfig("convnext_tiny_test", (1, 1, 2, 1), (16, 32, 48, 64)),
    ]
}


def list_backbones(include_test: bool = False) -> list[str]:
    """Names of the released backbones (and the tiny test configs when asked)."""
    names = list(_REGISTRY)
    return names + list(_TINY) if include_test else names


def get_config(name: str) -> BackboneConfig:
    cfg = _REGISTRY.get(name) or _TINY.get(name)
    if cfg is None:
        from dinov3_deploy.errors import DeployError

        raise DeployError(f"unknown backbone '{name}'. Known: {', '.join(list_backbones(include_test=True))}")
    return cfg


# Pre-processing of the released weights: RGB input; the web-image weights (LVD-1689M) use ImageNet
# statistics, the satellite weights (SAT-493M) statistics of their own training set.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "lvd1689m": (IMAGENET_MEAN, IMAGENET_STD),
    "sat493m": ((0.430, 0.411, 0.296), (0.213, 0.156, 0.143)),
}


def normalization_for_weights(path) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Mean/std for a checkpoint, from the release's file naming (`..._pretrain_sat493m-<hash>.pth`);
    ImageNet statistics for everything else."""
    from pathlib import Path

    name = Path(str(path)).name.lower() if path is not None else ""
    return NORMALIZATION["sat493m" if "sat493m" in name else "lvd1689m"]


@dataclass(frozen=True)
class SegmentorConfig:
    """A Mask2Former segmentor configuration (ViT-Adapter + Mask2Former head on a registry ViT)."""

    backbone: str
    hidden_dim: int = 2048
    num_classes: int = 150
    weights: str = ""  # the release's head file, where there is one

    @property
    def name(self) -> str:
        return f"{self.backbone}_m2f{'' if self.hidden_dim == 2048 else self.hidden_dim}"


# The release ships ADE20K head weights for vit7b16; its code builds the same head on any ViT (vitl16 is
# the paper's other size). The hidden-256 vits16 is the small configuration for tests and CPU demos.
SEGMENTORS: tuple[SegmentorConfig, ...] = (
    SegmentorConfig("vit7b16", weights="dinov3_vit7b16_ade20k_m2f_head-<hash>.pth"),
    SegmentorConfig("vitl16"),
)
SEGMENTORS_TEST: tuple[SegmentorConfig, ...] = (SegmentorConfig("vits16", hidden_dim=256),)
