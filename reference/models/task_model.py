"""Backbone + head per task, with the `forward` that export traces and the `predict` that
inference and evaluation use."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import IMAGENET_MEAN, IMAGENET_STD
from .heads import BinsDepthHead, LinearClsHead, LinearSegHead, select_layers

TASKS = ("features", "seg", "depth", "cls")


@dataclass
class HeadSpec:
    """Everything needed to rebuild a head (written beside its weights as JSON)."""

    task: str
    backbone: str
    n_classes: int = 0
    layers: str = "last"  # last | four_last | four_even
    head_type: str = "linear"  # seg/cls: linear; depth: bins (linear) | dpt
    class_names: list[str] = field(default_factory=list)
    palette: list[list[int]] = field(default_factory=list)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 512
    min_depth: float = 0.001
    max_depth: float = 10.0
    n_bins: int = 256
    dpt_features: int = 256  # DPT depth head width

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> HeadSpec:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("mean", "std"):  # JSON gives lists
            if k in known:
                known[k] = tuple(float(v) for v in known[k])
        return cls(**known)


class OneHead:
    """The one-head case of MultiTaskModel's interface (tasks, specs, mean, std), read off `self.spec`,
    so a caller reads a single head (of any family) and a multi-head model the same way."""

    spec: HeadSpec

    @property
    def tasks(self) -> tuple[str, ...]:
        return (self.spec.task,)

    @property
    def specs(self) -> dict[str, HeadSpec]:
        return {self.spec.task: self.spec}

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.spec.mean)

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.spec.std)


class TaskModel(OneHead, nn.Module):
    """forward(x) -> dict of the task's low-resolution outputs (what export traces):
      features: cls [B,D], storage [B,S,D], patch [B,HW,D]
      seg:      logits [B,C,h,w] at patch resolution
      depth:    depth [B,1,h,w] in metres (linear bins head: patch resolution; DPT: 4x the patch grid)
      cls:      logits [B,C]
    """

    def __init__(self, backbone: nn.Module, spec: HeadSpec, head: nn.Module | None = None) -> None:
        super().__init__()
        if spec.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got '{spec.task}'")
        self.backbone = backbone
        self.spec = spec
        self.layer_ids = select_layers(spec.layers, backbone.n_blocks)
        self.head = head if head is not None else build_head(spec, backbone, self.layer_ids)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        task = self.spec.task
        if task == "features":
            f = self.backbone.forward_features(x)
            return {"cls": f["x_norm_clstoken"], "storage": f["x_storage_tokens"], "patch": f["x_norm_patchtokens"]}
        if task == "cls":
            f = self.backbone.forward_features(x)
            return {"logits": self.head(f["x_norm_clstoken"], f["x_norm_patchtokens"])}
        maps = self.backbone.get_intermediate_layers(x, n=self.layer_ids, reshape=True, norm=True)
        if task == "seg":
            return {"logits": self.head(list(maps))}
        return {"depth": self.head(list(maps))}

    @torch.no_grad()
    def predict(self, x: torch.Tensor, rescale_to: tuple[int, int] | None = None) -> torch.Tensor:
        """Seg logits / depth upsampled (bilinear, align_corners=False) to rescale_to (default the
        input size); class logits for cls; the patch tokens for features."""
        task = self.spec.task
        size = rescale_to or tuple(x.shape[-2:])
        if task == "depth":
            return self._predict_depth(x, size)
        out = self.forward(x)
        if task in ("features", "cls"):
            return out["patch"] if task == "features" else out["logits"]
        return F.interpolate(out["logits"], size=size, mode="bilinear", align_corners=False)

    def _predict_depth(self, x: torch.Tensor, size) -> torch.Tensor:
        """Depth evaluation: the input is centre-padded (zeros) to the backbone's input multiple,
        the prediction upsampled to the padded size, the padding cropped away, then resized."""
        m = int(self.backbone.cfg.input_multiple)
        H, W = int(x.shape[-2]), int(x.shape[-1])
        ph, pw = (-H) % m, (-W) % m
        top, left = ph // 2, pw // 2
        if ph or pw:
            x = F.pad(x, (left, pw - left, top, ph - top))
        y = F.interpolate(self.forward(x)["depth"], size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
        y = y[..., top : top + H, left : left + W]
        if tuple(size) != (H, W):
            y = F.interpolate(y, size=tuple(size), mode="bilinear", align_corners=False)
        return y


def build_head(spec: HeadSpec, backbone: nn.Module, layer_ids: list[int]) -> nn.Module | None:
    dims = getattr(backbone, "embed_dims", None)
    in_ch = sum(dims[i] for i in layer_ids) if dims is not None else backbone.embed_dim * len(layer_ids)
    if spec.task == "features":
        return None
    if spec.task == "seg":
        return LinearSegHead(in_ch, spec.n_classes)
    if spec.task == "cls":
        return LinearClsHead(backbone.embed_dim, spec.n_classes)
    if spec.head_type == "dpt":
        from .dpt import DPTDepthHead  # written with the trainer; optional

        return DPTDepthHead(backbone, layer_ids, spec)
    return BinsDepthHead(in_ch, spec.n_bins, spec.min_depth, spec.max_depth)
