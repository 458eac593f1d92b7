"""Several task heads on one backbone pass: what a multi-head artifact computes.

    model = MultiTaskModel.from_task_models([seg_model, depth_model, cls_model])  # one shared backbone
    out = model(x)   # {"seg.logits": ..., "depth.depth": ..., "cls.logits": ...}

The backbone is over 95 % of the compute, so it runs once: the blocks any head reads are taken
from that single pass (`get_intermediate_layers` with the union of the heads' blocks), and each
head reads its own. Every output equals the single-task model's (TaskModel.forward) on the same
weights: the maps are the same normalised block outputs, and the class head's patch tokens are
the last block's normalised map flattened back to tokens (the final norm acts per token, so
normalising the whole sequence or the map is the same).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .task_model import HeadSpec, TaskModel


class MultiTaskModel(nn.Module):
    """forward(x) -> {"<task>.<output>": tensor} for each task in `tasks` order (see TaskModel for
    the outputs of each task; ConvNeXt features have no storage tokens)."""

    def __init__(self, backbone: nn.Module, specs: Sequence[HeadSpec], heads: Sequence[nn.Module | None],
                 layer_ids: Sequence[Sequence[int]]) -> None:
        super().__init__()
        tasks = [s.task for s in specs]
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"one head per task: got tasks {tasks}")
        if len(tasks) < 2:
            raise ValueError("a multi-task model has at least two heads; use TaskModel for one")
        self.backbone = backbone
        self.tasks = tuple(tasks)
        self.specs = {s.task: s for s in specs}
        self.heads = nn.ModuleDict({t: h for t, h in zip(tasks, heads) if h is not None})
        self.layer_ids = {t: list(ids) for t, ids in zip(tasks, layer_ids)}
        last = backbone.n_blocks - 1
        # the blocks one pass must yield: the maps seg/depth read, the last block for cls/features
        needed = {i for t in tasks if t in ("seg", "depth") for i in self.layer_ids[t]}
        if any(t in ("cls", "features") for t in tasks):
            needed.add(last)
        self.blocks_taken = sorted(needed)

    @classmethod
    def from_task_models(cls, models: Sequence[TaskModel]) -> MultiTaskModel:
        """Join task models that share one backbone module (the caller built them on it)."""
        backbone = models[0].backbone
        if any(m.backbone is not backbone for m in models):
            raise ValueError("the task models must share one backbone module")
        specs = [m.spec for m in models]
        for s in specs[1:]:
            if (tuple(s.mean), tuple(s.std)) != (tuple(specs[0].mean), tuple(specs[0].std)):
                raise ValueError(f"heads disagree on input normalisation: {specs[0].task} uses mean/std "
                                 f"{specs[0].mean}/{specs[0].std}, {s.task} {s.mean}/{s.std}")
        return cls(backbone, specs, [m.head for m in models], [m.layer_ids for m in models])

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.specs[self.tasks[0]].mean)

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.specs[self.tasks[0]].std)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        layers = self.backbone.get_intermediate_layers(
            x, n=self.blocks_taken, reshape=True, return_class_token=True, return_extra_tokens=True, norm=True)
        by_block = dict(zip(self.blocks_taken, layers))  # block -> (map [B,D,h,w], cls [B,D], extra [B,S,D])
        out: dict[str, torch.Tensor] = {}
        for task in self.tasks:
            if task == "seg":
                out["seg.logits"] = self.heads["seg"]([by_block[i][0] for i in self.layer_ids["seg"]])
            elif task == "depth":
                out["depth.depth"] = self.heads["depth"]([by_block[i][0] for i in self.layer_ids["depth"]])
            else:
                last, cls_token, extra = by_block[self.backbone.n_blocks - 1]
                patch = last.flatten(2).transpose(1, 2)
                if task == "cls":
                    out["cls.logits"] = self.heads["cls"](cls_token, patch)
                else:
                    out.update({"features.cls": cls_token, "features.storage": extra, "features.patch": patch})
        return out
