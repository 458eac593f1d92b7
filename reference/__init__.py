"""The PyTorch reference: DINOv3 backbones, heads, checkpoints. Needs nothing but torch."""

from .configs import ConvNeXtConfig, ViTConfig, get_config, list_backbones
from .factory import build_backbone, count_parameters, create_backbone, create_segmentor

__all__ = [
    "ConvNeXtConfig",
    "ViTConfig",
    "build_backbone",
    "count_parameters",
    "create_backbone",
    "create_segmentor",
    "get_config",
    "list_backbones",
]
