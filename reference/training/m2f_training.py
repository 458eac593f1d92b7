"""The Mask2Former head in the one training loop (trainer.py): `train --task seg --head-type m2f`.

The loop knows a head as `model.head` (what the optimizer, DDP, --resume and gradient clipping
see), `model.backbone` (frozen) and `model.spec` (normalisation, classes, palette). A Mask2Former
segmentor has no separate head module: the adapter's own layers (spatial prior convs, interaction
blocks, level embedding, BatchNorms) sit beside the backbone inside `segmentation_model[0]`. So
`M2FTrainModel.head` is a view (`M2FTrainable`) that registers exactly the segmentor's non-backbone
parameters and modules, the same tensor objects, and whose forward runs the whole segmentor.

- The backbone is frozen (requires_grad False) but not cached: the adapter reads four of its
  layers and its own conv stem reads the image, so a step runs the backbone on the augmented crop.
  With no parameter and no input needing a gradient, autograd records nothing inside it.
- The loss is `M2FCriterion` on all 10 predictions. Its random point sampling draws from a
  generator seeded per (seed, step, process): a resumed run draws what the uninterrupted one drew
  with no generator state to carry, as the loop's augmentation and dropout seeds do.
- `num_masks` is averaged over processes by the criterion (Mask2Former's normaliser), so with DDP's
  gradient averaging the mask terms equal one process's over the global batch. The class term is a
  weighted mean per process (as in Mask2Former), and adapter BatchNorm statistics are per process
  (rank 0's are broadcast): N processes match one closely, not bit for bit as the linear head does.
- The head is saved in the M2F head format (formats/m2f_checkpoint.py: Meta's keys + config.json with
  the backbone it sits on), which `eval --head` evaluates with the M2F protocol.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from .m2f_criterion import M2FCriterion, M2FLossConfig
from .m2f_targets import batch_targets

RECIPE_POINTS = 12544  # 112 x 112 points per mask in Mask2Former's loss


def default_points(crop: int) -> int:
    """Points per mask: the recipe's 12,544 (112^2), or the mask map's pixel count (crop/4)^2 when
    that is fewer (the CPU demo's 128 crop has 32 x 32 mask logits: 1,024)."""
    return min(RECIPE_POINTS, (crop // 4) ** 2)


def ffn_dim(hidden_dim: int) -> int:
    """FFN width of the pixel decoder's encoder and the transformer decoder: twice the hidden width,
    the release's ratio (4096 at 2048). A small demo head keeps it small (4096 would dominate its cost)."""
    return 2 * hidden_dim


class M2FTrainable(nn.Module):
    """The trainable part of an M2FSegmentor (adapter without backbone, pixel decoder, transformer
    decoder), sharing its tensors. forward(images) -> the segmentor's outputs with the 9 aux
    predictions. `criterion` is the loss the trainer applies (no parameters)."""

    def __init__(self, segmentor, loss_cfg: M2FLossConfig) -> None:
        super().__init__()
        adapter, head = segmentor.segmentation_model
        self.adapter = nn.ModuleDict({n: m for n, m in adapter.named_children() if n != "backbone"})
        for name, p in adapter.named_parameters(recurse=False):  # level_embed
            self.register_parameter(name, p)
        self.decoder = head
        self.criterion = M2FCriterion(loss_cfg)
        self.n_classes = segmentor.num_classes
        self.__dict__["_segmentor"] = segmentor  # not a submodule: the backbone stays out of this view

    def forward(self, images: torch.Tensor) -> dict:
        return self._segmentor(images, aux=True)


class M2FTrainModel(nn.Module):
    """An M2FSegmentor as the training loop sees a TaskModel: backbone, head, spec."""

    def __init__(self, segmentor, spec: SimpleNamespace, loss_cfg: M2FLossConfig) -> None:
        super().__init__()
        self.segmentor = segmentor
        self.spec = spec
        self.__dict__["head"] = M2FTrainable(segmentor, loss_cfg)  # a view: its tensors are the segmentor's

    @property
    def backbone(self) -> nn.Module:
        return self.segmentor.backbone


def build_m2f_model(cfg, class_names: list[str], palette: list[list[int]]) -> M2FTrainModel:
    """The segmentor on cfg's backbone (weights, or the random backbone of cfg.seed and cfg.init),
    hidden width cfg.hidden_dim (FFN width ffn_dim(hidden)), the release's four evenly spaced layers,
    its head initialised from cfg.seed + 1 with the modules' own (Deformable DETR / Mask2Former) init."""
    from ..configs import normalization_for_weights
    from ..factory import create_backbone, random_backbone
    from ..models.m2f_segmentor import M2FSegmentor

    if cfg.backbone_weights is None:
        backbone = random_backbone(cfg.backbone, cfg.seed, attn_impl=cfg.attn_impl, init=cfg.init)
    else:
        backbone = create_backbone(cfg.backbone, cfg.backbone_weights, attn_impl=cfg.attn_impl)
    mean, std = normalization_for_weights(cfg.backbone_weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        segmentor = M2FSegmentor(backbone, hidden_dim=cfg.hidden_dim, num_classes=len(class_names),
                                 ffn_dim=ffn_dim(cfg.hidden_dim))
    spec = SimpleNamespace(mean=mean, std=std, n_classes=len(class_names), class_names=list(class_names),
                           palette=[list(map(int, c)) for c in palette], input_size=cfg.crop)
    loss_cfg = M2FLossConfig(n_classes=len(class_names), num_points=cfg.points or default_points(cfg.crop))
    return M2FTrainModel(segmentor, spec, loss_cfg)


def images(model, x: torch.Tensor, bf16: bool) -> list[torch.Tensor]:
    """The M2F head's input is the image itself (the adapter runs the frozen backbone)."""
    return [x]


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the criterion's point sampling at `step` on process `rank`."""
    return int(np.random.SeedSequence([seed, step, rank, 5]).generate_state(1, dtype=np.uint64)[0] >> 1)


def m2f_loss(head, feats, target, masks, amp, *, seed: int = 0):
    """(criterion loss, 1): the criterion already divides by the masks of the global batch (per
    process), so each process contributes weight 1 to the loop's normaliser."""
    module = getattr(head, "module", head)  # DDP wraps the view
    x = feats[0]
    with amp():
        outputs = head(x)
    generator = torch.Generator(device=x.device)
    generator.manual_seed(seed)
    losses = module.criterion(outputs, batch_targets(target, module.n_classes), generator)
    return losses["loss"], torch.ones((), device=x.device)


def evaluate_m2f_train(model: M2FTrainModel, dataset, *, size: int, crop: int, stride: int | None = None,
                       bf16: bool = False, max_images: int | None = None, rank: int = 0, world: int = 1,
                       keep: int = 0, progress=None) -> tuple[dict, list]:
    """The loop's evaluation of an M2F head: the M2F protocol at one scale without flip (what `eval
    --head H --no-tta --size S --crop C` runs), short side `size`, windows `crop`, stride 2/3 crop
    by default, as the linear head's evaluation. bf16 is not used (the reference evaluates in fp32)."""
    from .m2f_eval import evaluate_m2f

    stride = stride or max(1, (crop * 2) // 3)
    return evaluate_m2f(model.segmentor, dataset, short_side=size, crop=crop, stride=stride, ratios=(1.0,),
                        flip=False, mean=model.spec.mean, std=model.spec.std, max_images=max_images, keep=keep,
                        progress=progress, rank=rank, world=world)


def save_m2f_train_head(path, model: M2FTrainModel, cfg, extra: dict):
    """The trained head in the M2F head format, recording the backbone (weights file and sha256, or
    seed and random initialisation) so `eval --head` rebuilds the same segmentor."""
    from pathlib import Path

    from dinov3_deploy.hashing import sha256_path

    from ..factory import RANDOM_INIT
    from ..formats.m2f_checkpoint import save_m2f_head

    weights = None
    if cfg.backbone_weights is not None:
        weights = {"path": str(Path(cfg.backbone_weights).resolve()), "sha256": sha256_path(cfg.backbone_weights)}
    seed = cfg.seed if cfg.backbone_weights is None else None
    init = None if seed is None else (cfg.init or RANDOM_INIT)
    return save_m2f_head(path, model.segmentor, backbone=cfg.backbone, backbone_seed=seed, backbone_weights=weights,
                         backbone_init=init, mean=model.spec.mean, std=model.spec.std, extra=extra)
