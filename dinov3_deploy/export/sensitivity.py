"""Which layers an int8 / fp8 graph must keep in float: measured, not guessed.

Quantizing everything (the naive baseline) costs DINOv3 its labels: a few layers (those fed by the
massive storage-token channels, the attention's scores, the head) carry most of the error. The
search measures each layer's effect on the OUTPUT, on the calibration images, and keeps the worst
in fp32 until the graph passes its precision's gates there:

    qm = QuantModel(model, feeds, "int8", task="seg")        # fp32 graph + calibration inputs
    method = qm.choose_method()                              # minmax / percentile / entropy, by output error
    plan = search(qm, flops)                                 # ranking, kept layers, share of FLOPs quantized
    qdq = qm.build(plan.keep)

Sensitivity of a layer = the output's relative Frobenius error when that layer ALONE is quantized
(the rest in fp32). A layer sensitive enough to be a candidate for fp32 is first measured under each
other calibration method and keeps the one under which its error is lowest (one method for the
whole graph is a compromise between inputs as different as the softmax probabilities and the
LayerNorm outputs that carry the storage tokens' channels). Layers are then kept in that order,
most sensitive first, as few as make the whole graph pass (found by doubling, then bisecting the
count) the thresholds (parity.THRESHOLDS[precision]) tightened by SEARCH_MARGIN, so that the
verifier's images, which calibration never sees, have room.
Every graph here runs on ONNX Runtime's CPU provider (fp8 Q/DQ too: it rounds through float8e4m3fn
exactly as written and computes the matmul in fp32).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from dinov3_deploy.export.quantize import CALIB_METHODS, QLayer, calibrate, insert_qdq, quantizable_layers
from dinov3_deploy.verification.parity import THRESHOLDS, Thresholds, compare

SEARCH_MARGIN = 0.5  # the search aims at half the error budget of each gate on the calibration images


def search_thresholds(precision: str) -> Thresholds:
    th = THRESHOLDS[precision]
    return Thresholds(max_rel_fro=th.max_rel_fro * SEARCH_MARGIN,
                      min_token_cos=1 - (1 - th.min_token_cos) * SEARCH_MARGIN,
                      min_label_agreement=1 - (1 - th.min_label_agreement) * SEARCH_MARGIN)


@dataclass
class Score:
    """Outputs of one graph against the fp32 graph's, on the calibration images."""

    rel_fro: float
    min_token_cos: float
    label_agreement: float | None
    passed: bool

    def to_dict(self) -> dict:
        return {"rel_fro": self.rel_fro, "min_token_cos": self.min_token_cos,
                "label_agreement": self.label_agreement, "passed": self.passed}


class QuantModel:
    """An fp32 graph, its calibration inputs and reference outputs: builds and scores QDQ variants.

    The images are split: ranges are calibrated on the first half and every score is taken on the
    other half. Scored on the images its ranges came from, the search underestimated the error: a
    tiny seg model judged at rel 0.025 there measured 0.10 on the verifier's images. `split`: where
    the scoring images start, when not at half. The feeds may hold several input sizes (a dynamic
    export is judged at each size its verifier runs): outputs are compared size by size, the worst
    counts.

    `method` calibrates every layer but those `layer_methods` names (a layer whose measured error
    is lower with another method's ranges, refine_methods)."""

    def __init__(self, model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], precision: str,
                 task: str, method: str = "minmax", split: int | None = None) -> None:
        half = split if split is not None else (len(feeds) + 1) // 2 if len(feeds) > 1 else len(feeds)
        self.calib_feeds = feeds[:half]
        self.model, self.feeds, self.precision, self.task = model, feeds[half:] or feeds, precision, task
        self.layers: list[QLayer] = quantizable_layers(model)
        self.output_names = [o.name for o in model.graph.output]
        self.reference = self.run(model)
        self._ranges: dict[str, dict[str, float]] = {}
        self.method = method
        self.layer_methods: dict[str, str] = {}

    def ranges_of(self, method: str) -> dict[str, float]:
        if method not in self._ranges:
            self._ranges[method] = calibrate(self.model, self.calib_feeds, method)
        return self._ranges[method]

    @property
    def ranges(self) -> dict[str, float]:
        return self.ranges_of(self.method)

    def build(self, keep=frozenset(), layer_methods: dict[str, str] | None = None) -> onnx.ModelProto:
        methods = self.layer_methods if layer_methods is None else layer_methods
        own = {n: self.ranges_of(m) for n, m in methods.items() if m != self.method}
        return insert_qdq(self.model, self.layers, self.ranges, self.precision, keep=set(keep), layer_ranges=own)

    def run(self, model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
        """The outputs on the scoring images, one dict per input size (in the feeds' order)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        by_size: dict[tuple, list] = {}
        for f in self.feeds:
            by_size.setdefault(next(iter(f.values())).shape, []).append(sess.run(self.output_names, f))
        return [{n: np.concatenate([o[i] for o in outs]) for i, n in enumerate(self.output_names)}
                for outs in by_size.values()]

    def score(self, model: onnx.ModelProto, thresholds: Thresholds | None = None) -> Score:
        th = thresholds or search_thresholds(self.precision)
        rows = []
        for ref, out in zip(self.reference, self.run(model), strict=True):
            ref = {k: v for k, v in ref.items() if np.issubdtype(v.dtype, np.floating) and v.size}
            rows += compare(ref, out, "calibration", self.task, self.precision)
        rel = max(r.rel_fro for r in rows if r.rel_fro is not None)
        cos = min(r.min_token_cos for r in rows if r.min_token_cos is not None)
        labels = [r.label_agreement for r in rows if r.label_agreement is not None]
        label = min(labels) if labels else None
        ok = bool(np.isfinite(rel) and rel <= th.max_rel_fro and cos >= th.min_token_cos
                  and (label is None or label >= th.min_label_agreement))
        return Score(rel, cos, label, ok)

    def choose_method(self, methods=CALIB_METHODS) -> dict[str, Score]:
        """Score the fully quantized graph under each calibration method; keep the lowest error."""
        scores = {}
        for m in methods:
            self.method = m
            scores[m] = self.score(self.build())
        self.method = min(scores, key=lambda m: (-scores[m].passed, scores[m].rel_fro))
        return scores


@dataclass
class Plan:
    """The search's result: what stays fp32 and why, and what it costs."""

    method: str
    method_scores: dict[str, Score]
    sensitivity: dict[str, float]  # layer -> rel error with only that layer quantized
    keep: list[str]
    score: Score
    quantized_flop_share: float
    naive: Score
    seconds: float
    steps: list[dict] = field(default_factory=list)
    layer_methods: dict[str, str] = field(default_factory=dict)  # quantized layers not calibrated by `method`

    def kept_layers(self) -> list[dict]:
        return [{"layer": n, "sensitivity": self.sensitivity.get(n)} for n in self.keep]


def flop_share(flops: dict[str, int], layers: list[QLayer], keep) -> float:
    """Share of matmul FLOPs (calibration.matmul_flops) in quantized layers."""
    total = sum(flops.values())
    quantized = sum(flops.get(layer.name, 0) for layer in layers if layer.name not in keep)
    return quantized / max(total, 1)


RANK_IMAGES = 2  # calibration images the per-layer ranking runs on (one graph run per layer)
# a layer whose error alone is at least this share of the search's rel target is a candidate to keep
# in fp32: before that, each other calibration method is tried on it (refine_methods)
REFINE_SHARE = 0.2


def rank(qm: QuantModel, images: int = RANK_IMAGES, names: list[str] | None = None,
         methods: dict[str, str] | None = None) -> dict[str, float]:
    """Each layer's sensitivity: output rel error with that layer alone quantized (with its method in
    `methods`, else qm's), largest first, on the first `images` calibration images."""
    from dinov3_deploy.verification.parity import relative_frobenius

    names = [layer.name for layer in qm.layers] if names is None else names
    every = {layer.name for layer in qm.layers}
    feeds, qm.feeds = qm.feeds, qm.feeds[:images]
    try:
        ref = qm.run(qm.model)
        sens = {}
        for name in names:
            own = {name: (methods or {}).get(name, qm.layer_methods.get(name, qm.method))}
            outs = qm.run(qm.build(keep=every - {name}, layer_methods=own))
            sens[name] = max(relative_frobenius(r[k], out[k]) for r, out in zip(ref, outs, strict=True) for k in r
                             if np.issubdtype(r[k].dtype, np.floating) and r[k].size)
    finally:
        qm.feeds = feeds
    return dict(sorted(sens.items(), key=lambda kv: -kv[1]))


def refine_methods(qm: QuantModel, sens: dict[str, float], floor: float) -> tuple[dict[str, str], dict[str, float]]:
    """For every layer at least `floor` sensitive under qm's method, the calibration method under which
    it is least sensitive (measured like rank). Returns (layer -> method where not qm's, the
    sensitivities re-ranked with each layer's best). A layer whose ranges are the same under another
    method (ONNX Runtime's symmetric entropy often gives min-max's) is not run again."""
    by_name = {layer.name: layer for layer in qm.layers}
    best = {n: (s, qm.method) for n, s in sens.items() if s >= floor}
    base = qm.ranges
    for m in CALIB_METHODS:
        if m == qm.method:
            continue
        other = qm.ranges_of(m)
        names = [n for n in best if any(other.get(t) != base.get(t) for t in by_name[n].activations)]
        for n, s in rank(qm, names=names, methods=dict.fromkeys(names, m)).items():
            if s < best[n][0]:
                best[n] = (s, m)
    methods = {n: m for n, (_, m) in best.items() if m != qm.method}
    refined = {**sens, **{n: s for n, (s, _) in best.items()}}
    return methods, dict(sorted(refined.items(), key=lambda kv: -kv[1]))


def _fewest_kept(qm: QuantModel, ranked: list[str], sens: dict[str, float], steps: list[dict],
                 log=None) -> tuple[int, Score]:
    """The fewest of the ranked layers kept in fp32 that make the graph pass: double k until a graph
    passes, then bisect (each try is one run over the scoring images; keeping more of the ranked
    layers only removes quantization error). k = 0 is tried first."""

    def attempt(k: int) -> Score:
        s = qm.score(qm.build(keep=set(ranked[:k])))
        last = ranked[k - 1] if k else None
        steps.append({"keep": k, "layer": last, **s.to_dict()})
        if log and k:
            log(f"keeping the {k} most sensitive (last {last}, {sens[last]:.3g}): "
                f"rel {s.rel_fro:.3g}, labels {s.label_agreement}, {'pass' if s.passed else 'fail'}")
        return s

    tried = {0: attempt(0)}
    if tried[0].passed or not ranked:
        return 0, tried[0]
    lo, hi = 0, 1
    while hi < len(ranked) and not (tried.setdefault(hi, attempt(hi))).passed:
        lo, hi = hi, min(2 * hi, len(ranked))
    if hi not in tried:
        tried[hi] = attempt(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        tried[mid] = attempt(mid)
        lo, hi = (lo, mid) if tried[mid].passed else (mid, hi)
    return hi, tried[hi]


def search(qm: QuantModel, flops: dict[str, int], max_keep: int | None = None, log=None) -> Plan:
    """Choose the calibration method, rank the layers, refine the method of the sensitive ones, keep
    the most sensitive until the gates hold."""
    t = time.perf_counter()
    method_scores = qm.choose_method()
    naive = method_scores["minmax"]
    keep: list[str] = []
    score = method_scores[qm.method]
    sens: dict[str, float] = {}
    steps = [{"keep": 0, **score.to_dict()}]
    if not score.passed:
        sens = rank(qm)
        qm.layer_methods, sens = refine_methods(qm, sens, REFINE_SHARE * search_thresholds(qm.precision).max_rel_fro)
        if log and qm.layer_methods:
            log(f"calibrated otherwise than {qm.method}: " + ", ".join(f"{n} {m}" for n, m in qm.layer_methods.items()))
        ranked = list(sens)[: max_keep or len(sens)]
        k, score = _fewest_kept(qm, ranked, sens, steps, log)
        keep = ranked[:k]
    methods = {n: m for n, m in qm.layer_methods.items() if n not in keep}  # a kept layer has no method
    return Plan(qm.method, method_scores, sens, keep, score, flop_share(flops, qm.layers, keep), naive,
                round(time.perf_counter() - t, 1), steps, methods)
