"""The label gate (parity.judge_labels): a flip counts only where the fp32 reference's top-1/top-2
margin exceeds the bound derived from the comparison's own measured error; near ties are reported."""

from __future__ import annotations

import numpy as np
import pytest

from dinov3_deploy.verification.parity import NEAR_TIE_SIGMAS, THRESHOLDS, compare
from dinov3_deploy.verification.verify import failure_message

# one image of 6 classes at 256x256: the logits are judged as they are (65536 pixels, no upsampling),
# so a planted flip is exactly one pixel
REF = np.random.default_rng(0).standard_normal((1, 6, 256, 256)).astype(np.float32)
ORDER = np.argsort(REF, axis=1)
MARGIN = np.take_along_axis(REF, ORDER[:, -1:], 1)[:, 0] - np.take_along_axis(REF, ORDER[:, -2:-1], 1)[:, 0]
# the margin in units of the pixel's logit RMS over classes: what the bound scales with
RATIO = MARGIN / np.sqrt(np.mean(np.square(REF, dtype=np.float64), axis=1))


def _flip(out: np.ndarray, lo: float, hi: float, n: int) -> np.ndarray:
    """`out` with `n` pixels flipped whose reference margin over logit RMS lies in (lo, hi): the
    runner-up class is raised just past the winner there."""
    out = out.copy()
    for b, y, x in np.argwhere((RATIO > lo) & (RATIO < hi))[:n]:
        out[b, ORDER[b, -2, y, x], y, x] = out[b, ORDER[b, -1, y, x], y, x] + 1e-3
    return out


def _labels_row(out: np.ndarray, precision: str):
    (r,) = compare({"logits": REF}, {"logits": out}, "c", "seg", precision)
    return r


def test_a_planted_flip_beyond_the_margin_fails_and_says_why():
    r = _labels_row(_flip(REF * (1 + 1e-3), 0.1, 0.12, 400), "fp16")
    assert r.labels["beyond_margin"] == 400 and r.labels["near_tie_flips"] == 0
    assert r.label_agreement == pytest.approx(1 - 400 / 65536)
    (f,) = r.failures  # rel_fro and cosine stay inside: only the labels fail
    assert f.startswith("label_agreement") and "400 flips beyond the margin" in f and "bound" in f
    report = {"precision": "fp16", "backends": [{"name": "onnxruntime-cpu", "status": "failed",
                                                 "outputs": [r.to_dict()], "reason": None}]}
    msg = failure_message(report)
    assert "400 flips beyond the margin" in msg and "--per-block" in msg and "parity.json" in msg


def test_near_tie_flips_within_the_bound_are_reported_not_counted():
    # 1000 flips (1.5 % of the pixels: the raw agreement would fail 99.5 %) where the reference decided
    # by less than 0.02 x the logit RMS, under a measured error whose bound is about 0.028 x that RMS
    r = _labels_row(_flip(REF * (1 + 5e-3), 0.0, 0.02, 1000), "fp16")
    assert r.passed and r.label_agreement == 1.0
    assert r.labels["flips"] == 1000 and r.labels["near_tie_flips"] == 1000 and r.labels["beyond_margin"] == 0
    assert r.labels["near_tie_pixels"] >= 1000


def test_the_bound_comes_from_the_measured_error():
    flips = (0.02, 0.04, 400)
    small, large = (_labels_row(_flip(REF * (1 + d), *flips), "fp16") for d in (1e-3, 1.5e-2))
    for r in (small, large):
        assert r.labels["bound_factor"] == pytest.approx(NEAR_TIE_SIGMAS * np.sqrt(2) * r.rel_fro)
    assert large.labels["bound_factor"] > 5 * small.labels["bound_factor"]
    # the same 400 flips: beyond the bound of a small error, near ties under a large one
    assert small.labels["beyond_margin"] == 400 and not small.passed
    assert large.labels["near_tie_flips"] == 400 and large.passed


def test_fp32_allows_no_flip_beyond_its_margin():
    assert THRESHOLDS["fp32"].min_label_agreement == 1.0
    r = _labels_row(_flip(REF * (1 + 1e-7), 1e-3, 1e-2, 1), "fp32")
    assert r.rel_fro < THRESHOLDS["fp32"].max_rel_fro and r.labels["beyond_margin"] == 1
    (f,) = r.failures
    assert f.startswith("label_agreement") and "< 100.00%" in f
    # an exact tie in the reference flipped by a 1e-7 change: a near tie, not a failure
    tied = REF.copy()
    a, c = ORDER[0, -1, 5, 5], ORDER[0, -2, 5, 5]
    tied[0, c, 5, 5] = tied[0, a, 5, 5]
    loser = c if tied[0, :, 5, 5].argmax() == a else a
    out = tied * (1 + 1e-7)
    out[0, loser, 5, 5] += 1e-6
    (r,) = compare({"logits": tied}, {"logits": out}, "c", "seg", "fp32")
    assert r.passed and r.labels["near_tie_flips"] >= 1 and r.labels["beyond_margin"] == 0


def test_label_maps_take_their_margins_from_the_reference_scores():
    """A `labels` output beside its `logits`: near-tie flips judged from the logits' measured error."""
    small = REF[:, :, :64, :64]
    out = small * (1 + 5e-3)
    labels = small.argmax(1).astype(np.int32)
    moved = labels.copy()
    tie = np.argwhere(RATIO[:, :64, :64] < 0.005)[:3]
    far = np.argwhere(RATIO[:, :64, :64] > 0.5)[:2]
    for b, y, x in np.concatenate([tie, far]):
        moved[b, y, x] = ORDER[b, -2, y, x]
    rows = compare({"logits": small, "labels": labels}, {"logits": out, "labels": moved}, "c", "seg", "fp16")
    assert [r.output for r in rows] == ["logits", "labels"]
    lab = rows[1].labels
    assert lab["flips"] == 5 and lab["near_tie_flips"] == 3 and lab["beyond_margin"] == 2
    assert lab["bound_factor"] == pytest.approx(NEAR_TIE_SIGMAS * np.sqrt(2) * rows[0].rel_fro)
    # without scores every flip of a label map counts
    (bare,) = compare({"labels": labels}, {"labels": moved}, "c", "seg", "fp16")
    assert bare.labels["beyond_margin"] == 5


def test_small_score_maps_are_judged_upsampled():
    ref = REF[:, :, :16, :16]
    (r,) = compare({"logits": ref}, {"logits": ref * (1 + 1e-3)}, "c", "seg", "fp16")
    assert r.labels["pixels"] >= 65536 and r.labels["upsample"] == 16


def test_bench_tables_show_the_near_ties_apart():
    from dinov3_deploy.bench.report import _parity_cell

    r = _labels_row(_flip(REF * (1 + 5e-3), 0.0, 0.02, 1000), "fp16")
    cell = _parity_cell({"status": "ok", "parity": [r.to_dict()]})
    assert "labels 100.00% (1000 near-tie px) ok" in cell
