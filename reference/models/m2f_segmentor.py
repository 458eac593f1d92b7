"""The release's Mask2Former segmentor (`dinov3_vit7b16_ms`): ViT + adapter + Mask2Former head, and
its semantic inference.

    segmentation_model[0]: ViTAdapter (backbone inside)   images -> {"1".."4"} pyramid
    segmentation_model[1]: Mask2FormerHead                 pyramid -> class / mask logits

The nesting reproduces the release's state-dict keys (`segmentation_model.0.backbone.*`,
`segmentation_model.0.*`, `segmentation_model.1.pixel_decoder.*`, `segmentation_model.1.predictor.*`),
so Meta's head file and whole-segmentor state dicts load strictly, unchanged.

Semantic scores (the release's order): mask logits upsampled bilinearly to the input size first,
then sigmoid, then `einsum("bqc,bqhw->bchw", softmax(class logits)[..., :-1], masks)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dinov3_deploy.errors import InputShapeError

from .m2f_pixel_decoder import MSDeformAttnPixelDecoder
from .m2f_transformer_decoder import Attention, MultiScaleMaskedTransformerDecoder
from .ms_deform_attn import DEFORM_IMPLS, MSDeformAttn, ring_offsets
from .vit_adapter import ViTAdapter

INPUT_MULTIPLE = 32  # the adapter's stride-32 level must tile the image exactly
N_QUERIES = 100
FFN_DIM = 4096  # the release's FFN width in the pixel decoder's encoder and the transformer decoder


def four_even_layers(n_blocks: int) -> list[int]:
    """The release's FOUR_EVEN_INTERVALS: [4, 11, 17, 23] for 24 blocks (the paper's choice),
    else i * (n_blocks // 4) - 1 for i = 1..4."""
    if n_blocks == 24:
        return [4, 11, 17, 23]
    return [i * (n_blocks // 4) - 1 for i in range(1, 5)]


class Mask2FormerHead(nn.Module):
    def __init__(self, in_dim: int, hidden: int, num_classes: int, ffn: int = FFN_DIM) -> None:
        super().__init__()
        self.pixel_decoder = MSDeformAttnPixelDecoder(in_dim, hidden, ffn=ffn)
        self.predictor = MultiScaleMaskedTransformerDecoder(hidden, num_classes, n_queries=N_QUERIES, ffn=ffn)

    def forward(self, features: dict[str, torch.Tensor], *, aux: bool = False) -> dict:
        mask_features, levels = self.pixel_decoder(features)
        return self.predictor(levels, mask_features, aux=aux)


def semantic_scores(pred_logits: torch.Tensor, pred_masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, C, H, W] per-class scores at `size` from class logits [B, Q, C+1] and mask logits [B, Q, h, w]."""
    masks = F.interpolate(pred_masks, size=size, mode="bilinear", align_corners=False).sigmoid()
    probs = pred_logits.float().softmax(-1)[..., :-1].to(masks.dtype)
    return torch.einsum("bqc,bqhw->bchw", probs, masks)


class M2FSegmentor(nn.Module):
    """forward(images [B,3,H,W]) -> {"pred_logits": [B, Q, C+1], "pred_masks": [B, Q, H/4, W/4]};
    predict(images) -> [B, C, H, W] semantic scores. H and W must be multiples of 32."""

    def __init__(self, backbone: nn.Module, layers: list[int] | None = None, *, hidden_dim: int = 2048,
                 num_classes: int = 150, ffn_dim: int = FFN_DIM) -> None:
        super().__init__()
        if getattr(getattr(backbone, "cfg", None), "family", "vit") != "vit":
            from dinov3_deploy.errors import DeployError

            raise DeployError(f"the Mask2Former segmentor needs a ViT backbone; '{backbone.cfg.name}' is a ConvNeXt "
                              "(the release's adapter reads ViT patch tokens only)")
        if hidden_dim % 32:
            raise ValueError(f"hidden_dim must be a multiple of 32 (GroupNorm groups), got {hidden_dim}")
        layers = four_even_layers(backbone.n_blocks) if layers is None else [int(i) for i in layers]
        if len(layers) != 4 or not all(0 <= i < backbone.n_blocks for i in layers):
            raise ValueError(f"layers must be four block indices of 0..{backbone.n_blocks - 1}, got {layers}")
        self.hidden_dim, self.num_classes, self.layers = hidden_dim, num_classes, layers
        self.segmentation_model = nn.ModuleList([
            ViTAdapter(backbone, layers),
            Mask2FormerHead(backbone.embed_dim, hidden_dim, num_classes, ffn_dim),
        ])

    @property
    def backbone(self) -> nn.Module:
        return self.segmentation_model[0].backbone

    def set_deform_impl(self, impl: str) -> M2FSegmentor:
        if impl not in DEFORM_IMPLS:
            raise ValueError(f"deform_impl must be one of {DEFORM_IMPLS}, got '{impl}'")
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.impl = impl
        return self

    def check_input(self, images: torch.Tensor) -> None:
        H, W = images.shape[-2:]
        if images.dim() != 4 or H % INPUT_MULTIPLE or W % INPUT_MULTIPLE:
            raise InputShapeError(f"the Mask2Former segmentor takes [B, 3, H, W] with H and W multiples of "
                                  f"{INPUT_MULTIPLE}; got {tuple(images.shape)} (resize or crop the input)")

    def forward(self, images: torch.Tensor, *, aux: bool = False) -> dict:
        self.check_input(images)
        return self.segmentation_model[1](self.segmentation_model[0](images), aux=aux)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        out = self(images)
        return semantic_scores(out["pred_logits"], out["pred_masks"], tuple(images.shape[-2:]))

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor but the backbone's, under the release's keys (what its head file holds)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(BACKBONE_PREFIX)}


BACKBONE_PREFIX = "segmentation_model.0.backbone."


@torch.no_grad()
def release_like_head_(segmentor: M2FSegmentor) -> M2FSegmentor:
    """Random head weights of trained-like scale (models/random_init.py's policy) on every part but the
    backbone: unit-signal linears and attention projections, non-trivial norm affines and BatchNorm
    statistics, level embeddings of unit scale, and sampling offsets around Deformable DETR's ring so
    deformable attention samples a few pixels around each reference point (not all at one place)."""
    from .random_init import release_like_

    adapter, head = segmentor.segmentation_model
    for name, child in adapter.named_children():
        if name != "backbone":
            release_like_(child)
    release_like_(head)
    for m in segmentor.modules():
        if isinstance(m, MSDeformAttn):
            m.sampling_offsets.weight.normal_(0.0, 0.5 / m.d_model**0.5)
            m.sampling_offsets.bias.copy_(ring_offsets(m.n_heads, m.n_levels, m.n_points))
        elif isinstance(m, Attention):
            m.in_proj_weight.normal_(0.0, 1.0 / m.in_proj_weight.shape[1] ** 0.5)
            m.in_proj_bias.normal_(0.0, 0.02)
        elif isinstance(m, nn.GroupNorm):
            m.weight.uniform_(0.6, 1.4)
            m.bias.normal_(0.0, 0.05)
    adapter.level_embed.normal_()
    head.pixel_decoder.encoder.level_encoding.normal_()
    return segmentor
