"""Parity of a backend's outputs against the fp32 PyTorch reference: the metrics, the ONE table
of thresholds, and the comparator. Knows nothing about backends: it compares dicts of arrays.

Metrics per output:
  rel_fro          ||out - ref||_F / ||ref||_F
  min_token_cos    the worst cosine similarity over tokens: a token is a pixel's channel vector for
                   [B,C,h,w] maps, a row of [B,N,D] / [B,D] tokens, a whole image for 1-channel maps
  max_abs          max |out - ref| (reported, not gated: its scale depends on the output)
  label_agreement  seg only: fraction of pixels whose argmax class (or `labels` output) matches

Why not polygraphy's comparator: its `CompareFunc.simple` gates every element with atol/rtol and
summarises abs/rel error distributions, and `CompareFunc.indices` compares top-k indices;
neither expresses a relative Frobenius norm, a per-token cosine or a pixel agreement rate, which
are what make fp16/bf16 parity meaningful for DINOv3 features. Polygraphy still runs the ONNX
Runtime backends (see runtime/runners.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from dinov3_deploy.errors import DeployError


class ParityError(DeployError):
    """Outputs of a deployment backend do not match the reference within the thresholds."""


@dataclass(frozen=True)
class Thresholds:
    max_rel_fro: float
    min_token_cos: float
    min_label_agreement: float


# THE thresholds (printed in every report). fp32 is the bound; fp16/bf16 are the issue's
# bounds for rel_fro and cosine and for labels (measured figures sit far inside: see the report).
THRESHOLDS: dict[str, Thresholds] = {
    "fp32": Thresholds(max_rel_fro=1e-4, min_token_cos=0.99999, min_label_agreement=1.0),
    "fp16": Thresholds(max_rel_fro=2e-2, min_token_cos=0.995, min_label_agreement=0.995),
    "bf16": Thresholds(max_rel_fro=2e-2, min_token_cos=0.995, min_label_agreement=0.995),
    # int8 / fp8 (explicit Q/DQ, export/quantize.py): the labels and cosine bounds; rel_fro from the
    # measurements in docs/precision.md (quantized artifacts), where the passing graphs sit well inside it
    "int8": Thresholds(max_rel_fro=5e-2, min_token_cos=0.99, min_label_agreement=0.99),
    "fp8": Thresholds(max_rel_fro=5e-2, min_token_cos=0.99, min_label_agreement=0.99),
}


def _tokens(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64, copy=False)
    if a.ndim == 4 and a.shape[1] > 1:
        return np.moveaxis(a, 1, -1).reshape(-1, a.shape[1])
    if a.ndim == 4 or a.ndim == 1:
        return a.reshape(a.shape[0] if a.ndim == 4 else 1, -1)
    return a.reshape(-1, a.shape[-1])


def min_token_cosine(ref: np.ndarray, out: np.ndarray) -> float:
    r, o = _tokens(ref), _tokens(out)
    if r.size == 0:
        return 1.0
    nr, no = np.linalg.norm(r, axis=-1), np.linalg.norm(o, axis=-1)
    both_zero = (nr == 0) & (no == 0)
    cos = (r * o).sum(-1) / np.maximum(nr * no, 1e-30)
    cos = np.where(both_zero, 1.0, cos)
    return float(cos.min())


def relative_frobenius(ref: np.ndarray, out: np.ndarray) -> float:
    r, o = ref.astype(np.float64), out.astype(np.float64)
    denom = np.linalg.norm(r)
    return float(np.linalg.norm(o - r) / denom) if denom > 0 else float(np.linalg.norm(o - r))


def label_agreement(ref: np.ndarray, out: np.ndarray) -> float:
    """Integer maps are compared as they are; score maps [B,C,h,w] by their argmax over C."""
    if np.issubdtype(ref.dtype, np.floating):
        ref, out = ref.argmax(axis=1), out.argmax(axis=1)
    return float((ref == out).mean()) if ref.size else 1.0


@dataclass
class OutputParity:
    output: str
    case: str
    shape: list[int]
    rel_fro: float | None = None
    min_token_cos: float | None = None
    max_abs: float | None = None
    label_agreement: float | None = None
    passed: bool = True
    failures: list[str] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def compare_output(name: str, case: str, ref: np.ndarray, out: np.ndarray, task: str,
                   thresholds: Thresholds) -> OutputParity:
    res = OutputParity(name, case, list(ref.shape), failures=[])
    if tuple(ref.shape) != tuple(out.shape):
        res.passed = False
        res.failures.append(f"shape {list(out.shape)} != reference {list(ref.shape)}")
        return res
    is_labels = not np.issubdtype(ref.dtype, np.floating)
    if not is_labels:
        if not np.isfinite(out).all():
            res.failures.append(f"{int((~np.isfinite(out)).sum())} non-finite values")
        res.rel_fro = relative_frobenius(ref, out)
        res.min_token_cos = min_token_cosine(ref, out)
        res.max_abs = float(np.abs(out.astype(np.float64) - ref.astype(np.float64)).max()) if ref.size else 0.0
        if not res.rel_fro <= thresholds.max_rel_fro:
            res.failures.append(f"rel_fro {res.rel_fro:.2e} > {thresholds.max_rel_fro:.0e}")
        if not res.min_token_cos >= thresholds.min_token_cos:
            res.failures.append(f"min_token_cos {res.min_token_cos:.6f} < {thresholds.min_token_cos}")
    if task == "seg" and (is_labels or ref.ndim == 4):
        res.label_agreement = label_agreement(ref, out)
        if not res.label_agreement >= thresholds.min_label_agreement:
            res.failures.append(f"label_agreement {res.label_agreement:.4%} < {thresholds.min_label_agreement:.2%}")
    res.passed = not res.failures
    return res


def compare(ref: dict[str, np.ndarray], out: dict[str, np.ndarray], case: str, task: str,
            precision: str) -> list[OutputParity]:
    """Compare every reference output with the backend's (a missing output is a failure)."""
    th = THRESHOLDS[precision]
    rows = []
    for name, r in ref.items():
        if name not in out:
            rows.append(OutputParity(name, case, list(r.shape), passed=False, failures=["output missing"]))
            continue
        # a multi-head graph names outputs "<task>.<output>": each is judged by its own task's rules
        out_task = name.split(".", 1)[0] if task == "multi" else task
        rows.append(compare_output(name, case, r, np.asarray(out[name]), out_task, th))
    return rows
