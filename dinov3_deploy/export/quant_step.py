"""The export's int8 / fp8 step: fp32 ONNX graph + calibration images -> QDQ graph + what was decided.

    migrations = prepare(folded_model, x_calib)                 # SmoothQuant, before the fp32 ONNX export
    qdq, report = quantize_graph(fp32_onnx, x_calib, "int8", "seg", flops)

The pieces live where their one job is: smooth.py (range migration), quantize.py (calibration
ranges, Q/DQ insertion), sensitivity.py (method choice, ranking, kept layers). This module strings
them in the order the export needs and writes down the result the manifest records: every kept layer
with its measured sensitivity, the calibration method and why, the calibration set's hash, the
share of matmul FLOPs quantized.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import torch

from dinov3_deploy.errors import DeployError
from dinov3_deploy.export.quantize import FP8_MIN_OPSET, QUANT_PRECISIONS, feeds_hash
from dinov3_deploy.export.sensitivity import QuantModel, search, search_thresholds
from dinov3_deploy.export.smooth import SMOOTH_ALPHA, Migration, smooth_


@dataclass
class QuantReport:
    """What the quantization step decided and measured (the manifest's `quantization` record)."""

    precision: str
    calibration_method: str
    method_scores: dict[str, dict]
    calibration_hash: str
    calibration_images: int
    calibration_shape: list[int]
    smoothing_alpha: float
    smoothed: int
    kept_layers: list[dict]
    quantized_layers: int
    quantized_flop_share: float
    calibration_score: dict
    search_thresholds: dict
    seconds: float
    layer_methods: dict[str, str] = field(default_factory=dict)
    sensitivity: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(vars(self))


def check_quant_options(precision: str, *, plugin: bool, family: str, multi: bool, opset: int | None,
                        uint8_input: bool = False) -> int | None:
    """Refuse what cannot be quantized yet, in one line, before any work. Returns the opset to
    export at (fp8 needs FP8_MIN_OPSET; None: the default)."""
    if precision not in QUANT_PRECISIONS:
        return opset
    if plugin:
        raise DeployError(f"--precision {precision} cannot be combined with --attention plugin: the plugin's "
                          "attention takes fp16/bf16 inputs, not quantized ones; use --attention onnx")
    if family != "vit":
        raise DeployError(f"--precision {precision} supports ViT backbones only (ConvNeXt is not quantized yet)")
    if multi:
        raise DeployError(f"--precision {precision} supports one head per artifact (multi-head is not "
                          "quantized yet)")
    if uint8_input:
        raise DeployError(f"--precision {precision} cannot be combined with --uint8-input yet (calibration feeds "
                          "normalised float images); export without it")
    if precision == "fp8":
        if opset is not None and opset < FP8_MIN_OPSET:
            raise DeployError(f"--precision fp8 needs --opset {FP8_MIN_OPSET} or later (float8e4m3fn "
                              f"QuantizeLinear), got {opset}")
        return opset or FP8_MIN_OPSET
    return opset


def prepare(model: torch.nn.Module, x: torch.Tensor) -> list[Migration]:
    """SmoothQuant migration on the (folded) model, in place, measured on the calibration images."""
    with torch.no_grad():
        return smooth_(model, x, SMOOTH_ALPHA)


def split_feeds(name: str, sets: list[np.ndarray]) -> tuple[list[dict[str, np.ndarray]], int]:
    """One feed per image of every set (one set per input size): the first half of each set, then the
    second half of each. Returns (feeds, where the second halves start): QuantModel calibrates on the
    first part and judges on the second, so every size is in both, the first set's images first."""
    parts: tuple[list, list] = ([], [])
    for x in sets:
        h = (len(x) + 1) // 2 if len(x) > 1 else len(x)
        for i in range(len(x)):
            parts[i >= h].append({name: np.ascontiguousarray(x[i:i + 1]).astype(np.float32)})
    return parts[0] + parts[1], len(parts[0])


def quantize_graph(model: onnx.ModelProto, x: torch.Tensor | np.ndarray, precision: str, task: str,
                   flops: dict[str, int], migrations: list[Migration] | None = None,
                   log=None, more: list | tuple = ()) -> tuple[onnx.ModelProto, QuantReport]:
    """Quantize the fp32 graph `model` (input: the calibration images x, one feed per image, and
    the same images at the other sizes the artifact is verified at, `more`): choose the calibration
    method, keep the most sensitive layers until the search's gates hold on the scoring images at
    every size. Raises DeployError when even that cannot reach them."""
    sets = [t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t) for t in (x, *more)]
    feeds, split = split_feeds(model.graph.input[0].name, sets)
    qm = QuantModel(model, feeds, precision, task, split=split)
    plan = search(qm, flops, log=log)
    if not plan.score.passed:
        th = search_thresholds(precision)
        raise DeployError(f"{precision} quantization does not reach its gates on the calibration images even with "
                          f"{len(plan.keep)} layers kept in fp32 (rel {plan.score.rel_fro:.3g}, max "
                          f"{th.max_rel_fro:.3g}); use --precision fp16")
    qdq = qm.build(plan.keep)
    report = QuantReport(
        precision=precision, calibration_method=plan.method,
        method_scores={m: s.to_dict() for m, s in plan.method_scores.items()},
        calibration_hash=feeds_hash(feeds), calibration_images=len(feeds), calibration_shape=list(sets[0].shape[1:]),
        smoothing_alpha=SMOOTH_ALPHA, smoothed=len(migrations or []),
        kept_layers=plan.kept_layers(), quantized_layers=len(qm.layers) - len(plan.keep),
        quantized_flop_share=round(plan.quantized_flop_share, 4), calibration_score=plan.score.to_dict(),
        search_thresholds=vars(search_thresholds(precision)), seconds=plan.seconds, layer_methods=plan.layer_methods,
        sensitivity={k: round(v, 6) for k, v in plan.sensitivity.items()},
    )
    return qdq, report


@dataclass
class QuantInputs:
    """What the export measures on the folded model before tracing it: the calibration images, the
    matmul FLOPs per layer (for the quantized share) and the SmoothQuant migrations applied."""

    x: torch.Tensor  # at the tuned (opt) size: smoothing, FLOPs, the search's ranking
    flops: dict[str, int]
    migrations: list[Migration]
    more: list[torch.Tensor] = field(default_factory=list)  # the same images at the verifier's other sizes


def prepare_export_model(model: torch.nn.Module, x: torch.Tensor, more: list[torch.Tensor] = ()) -> QuantInputs:
    """Count FLOPs at the calibration shape, then smooth the folded model in place."""
    from dinov3_deploy.export.calibration import matmul_flops

    flops = matmul_flops(model, x[:1])
    return QuantInputs(x, flops, prepare(model, x), list(more))


def quantize_onnx_file(path, inputs: QuantInputs, precision: str, task: str, log=None) -> QuantReport:
    """Replace the fp32 graph at `path` by its QDQ graph (inside the export's temporary directory)."""
    model = onnx.load(str(path))
    qdq, report = quantize_graph(model, inputs.x, precision, task, inputs.flops, inputs.migrations, log=log,
                                 more=inputs.more)
    onnx.save(qdq, str(path))
    return report


def is_quantized(precision: str) -> bool:
    return precision in QUANT_PRECISIONS
