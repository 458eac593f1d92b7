"""Parity metrics, the thresholds table and the verification inputs (no export needed)."""

from __future__ import annotations

import numpy as np
import pytest

from dinov3_deploy.manifest import DeployIO
from dinov3_deploy.shapes import DimRange, ShapeSpec
from dinov3_deploy.verification.parity import (
    THRESHOLDS,
    compare,
    label_agreement,
    min_token_cosine,
    relative_frobenius,
)
from dinov3_deploy.verification.verify import default_cases, failure_message, make_batch


def _rotated_token(n_tokens: int, cos: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit tokens [1, n, 8] and a copy whose first token is turned by the angle with this cosine
    (every other token, and the scale, unchanged)."""
    ref = np.zeros((1, n_tokens, 8))
    ref[..., 0] = 1.0
    out = ref.copy()
    out[0, 0, :2] = [cos, np.sqrt(1.0 - cos * cos)]
    return ref, out


@pytest.mark.parametrize("precision", sorted(THRESHOLDS))
def test_each_threshold_passes_just_inside_and_fails_just_outside(precision):
    """Per metric, at the table's own bound: 1% inside passes, 1% outside fails, and only that
    metric is named (the others are kept far inside)."""
    th = THRESHOLDS[precision]
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((1, 4, 8, 8))

    def failures(ref, out, task):
        (r,) = compare({"x": ref}, {"x": out}, "c", task, precision)
        return r.failures

    # rel_fro: a uniform scale error leaves every cosine and argmax exactly as they were
    assert failures(ref, ref * (1 + 0.99 * th.max_rel_fro), "seg") == []
    (f,) = failures(ref, ref * (1 + 1.01 * th.max_rel_fro), "seg")
    assert f.startswith("rel_fro")

    # min_token_cos: one token of 4096 turned; rel_fro stays below its bound
    gap = 1.0 - th.min_token_cos
    assert failures(*_rotated_token(4096, 1.0 - 0.99 * gap), "features") == []
    (f,) = failures(*_rotated_token(4096, 1.0 - 1.01 * gap), "features")
    assert f.startswith("min_token_cos")

    # label_agreement: integer label maps with k of 10000 pixels changed
    labels = rng.integers(0, 5, size=(1, 100, 100)).astype(np.int32)
    allowed = round((1.0 - th.min_label_agreement) * labels.size, 6)

    def moved(k: int) -> np.ndarray:
        out = labels.copy().reshape(-1)
        out[:k] = (out[:k] + 1) % 5
        return out.reshape(labels.shape)

    assert failures(labels, moved(max(0, int(np.ceil(allowed)) - 1)), "seg") == []
    (f,) = failures(labels, moved(int(np.floor(allowed)) + 1), "seg")
    assert f.startswith("label_agreement")


def test_metrics_on_known_arrays():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)
    assert relative_frobenius(ref, ref) == 0 and min_token_cosine(ref, ref) == pytest.approx(1.0)
    assert relative_frobenius(ref, 1.01 * ref) == pytest.approx(0.01, rel=1e-5)
    assert min_token_cosine(ref, 3.0 * ref) == pytest.approx(1.0)  # cosine ignores scale
    flipped = ref.copy()
    flipped[1, :, 2, 3] *= -1  # one pixel's channel vector reversed
    assert min_token_cosine(ref, flipped) == pytest.approx(-1.0)
    assert label_agreement(ref, flipped) == pytest.approx(23 / 24)
    labels = ref.argmax(1).astype(np.int32)
    moved = labels.copy()
    moved[0, 0, 0] = (moved[0, 0, 0] + 1) % 5
    assert label_agreement(labels, moved) == pytest.approx(23 / 24)
    # tokens of [B, N, D] are rows; a 1-channel map is compared per image
    tok = rng.standard_normal((2, 7, 8))
    bad = tok.copy()
    bad[1, 3] = -bad[1, 3]
    assert min_token_cosine(tok, bad) == pytest.approx(-1.0)
    depth = rng.random((2, 1, 4, 4)) + 1
    assert min_token_cosine(depth, depth + 1e-3) > 0.9999


def test_compare_gates_on_the_thresholds():
    rng = np.random.default_rng(1)
    ref = {"logits": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)}
    ok = compare(ref, {"logits": ref["logits"] + 1e-7}, "c", "seg", "fp32")
    assert ok[0].passed and ok[0].label_agreement == 1.0
    noisy = {"logits": ref["logits"] + 0.05 * rng.standard_normal((1, 4, 8, 8)).astype(np.float32)}
    (fp32,) = compare(ref, noisy, "c", "seg", "fp32")
    (fp16,) = compare(ref, noisy, "c", "seg", "fp16")
    assert not fp32.passed and any("rel_fro" in f for f in fp32.failures)
    assert not fp16.passed  # 5% noise is beyond fp16's 2e-2 too
    nan = {"logits": np.full_like(ref["logits"], np.nan)}
    (r,) = compare(ref, nan, "c", "seg", "fp16")
    assert not r.passed and any("non-finite" in f for f in r.failures)
    (r,) = compare(ref, {"logits": ref["logits"][:, :, :4]}, "c", "seg", "fp32")
    assert not r.passed and "shape" in r.failures[0]
    (r,) = compare(ref, {}, "c", "seg", "fp32")
    assert not r.passed and r.failures == ["output missing"]


def test_verification_cases_cover_a_second_shape():
    s = ShapeSpec(DimRange(1, 1, 8), DimRange(256, 512, 1024), DimRange(256, 512, 1024), 16)
    a, b = default_cases(s)
    assert (a.batch, a.height, a.width) == (2, 512, 512)
    assert b.batch != a.batch and b.height != a.height and b.width != a.width and b.height != b.width
    for c in (a, b):
        s.check(c.batch, c.height, c.width)
    static = ShapeSpec(DimRange(1, 1, 1), DimRange(64, 64, 64), DimRange(64, 64, 64), 32)
    assert len(default_cases(static)) == 1


def test_verification_inputs_are_real_looking_images():
    io = DeployIO(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    s = ShapeSpec(DimRange(1, 2, 4), DimRange(32, 64, 64), DimRange(32, 64, 96), 16)
    case = default_cases(s)[0]
    x = make_batch(case, io)
    assert x.shape == (2, 3, 64, 64) and x.dtype == np.float32
    assert np.array_equal(x, make_batch(case, io))  # deterministic
    assert not np.allclose(x[0], x[1]) and x.std() > 0.3  # distinct, textured, not constant
    u8 = make_batch(case, DeployIO(uint8_input=True))
    assert u8.shape == (2, 64, 64, 3) and u8.dtype == np.uint8
    # the float input is the uint8 images normalised with the artifact's mean/std
    mean, std = np.reshape(io.mean, (1, 3, 1, 1)), np.reshape(io.std, (1, 3, 1, 1))
    np.testing.assert_allclose(x, (u8.transpose(0, 3, 1, 2) / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)


def test_failure_message_names_what_failed():
    report = {"precision": "bf16", "backends": [
        {"name": "onnxruntime-cpu", "status": "skipped", "reason": "no bf16 kernels", "outputs": []}]}
    assert "no deployment backend can run" in failure_message(report)
    report["backends"].append({"name": "x", "status": "failed", "reason": "", "outputs": [
        {"output": "logits", "case": "opt", "passed": False, "failures": ["rel_fro 1e-1 > 2e-2"]}]})
    assert "x: logits[opt]: rel_fro" in failure_message(report)


def test_skipped_backends_are_one_short_line_per_reason():
    from dinov3_deploy.verification.verify import skipped_lines

    reason = "{} is not in this onnxruntime build (GPU: pip install 'dinov3-deploy[gpu]')"
    backends = [{"name": "onnxruntime-cpu", "status": "ok", "reason": ""},
                {"name": "onnxruntime-cuda", "status": "skipped", "reason": reason.format("CUDAExecutionProvider")},
                {"name": "onnxruntime-tensorrt", "status": "skipped",
                 "reason": reason.format("TensorrtExecutionProvider")},
                {"name": "tensorrt-rtx-engine", "status": "skipped", "reason": "no CUDA GPU on this machine"}]
    lines = skipped_lines(backends)
    assert lines == ["onnxruntime-cuda, onnxruntime-tensorrt: provider not in this onnxruntime build "
                     "(GPU: pip install 'dinov3-deploy[gpu]')", "tensorrt-rtx-engine: no CUDA GPU on this machine"]
    assert all(len(line) <= 120 for line in lines)
