"""Parity of a backend's outputs against the fp32 PyTorch reference: the metrics, the ONE table
of thresholds, and the comparator. Knows nothing about backends: it compares dicts of arrays.

Metrics per output:
  rel_fro          ||out - ref||_F / ||ref||_F
  min_token_cos    the worst cosine similarity over tokens: a token is a pixel's channel vector for
                   [B,C,h,w] maps, a row of [B,N,D] / [B,D] tokens, a whole image for 1-channel maps
  max_abs          max |out - ref| (reported, not gated: its scale depends on the output)
  label_agreement  seg only: 1 - (label flips beyond the precision's margin) / (pixels judged); near
                   ties (flips the measured error can explain) are reported beside it, not counted.
                   See `judge_labels` for the one definition (verify, bench and the precision report).

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


# Outputs with their own measured row, judged by it instead of their precision's: Mask2Former's class and mask
# logits at fp16 / bf16 (keyed by the output's name without a "<task>." prefix). The masked attention keeps,
# per query, the key positions where the previous mask logit has sigmoid >= 0.5: a perturbation far below the
# precision's rounding flips entries near 0.5 and the next layers attend elsewhere, so these logits move by
# more than the format's rounding. Measured (docs/m2f.md; vit_tiny_test, hidden 32, random head, verify's
# images): the fp32 model with only its input rounded to fp16 already moves mask logits by rel 1.6e-2, min
# cos 0.979, class logits by rel 1.4e-2, cos 0.990 (rows below). The semantic
# scores they make (the output people use) keep the precision's gate with its labels.
OUTPUT_THRESHOLDS: dict[tuple[str, str], Thresholds] = {
    # fp16 measured, worst of PyTorch / ONNX Runtime / onnx-reference at 2x64x64: class rel 3.2e-2, cos 0.976;
    # mask rel 3.8e-2, cos 0.859. Rows: about 3x the rel, 4x (class) / 2x (mask) the cosine's distance to 1
    ("fp16", "class_logits"): Thresholds(max_rel_fro=1e-1, min_token_cos=0.9, min_label_agreement=1.0),
    ("fp16", "mask_logits"): Thresholds(max_rel_fro=1e-1, min_token_cos=0.7, min_label_agreement=1.0),
    # bf16 (M2F export refused for now: its scores miss bf16's gate, m2f_model.check_m2f_options), measured, worst
    # of PyTorch / onnx-reference: class rel 6.8e-2, cos 0.968; mask rel 8.9e-2, cos 0.53 (a pixel where one of
    # the 100 queries' logits jumps: the mask row's cosine only rules out anti-correlation, its rel gates)
    ("bf16", "class_logits"): Thresholds(max_rel_fro=2e-1, min_token_cos=0.9, min_label_agreement=1.0),
    ("bf16", "mask_logits"): Thresholds(max_rel_fro=2e-1, min_token_cos=0.0, min_label_agreement=1.0),
}


def gate(precision: str, output: str) -> tuple[str, Thresholds]:
    """The gate `output` is judged by, and its name as reports print it: the output's own row in
    OUTPUT_THRESHOLDS ("fp16 mask_logits"), else the precision's ("fp16")."""
    own = (precision, output.rpartition(".")[2])
    if own in OUTPUT_THRESHOLDS:
        return " ".join(own), OUTPUT_THRESHOLDS[own]
    return precision, THRESHOLDS[precision]


def output_gates(precision: str, outputs) -> dict[str, dict]:
    """The outputs among `outputs` that have their own row, with its thresholds (reports print them)."""
    gates = {o: gate(precision, o) for o in outputs}
    return {o: asdict(th) for o, (name, th) in gates.items() if name != precision}


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
    """The raw share of equal labels: integer maps as they are, score maps [B,C,h,w] by their argmax
    over C. Every flip counts, near tie or not: the gate uses `judge_labels`; this stays for label
    maps that come without scores (the end-to-end bench compares only labels)."""
    if np.issubdtype(ref.dtype, np.floating):
        ref, out = ref.argmax(axis=1), out.argmax(axis=1)
    return float((ref == out).mean()) if ref.size else 1.0


# How far a low precision moves a pixel's top-1 minus top-2 logit difference, in units of what was
# measured on the same comparison: the logits' error has RMS rel_fro * (logit RMS); at a pixel that is
# rel_fro * (that pixel's logit RMS over classes), since fp16/bf16 rounding is relative to magnitude.
# The difference of two classes' errors has sqrt(2) times that RMS (independent errors), and a change
# past NEAR_TIE_SIGMAS of those is a 4-sigma event (6e-5 two-sided for a Gaussian): a flip whose
# reference margin exceeds the bound is one the measured error does not explain, and it counts.
NEAR_TIE_SIGMAS = 4.0
# Labels are judged on the logits upsampled bilinearly (as inference does) by the smallest whole factor
# that gives at least this many pixels: 65536 is the output resolution of the smallest 256x256 input,
# where the 256 patch labels alone would let two near-tie flips fail 99.5 % (measured: docs/precision.md).
MIN_LABEL_PIXELS = 65536


def bound_factor(rel_fro: float) -> float:
    """The margin bound over a pixel's logit RMS over classes (see NEAR_TIE_SIGMAS)."""
    return float(NEAR_TIE_SIGMAS * np.sqrt(2.0) * rel_fro)


@dataclass
class LabelParity:
    """What the labels did: `flips` of `pixels` changed; `near_tie_flips` of them had a reference margin
    within the bound (reported, not counted); `beyond_margin` did not. `near_tie_pixels`: pixels whose
    margin is within the bound (None for bare label maps, whose margins exist only where they flipped).
    `bound_factor`: the bound over the pixel's logit RMS (`bound_factor(rel_fro)`)."""

    pixels: int
    flips: int
    beyond_margin: int
    near_tie_flips: int
    near_tie_pixels: int | None
    bound_factor: float
    upsample: int
    worst_margin_over_bound: float | None = None  # among counted flips: the largest reference margin / bound

    @property
    def agreement(self) -> float:
        return 1.0 - self.beyond_margin / self.pixels if self.pixels else 1.0

    def describe(self) -> str:
        where = f"{self.pixels} px" + (f" (logits upsampled x{self.upsample})" if self.upsample > 1 else "")
        ties = f"{self.near_tie_flips} near-tie flips within the bound not counted"
        if self.near_tie_pixels is not None:
            ties += f", {self.near_tie_pixels} near-tie px ({self.near_tie_pixels / max(self.pixels, 1):.2%})"
        return (f"{self.beyond_margin} flips beyond the margin of {where}; bound {self.bound_factor:.3g} x the "
                f"pixel's logit RMS ({NEAR_TIE_SIGMAS:g} sigma of the measured error); {ties}")


def _upsampled(scores: np.ndarray) -> tuple[np.ndarray, int]:
    b, _, h, w = scores.shape
    factor = 1
    while b * (h * factor) * (w * factor) < MIN_LABEL_PIXELS:
        factor += 1
    if factor == 1:
        return scores.astype(np.float32, copy=False), 1
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))
    return F.interpolate(t, size=(h * factor, w * factor), mode="bilinear", align_corners=False).numpy(), factor


def _top2(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel of [B,C,H,W]: the argmax, the top-1 minus top-2 margin, and the RMS over classes."""
    top = np.partition(scores, -2, axis=1)[:, -2:] if scores.shape[1] > 1 else np.concatenate([scores] * 2, 1)
    rms = np.sqrt(np.mean(np.square(scores, dtype=np.float64), axis=1))
    return scores.argmax(axis=1), (top[:, 1] - top[:, 0]).astype(np.float64), rms


def _sample(scores: np.ndarray, idx: tuple[np.ndarray, ...], size: tuple[int, int]) -> np.ndarray:
    """[n, C] scores at pixels `idx` = (b, y, x) of `scores` bilinearly resized to `size` (align_corners
    False, as F.interpolate and the deploy module's labels): only the pixels asked for are computed."""
    b, y, x = idx
    h, w = scores.shape[-2:]

    def axis(dst, n_in, n_out):
        src = np.maximum((dst + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0

    y0, y1, wy = axis(y, h, size[0])
    x0, x1, wx = axis(x, w, size[1])
    s = scores.astype(np.float64)

    def at(yy, xx):
        return s[b, :, yy, xx]

    wy, wx = wy[:, None], wx[:, None]
    return (at(y0, x0) * (1 - wy) * (1 - wx) + at(y0, x1) * (1 - wy) * wx
            + at(y1, x0) * wy * (1 - wx) + at(y1, x1) * wy * wx)


def _worst(margin: np.ndarray, bound: np.ndarray) -> float | None:
    """The largest margin / bound among counted flips (None without a bound: non-finite outputs)."""
    return float((margin / bound).max()) if margin.size and (bound > 0).all() else None


def judge_labels(ref_scores: np.ndarray | None, rel_fro: float, out_scores: np.ndarray | None = None,
                 ref_labels: np.ndarray | None = None, out_labels: np.ndarray | None = None) -> LabelParity:
    """THE label metric. Either score maps (`ref_scores`, `out_scores` [B,C,h,w], judged upsampled to at
    least MIN_LABEL_PIXELS) or label maps (`ref_labels`, `out_labels` [B,H,W], with the reference's
    score maps for margins where given). `rel_fro`: the measured relative error of the scores of this
    same comparison, from which the per-pixel bound (bound_factor(rel_fro) x the pixel's logit RMS) comes."""
    factor = bound_factor(rel_fro)
    if ref_labels is None:
        ref_up, upsample = _upsampled(ref_scores)
        ref_labels, margin, rms = _top2(ref_up)
        flipped = ref_labels != _upsampled(out_scores)[0].argmax(axis=1)
        bound = factor * rms
        near = margin <= bound
        beyond = flipped & ~near
        return LabelParity(int(ref_labels.size), int(flipped.sum()), int(beyond.sum()), int((flipped & near).sum()),
                           int(near.sum()), factor, upsample, _worst(margin[beyond], bound[beyond]))
    flipped = ref_labels != out_labels
    n = int(flipped.sum())
    if ref_scores is None or n == 0:  # no scores: every flip counts
        return LabelParity(int(ref_labels.size), n, n, 0, None, factor if ref_scores is not None else 0.0, 1)
    _, margin, rms = _top2(_sample(ref_scores, np.nonzero(flipped), ref_labels.shape[-2:]).T[None, :, :, None])
    margin, bound = margin.reshape(-1), factor * rms.reshape(-1)
    beyond = margin > bound
    return LabelParity(int(ref_labels.size), n, int(beyond.sum()), int((~beyond).sum()), None, factor, 1,
                       _worst(margin[beyond], bound[beyond]))


@dataclass
class OutputParity:
    output: str
    case: str
    shape: list[int]
    rel_fro: float | None = None
    min_token_cos: float | None = None
    max_abs: float | None = None
    label_agreement: float | None = None  # the gated figure: 1 - flips beyond the margin / pixels
    labels: dict | None = None  # LabelParity's fields: flips, near ties, the bound used
    gate: str = ""  # the thresholds row it was judged by (`gate`)
    passed: bool = True
    failures: list[str] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def compare_output(name: str, case: str, ref: np.ndarray, out: np.ndarray, task: str,
                   thresholds: Thresholds, scores: tuple[np.ndarray, float] | None = None) -> OutputParity:
    """One output against its reference. `scores`: for a label map, the reference's score maps and
    their measured rel_fro in this comparison (what the near-tie margins are judged from)."""
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
    # a seg score map's labels are judged; not M2F's per-query mask logits (argmax over queries means nothing)
    if task == "seg" and (is_labels or ref.ndim == 4) and ref.size and not name.endswith("mask_logits"):
        if is_labels:
            ref_scores, rel = scores if scores is not None else (None, 0.0)
            lp = judge_labels(ref_scores, rel, ref_labels=ref, out_labels=out)
        else:
            lp = judge_labels(ref, res.rel_fro if np.isfinite(res.rel_fro) else 0.0, out)
        res.label_agreement, res.labels = lp.agreement, asdict(lp)
        if not res.label_agreement >= thresholds.min_label_agreement:
            res.failures.append(f"label_agreement {res.label_agreement:.4%} < {thresholds.min_label_agreement:.2%}: "
                                f"{lp.describe()}")
    res.passed = not res.failures
    return res


def _scores_of(name: str) -> str:
    """The score output a label map is the argmax of: `labels` -> `logits`, `seg.labels` -> `seg.logits`."""
    head, _, last = name.rpartition(".")
    return (head + "." if head else "") + "logits" if last == "labels" else ""


def compare(ref: dict[str, np.ndarray], out: dict[str, np.ndarray], case: str, task: str,
            precision: str) -> list[OutputParity]:
    """Compare every reference output with the backend's (a missing output is a failure), each by its
    gate (`gate`: its own row or the precision's)."""
    rows: dict[str, OutputParity] = {}
    # score maps first: a label map's near-tie margins come from its scores' measured error
    for name in sorted(ref, key=lambda n: not np.issubdtype(np.asarray(ref[n]).dtype, np.floating)):
        r = ref[name]
        if name not in out:
            rows[name] = OutputParity(name, case, list(r.shape), passed=False, failures=["output missing"])
            continue
        # a multi-head graph names outputs "<task>.<output>": each is judged by its own task's rules
        out_task = name.split(".", 1)[0] if task == "multi" else task
        sib = rows.get(_scores_of(name)) or rows.get(_scores_of(name).replace("logits", "scores"))
        scores = (ref[sib.output], sib.rel_fro) if sib is not None and sib.rel_fro is not None else None
        row_name, th = gate(precision, name)
        rows[name] = compare_output(name, case, r, np.asarray(out[name]), out_task, th, scores)
        rows[name].gate = row_name
    return [rows[name] for name in ref]
