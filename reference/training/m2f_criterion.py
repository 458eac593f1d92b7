"""The Mask2Former training loss: Hungarian matching of queries to target masks, then class and
mask losses on every decoder prediction.

A Mask2Former head predicts Q (class, mask) pairs per image and has no fixed order among them, so a
loss first decides which query answers for which target: the assignment of least cost (2 x class +
5 x mask BCE + 5 x dice), solved by `scipy.optimize.linear_sum_assignment`. Matched queries learn
their target's class and mask; the others learn "no object" (the extra last class, weighted 0.1 in
the cross-entropy so the many empty queries do not swamp the few matched ones).

Masks are compared on points, not pixels (Mask2Former's memory saving, which also keeps the loss
independent of the image size): the matcher uses 12,544 uniform points shared by all predictions
and targets of an image; the mask losses use 12,544 points per matched mask, 75 % of them the most
uncertain (|logit| smallest) among 3 x 12,544 uniform candidates, the rest uniform. Points are
(x, y) in [0, 1] of the mask's extent and read with `grid_sample(align_corners=False)`, so a
prediction at 1/4 resolution and a full-size target are sampled at the same places.

Random draws go through one optional `torch.Generator` in a fixed order (per prediction: one
uniform set per image for the matcher, then the candidates and the uniform rest for the losses),
the order of Mask2Former's reference code and of `transformers`' port, so a test can reproduce both
exactly (the generator lives on the predictions' device); `match` and `mask_losses` also take
explicit points. The criterion runs outside autocast: a bf16 matmul would round the costs that
decide the matching, and a loss is no place to save precision.

outputs = {"pred_logits": [B, Q, C+1], "pred_masks": [B, Q, h, w],
           "aux_outputs": [{"pred_logits", "pred_masks"}, ...]}   (aux optional; 9 in the segmentor)
targets = [{"labels": int64 [K], "masks": [K, H, W]}] per image   (m2f_targets.semantic_to_targets)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Indices = list[tuple[torch.Tensor, torch.Tensor]]  # per image: (query indices, target indices), int64


@dataclass(frozen=True)
class M2FLossConfig:
    """Mask2Former's ADE20K recipe: the loss weights double as the matching cost weights."""

    n_classes: int
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    num_points: int = 12544  # 112 x 112
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75


def point_sample(masks: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """masks [N, H, W], points [N, P, 2] as (x, y) in [0, 1] -> [N, P] bilinear samples (zero
    padding outside, pixel centres at (i + 0.5) / size)."""
    grid = (2 * points - 1).unsqueeze(2)  # [N, P, 1, 2] in grid_sample's [-1, 1]
    return F.grid_sample(masks.unsqueeze(1), grid, mode="bilinear", align_corners=False).squeeze(3).squeeze(1)


def uniform_points(n: int, num_points: int, like: torch.Tensor, generator: torch.Generator | None = None):
    """[n, num_points, 2] uniform points in [0, 1], in `like`'s dtype and device."""
    return torch.rand(n, num_points, 2, generator=generator, dtype=like.dtype, device=like.device)


@torch.no_grad()
def uncertain_points(mask_logits: torch.Tensor, cfg: M2FLossConfig, generator: torch.Generator | None = None):
    """mask_logits [N, h, w] -> [N, num_points, 2]: the importance share of the points are the most
    uncertain (-|logit| largest) of num_points x oversample_ratio uniform candidates, the rest uniform."""
    n = mask_logits.shape[0]
    n_candidates = int(cfg.num_points * cfg.oversample_ratio)
    n_uncertain = int(cfg.importance_sample_ratio * cfg.num_points)
    candidates = uniform_points(n, n_candidates, mask_logits, generator)
    uncertainty = -point_sample(mask_logits, candidates).abs()
    top = uncertainty.topk(n_uncertain, dim=1).indices
    points = candidates.gather(1, top[..., None].expand(-1, -1, 2))
    if cfg.num_points > n_uncertain:
        points = torch.cat([points, uniform_points(n, cfg.num_points - n_uncertain, mask_logits, generator)], 1)
    return points


def _loss_dtype(x: torch.Tensor) -> torch.Tensor:
    """Losses in float32 at least (a half-precision forward still gets a float32 loss)."""
    return x if x.dtype == torch.float64 else x.float()


def _pairwise_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits [Q, P], labels [K, P] -> [Q, K] mean BCE over points of every (query, target) pair."""
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ labels.T + neg @ (1 - labels).T) / logits.shape[1]


def _pairwise_dice(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[Q, P], [K, P] -> [Q, K] dice loss (+1 smoothed) of every pair."""
    probs = logits.sigmoid()
    inter = 2 * probs @ labels.T
    total = probs.sum(-1)[:, None] + labels.sum(-1)[None, :]
    return 1 - (inter + 1) / (total + 1)


def match_cost(pred_logits: torch.Tensor, pred_masks: torch.Tensor, target: dict[str, torch.Tensor],
               points: torch.Tensor, cfg: M2FLossConfig) -> torch.Tensor:
    """One image: pred_logits [Q, C+1], pred_masks [Q, h, w], points [P, 2] -> cost [Q, K].
    The class cost is -p(target class), the usual stand-in for the NLL (same ranking, bounded)."""
    logits, masks = _loss_dtype(pred_logits), _loss_dtype(pred_masks)
    points = points.to(masks.dtype)
    cost_class = -logits.softmax(-1)[:, target["labels"]]
    tgt = target["masks"].to(device=masks.device, dtype=masks.dtype)
    with torch.autocast(masks.device.type, enabled=False):  # the pairwise matmuls stay in float32
        tgt_points = point_sample(tgt, points.expand(tgt.shape[0], -1, -1))
        pred_points = point_sample(masks, points.expand(masks.shape[0], -1, -1))
        return (cfg.class_weight * cost_class + cfg.mask_weight * _pairwise_bce(pred_points, tgt_points)
                + cfg.dice_weight * _pairwise_dice(pred_points, tgt_points))


@torch.no_grad()
def match(pred_logits: torch.Tensor, pred_masks: torch.Tensor, targets: list[dict[str, torch.Tensor]],
          cfg: M2FLossConfig, generator: torch.Generator | None = None,
          points: list[torch.Tensor] | None = None) -> Indices:
    """Hungarian matching per image; `points` ([P, 2] per image) replaces the uniform draw.
    Returns per image (query indices ascending, their target indices), min(Q, K) pairs."""
    from scipy.optimize import linear_sum_assignment

    indices = []
    for b, target in enumerate(targets):
        pts = points[b] if points is not None else uniform_points(1, cfg.num_points, pred_masks, generator)[0]
        cost = match_cost(pred_logits[b], pred_masks[b], target, pts, cfg)
        # A diverged prediction (NaN/inf cost) is matched only where nothing else can be.
        big = torch.finfo(cost.dtype).max
        cost = torch.nan_to_num(cost, nan=big, posinf=big, neginf=big)
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
    return indices


def class_loss(pred_logits: torch.Tensor, targets: list[dict[str, torch.Tensor]], indices: Indices,
               cfg: M2FLossConfig) -> torch.Tensor:
    """Cross-entropy over all B x Q queries: matched ones against their target's class, the rest
    against "no object" (index C), whose weight is cfg.no_object_weight (weighted mean)."""
    logits = _loss_dtype(pred_logits)
    b, q, c1 = logits.shape
    if c1 != cfg.n_classes + 1:
        raise ValueError(f"pred_logits has {c1} classes, expected {cfg.n_classes} + 1 (no object)")
    classes = torch.full((b, q), cfg.n_classes, dtype=torch.int64, device=logits.device)
    for i, (rows, cols) in enumerate(indices):
        classes[i, rows.to(logits.device)] = targets[i]["labels"].to(logits.device)[cols.to(logits.device)]
    weight = torch.ones(c1, dtype=logits.dtype, device=logits.device)
    weight[-1] = cfg.no_object_weight
    return F.cross_entropy(logits.transpose(1, 2), classes, weight=weight)


def _matched_target_masks(targets: list[dict[str, torch.Tensor]], indices: Indices, like: torch.Tensor):
    """The matched target masks of the batch, [N, H, W] in `like`'s dtype, zero-padded to the largest
    target size (the batch canvas the predictions cover)."""
    height = max(t["masks"].shape[-2] for t in targets)
    width = max(t["masks"].shape[-1] for t in targets)
    out = []
    for target, (_, cols) in zip(targets, indices):
        m = target["masks"][cols.to(target["masks"].device)].to(like)
        out.append(F.pad(m, (0, width - m.shape[-1], 0, height - m.shape[-2])))
    return torch.cat(out) if out else like.new_zeros(0, height, width)


def mask_losses(pred_masks: torch.Tensor, targets: list[dict[str, torch.Tensor]], indices: Indices,
                num_masks: float | torch.Tensor, cfg: M2FLossConfig, generator: torch.Generator | None = None,
                points: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(BCE, dice) of the matched masks on cfg.num_points points each (`uncertain_points`, or the
    given [N, P, 2], in the order of `indices`), each summed over masks and divided by num_masks."""
    masks = _loss_dtype(pred_masks)
    batch = torch.cat([torch.full_like(rows, i) for i, (rows, _) in enumerate(indices)]).to(masks.device)
    rows = torch.cat([rows for rows, _ in indices]).to(masks.device)
    pred = masks[batch, rows]  # [N, h, w]
    tgt = _matched_target_masks(targets, indices, masks)
    if pred.shape[0] == 0:  # no target in the batch: nothing to supervise, but keep the graph
        zero = masks.sum() * 0
        return zero, zero
    if points is None:
        points = uncertain_points(pred.detach(), cfg, generator)
    points = points.to(masks.dtype)
    with torch.no_grad():
        labels = point_sample(tgt, points)
    logits = point_sample(pred, points)
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1).sum() / num_masks
    probs = logits.sigmoid()
    dice = 1 - (2 * (probs * labels).sum(-1) + 1) / (probs.sum(-1) + labels.sum(-1) + 1)
    return bce, dice.sum() / num_masks


def average_num_masks(targets: list[dict[str, torch.Tensor]], device) -> torch.Tensor:
    """Target masks per process over the whole (data-parallel) batch, at least 1: the loss normaliser,
    so every process divides by the same number however its shard's targets fall."""
    n = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(n)
        n = n / torch.distributed.get_world_size()
    return n.clamp(min=1)


class M2FCriterion(nn.Module):
    """forward(outputs, targets, generator=None) -> {"loss": weighted total, "loss_ce", "loss_mask",
    "loss_dice" of the final prediction, and "loss_ce_i", ... of aux prediction i}. Each prediction
    is matched on its own (Mask2Former's deep supervision)."""

    def __init__(self, cfg: M2FLossConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def prediction_losses(self, pred: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]],
                          num_masks: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The three unweighted terms of one prediction, matched on its own."""
        indices = match(pred["pred_logits"], pred["pred_masks"], targets, self.cfg, generator)
        bce, dice = mask_losses(pred["pred_masks"], targets, indices, num_masks, self.cfg, generator)
        return {"loss_ce": class_loss(pred["pred_logits"], targets, indices, self.cfg), "loss_mask": bce,
                "loss_dice": dice}

    def forward(self, outputs: dict, targets: list[dict[str, torch.Tensor]],
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        if len(targets) != outputs["pred_logits"].shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {outputs['pred_logits'].shape[0]} predictions")
        device = outputs["pred_masks"].device
        with torch.autocast(device.type, enabled=False):
            return self._losses(outputs, targets, average_num_masks(targets, device), generator)

    def _losses(self, outputs: dict, targets: list[dict[str, torch.Tensor]], num_masks: torch.Tensor,
                generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        weights = {"loss_ce": self.cfg.class_weight, "loss_mask": self.cfg.mask_weight,
                   "loss_dice": self.cfg.dice_weight}
        predictions = [("", outputs)] + [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs") or [])]
        losses, total = {}, 0
        for suffix, pred in predictions:
            for name, value in self.prediction_losses(pred, targets, num_masks, generator).items():
                losses[name + suffix] = value
                total = total + weights[name] * value
        losses["loss"] = total
        return losses
