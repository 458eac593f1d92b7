"""The Mask2Former criterion: against `transformers`' independent port (same predictions, targets and
sampled points), matching on cases whose optimal assignment is known, the losses on given points,
and a float64 gradient check of the deformable-attention core the segmentor trains through."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from dinov3_deploy.reference.training.m2f_criterion import (
    M2FCriterion,
    M2FLossConfig,
    mask_losses,
    match,
    match_cost,
)
from dinov3_deploy.reference.training.m2f_targets import semantic_to_targets

TOL = 1e-5
N_CLASSES = 5


def _random_batch(seed: int, batch=2, queries=8, n_predictions=10, mask_hw=(8, 8), image_hw=(32, 32)):
    """Predictions of a 10-layer decoder (the segmentor's outputs) and targets from random class maps
    made of 4x4 blocks, with an ignored band in image 0."""
    g = torch.Generator().manual_seed(seed)
    sem = torch.randint(0, N_CLASSES, (batch, image_hw[0] // 8, image_hw[1] // 8), generator=g)
    sem = sem.repeat_interleave(8, 1).repeat_interleave(8, 2)
    sem[0, :5] = 255
    targets = [semantic_to_targets(s, N_CLASSES) for s in sem]
    preds = [{"pred_logits": 2 * torch.randn(batch, queries, N_CLASSES + 1, generator=g),
              "pred_masks": 3 * torch.randn(batch, queries, *mask_hw, generator=g)} for _ in range(n_predictions)]
    outputs = dict(preds[-1], aux_outputs=preds[:-1])
    return outputs, targets


def _transformers_loss():
    m2f = pytest.importorskip("transformers.models.mask2former.modeling_mask2former")
    from transformers import Mask2FormerConfig

    config = Mask2FormerConfig(num_labels=N_CLASSES, no_object_weight=0.1, class_weight=2.0, mask_weight=5.0,
                               dice_weight=5.0, train_num_points=12544, oversample_ratio=3.0,
                               importance_sample_ratio=0.75)
    return m2f, m2f.Mask2FormerLoss(config, weight_dict={})


def test_losses_equal_transformers_on_the_same_points():
    """Both draw their points in Mask2Former's order from one seeded stream: `transformers` from the
    global generator, ours from a generator of the same seed, so the points are the same."""
    _, hf_loss = _transformers_loss()
    outputs, targets = _random_batch(0)
    torch.manual_seed(11)
    theirs = hf_loss(outputs["pred_masks"], outputs["pred_logits"], [t["masks"].float() for t in targets],
                     [t["labels"] for t in targets],
                     [{"masks_queries_logits": a["pred_masks"], "class_queries_logits": a["pred_logits"]}
                      for a in outputs["aux_outputs"]])
    ours = M2FCriterion(M2FLossConfig(N_CLASSES))(outputs, targets, generator=torch.Generator().manual_seed(11))
    names = {"loss_cross_entropy": "loss_ce", "loss_mask": "loss_mask", "loss_dice": "loss_dice"}
    expected_total = 0.0
    for i in [None, *range(9)]:  # the final prediction, then the 9 auxiliary ones
        for hf_name, name in names.items():
            suffix = "" if i is None else f"_{i}"
            assert abs(ours[name + suffix].item() - theirs[hf_name + suffix].item()) <= TOL, name + suffix
            expected_total += {"loss_ce": 2, "loss_mask": 5, "loss_dice": 5}[name] * theirs[hf_name + suffix].item()
    assert len(ours) == 31  # 10 predictions x 3 terms + the weighted total
    assert ours["loss"].item() == pytest.approx(expected_total, rel=TOL)


def test_matched_indices_equal_transformers():
    m2f, _ = _transformers_loss()
    matcher = m2f.Mask2FormerHungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=12544)
    cfg = M2FLossConfig(N_CLASSES)
    for seed in range(3):
        outputs, targets = _random_batch(seed, batch=3, queries=10, n_predictions=1, image_hw=(40, 40))
        torch.manual_seed(seed)
        theirs = matcher(outputs["pred_masks"], outputs["pred_logits"], [t["masks"].float() for t in targets],
                         [t["labels"] for t in targets])
        ours = match(outputs["pred_logits"], outputs["pred_masks"], targets, cfg, torch.Generator().manual_seed(seed))
        for (r1, c1), (r2, c2) in zip(ours, theirs, strict=True):
            assert r1.tolist() == r2.tolist() and c1.tolist() == c2.tolist()


def _stripes(queries_to_stripes: dict[int, int], queries: int, n_stripes=3):
    """Targets: n_stripes vertical stripes of a 16x12 image, class s = stripe s. Predictions on 4x3: the
    queries in `queries_to_stripes` predict their stripe (mask and class) confidently, the others an
    empty mask and "no object"."""
    sem = torch.arange(n_stripes).repeat_interleave(12 // n_stripes)[None].expand(16, 12)
    logits = torch.full((1, queries, N_CLASSES + 1), -5.0)
    logits[0, :, -1] = 5.0
    masks = torch.full((1, queries, 4, 3), -10.0)
    for q, s in queries_to_stripes.items():
        logits[0, q, -1], logits[0, q, s] = -5.0, 5.0
        masks[0, q, :, s] = 10.0
    return logits, masks, [semantic_to_targets(sem, N_CLASSES)]


def test_matching_finds_the_queries_that_predict_each_target():
    logits, masks, targets = _stripes({4: 0, 1: 1, 2: 2}, queries=6)
    [(rows, cols)] = match(logits, masks, targets, M2FLossConfig(N_CLASSES, num_points=500),
                           torch.Generator().manual_seed(0))
    assert rows.tolist() == [1, 2, 4] and cols.tolist() == [1, 2, 0]


def test_matching_is_optimal_where_greedy_is_not():
    """Every query predicts the same mask, so only the class cost separates them. Query 0 is the
    best for both targets (p = 0.55 and 0.45), query 1 fits only target 0 (p = 0.45): the greedy
    choice (0 -> target 0, then 1 -> target 1) costs 2 x (-0.55 - 0), the optimum (0 -> target 1,
    1 -> target 0) 2 x (-0.45 - 0.45)."""
    probs = torch.tensor([[0.55, 0.45, 0.0, 0.0, 0.0, 0.0],
                          [0.45, 0.0, 0.0, 0.0, 0.0, 0.55]]) + 1e-9
    logits = probs.log()[None]
    masks = torch.zeros(1, 2, 4, 4)
    sem = torch.tensor([0, 1]).repeat_interleave(8)[None].expand(16, 16)
    cfg = M2FLossConfig(N_CLASSES, num_points=100)
    [(rows, cols)] = match(logits, masks, [semantic_to_targets(sem, N_CLASSES)], cfg, torch.Generator().manual_seed(0))
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]


def test_matching_minimises_the_total_cost_over_all_assignments():
    outputs, targets = _random_batch(3, batch=1, queries=5, n_predictions=1, image_hw=(16, 24))
    cfg = M2FLossConfig(N_CLASSES, num_points=300)
    points = torch.rand(300, 2, generator=torch.Generator().manual_seed(1))
    [(rows, cols)] = match(outputs["pred_logits"], outputs["pred_masks"], targets, cfg, points=[points])
    cost = match_cost(outputs["pred_logits"][0], outputs["pred_masks"][0], targets[0], points, cfg)
    k = len(targets[0]["labels"])
    assert 2 <= k <= 5 and len(rows) == k
    best = min(sum(cost[q, j].item() for j, q in enumerate(qs)) for qs in itertools.permutations(range(5), k))
    assert cost[rows, cols].sum().item() == pytest.approx(best, abs=1e-6)


def test_mask_losses_on_given_points():
    """Constant-logit predictions read the same value at every interior point, so BCE and dice have
    closed forms; both are summed over matched masks and divided by the number of TARGET masks."""
    sem = torch.tensor([0, 1, 2]).repeat_interleave(4)[None].expand(8, 12)  # 3 stripes, 3 targets
    targets = [semantic_to_targets(sem, N_CLASSES)]
    pred = torch.tensor([0.5, -1.0])[None, :, None, None].expand(1, 2, 2, 3).clone()
    indices = [(torch.tensor([0, 1]), torch.tensor([0, 2]))]  # only 2 queries: target 1 goes unmatched
    # 4 points: 2 in stripe 0, 1 in stripe 1, 1 in stripe 2, at target pixel centres and inside the
    # prediction's outer pixel centres (1/6 .. 5/6), where its zero padding does not reach
    xs = torch.tensor([2.5, 3.5, 5.5, 9.5]) / 12
    points = torch.stack([xs, torch.full((4,), 0.5)], -1)[None].expand(2, 4, 2)
    bce, dice = mask_losses(pred, targets, indices, 3, M2FLossConfig(N_CLASSES, num_points=4), points=points)
    expected_bce = expected_dice = 0.0
    for logit, labels in ((0.5, [1, 1, 0, 0]), (-1.0, [0, 0, 0, 1])):
        y = torch.tensor(labels, dtype=torch.float32)
        expected_bce += F.binary_cross_entropy_with_logits(torch.full((4,), logit), y).item()
        p = 1 / (1 + math.exp(-logit))
        expected_dice += 1 - (2 * p * y.sum().item() + 1) / (4 * p + y.sum().item() + 1)
    assert bce.item() == pytest.approx(expected_bce / 3, abs=1e-6)
    assert dice.item() == pytest.approx(expected_dice / 3, abs=1e-6)


def test_every_prediction_is_supervised_and_empty_images_are_fine():
    outputs, targets = _random_batch(4, n_predictions=3)
    targets[1] = semantic_to_targets(torch.full((32, 32), 255), N_CLASSES)  # an all-ignore crop
    preds = [outputs, *outputs["aux_outputs"]]
    for p in preds:
        p["pred_logits"].requires_grad_(True)
        p["pred_masks"].requires_grad_(True)
    losses = M2FCriterion(M2FLossConfig(N_CLASSES, num_points=200))(outputs, targets, torch.Generator().manual_seed(0))
    losses["loss"].backward()
    for p in preds:
        assert p["pred_logits"].grad.abs().sum() > 0 and p["pred_masks"].grad[0].abs().sum() > 0
        assert p["pred_masks"].grad[1].abs().sum() == 0  # no target: its masks are not supervised
    nothing = M2FCriterion(M2FLossConfig(N_CLASSES, num_points=200))(
        {"pred_logits": torch.zeros(1, 3, N_CLASSES + 1), "pred_masks": torch.zeros(1, 3, 4, 4)}, [targets[1]])
    assert nothing["loss_mask"].item() == 0 and nothing["loss_ce"].item() == pytest.approx(math.log(N_CLASSES + 1))


def test_mask_losses_gradcheck_float64():
    """The losses' gradient through point sampling, in float64 against finite differences."""
    targets = [semantic_to_targets(torch.tensor([0, 1]).repeat_interleave(4)[None].expand(8, 8), N_CLASSES)]
    indices = [(torch.tensor([1, 0]), torch.tensor([0, 1]))]
    points = torch.rand(2, 16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cfg = M2FLossConfig(N_CLASSES, num_points=16)
    pred = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m: mask_losses(m, targets, indices, 2, cfg, points=points), (pred,))


# -- the plain deformable-attention core ------------------------------------------------------------
def _ms_deform_core_ref(value, shapes, locations, weights):
    """Multi-scale deformable attention written directly on grid_sample: value [B, S, M, D] (levels
    flattened and concatenated), locations [B, Q, M, L, P, 2] (x, y) in [0, 1], weights [B, Q, M, L, P]
    -> [B, Q, M*D]. Stands in until the segmentor's core is importable (then both are checked)."""
    b, _, m, d = value.shape
    q = locations.shape[1]
    levels = value.split([h * w for h, w in shapes], dim=1)
    out = 0
    for lvl, ((h, w), v) in enumerate(zip(shapes, levels)):
        fmap = v.permute(0, 2, 3, 1).reshape(b * m, d, h, w)
        grid = 2 * locations[:, :, :, lvl].transpose(1, 2).reshape(b * m, q, -1, 2) - 1
        sampled = F.grid_sample(fmap, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out = out + (sampled * weights[:, :, :, lvl].transpose(1, 2).reshape(b * m, 1, q, -1)).sum(-1)
    return out.view(b, m * d, q).transpose(1, 2)


def _deform_cores():
    cores = [pytest.param(_ms_deform_core_ref, id="grid_sample-helper")]
    try:
        from dinov3_deploy.reference.models.ms_deform_attn import ms_deform_attn_core
    except ImportError:
        cores.append(pytest.param(None, id="reference-core",
                                  marks=pytest.mark.skip(reason="reference.models.ms_deform_attn not on this branch")))
    else:
        cores.append(pytest.param(ms_deform_attn_core, id="reference-core"))
    return cores


@pytest.mark.parametrize("core", _deform_cores())
def test_deformable_attention_core_gradcheck_float64(core):
    """Value, sampling locations (some outside the map, where the zero padding starts) and attention
    weights all receive exact gradients."""
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (2, 2)]
    b, q, m, d, n_levels, n_points = 1, 3, 2, 3, len(shapes), 2
    value = torch.randn(b, sum(h * w for h, w in shapes), m, d, dtype=torch.float64, generator=g)
    locations = torch.rand(b, q, m, n_levels, n_points, 2, dtype=torch.float64, generator=g) * 1.3 - 0.15
    weights = torch.rand(b, q, m, n_levels, n_points, dtype=torch.float64, generator=g).softmax(-1)
    inputs = tuple(t.requires_grad_(True) for t in (value, locations, weights))
    assert torch.autograd.gradcheck(lambda v, loc, w: core(v, shapes, loc, w), inputs)
    if core is not _ms_deform_core_ref:
        torch.testing.assert_close(core(value, shapes, locations, weights),
                                   _ms_deform_core_ref(value, shapes, locations, weights))


def test_autocast_does_not_reach_the_criterion():
    """A bf16 training step (autocast around model and loss) gets the float32 matching costs and
    losses: bf16 matmuls would round the costs that decide the matching."""
    outputs, targets = _random_batch(5, n_predictions=2)
    cfg = M2FLossConfig(N_CLASSES, num_points=300)
    points = torch.rand(300, 2, generator=torch.Generator().manual_seed(0))
    args = (outputs["pred_logits"][0], outputs["pred_masks"][0], targets[0], points, cfg)
    plain_cost = match_cost(*args)
    plain = M2FCriterion(cfg)(outputs, targets, torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed_cost = match_cost(*args)
        mixed = M2FCriterion(cfg)(outputs, targets, torch.Generator().manual_seed(2))
    assert torch.equal(mixed_cost, plain_cost)
    assert mixed["loss"].dtype == torch.float32
    assert {k: v.item() for k, v in mixed.items()} == {k: v.item() for k, v in plain.items()}
