"""Explicit int8 / fp8 quantization of an fp32 ONNX graph: QuantizeLinear/DequantizeLinear pairs in
front of every matmul that runs quantized.

    layers = quantizable_layers(model)                         # MatMul / Conv nodes, by module name
    ranges = calibrate(model, feeds, "percentile")             # activation ranges (ONNX Runtime's calibrators)
    qdq = insert_qdq(model, layers, ranges, "int8", keep={"backbone.blocks.0.mlp.fc2"})

What the graph holds, per quantized layer (a Linear's MatMul, a Conv, or one of an attention's two
activation matmuls, q @ k^T and softmax @ v):
  - weights: stored int8 / float8e4m3fn, symmetric, one scale per output channel, behind one
    DequantizeLinear (no Q on a constant);
  - activations: Q -> DQ with one scale per tensor from calibration, zero point 0, a dedicated pair per
    consuming node (TensorRT may not share a pair between nodes);
  - the matmul's output stays float: no Q after it (the next op decides its own precision).
That is the form TensorRT's strongly typed explicit quantization consumes, and on ONNX Runtime's CPU
provider the DQ -> MatMul pattern with float output fuses into MatMulIntegerToFloat (int8). FP8 is
E4M3 (max 448) and needs opset 19.

Why not `quantize_static` end to end: it re-runs calibration on every call, accepts only the
Distribution method for fp8, and quantizes whole op types. The sensitivity search (sensitivity.py)
builds dozens of graphs that differ in which layers are kept in fp32; inserting pairs from ranges
computed once takes milliseconds. ONNX Runtime's calibrators (MinMax / Percentile / Entropy) do
the range measurement.
"""

from __future__ import annotations

import copy
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dinov3_deploy.errors import DeployError

QUANT_PRECISIONS = ("int8", "fp8")
CALIB_METHODS = ("minmax", "percentile", "entropy")
QMAX = {"int8": 127.0, "fp8": 448.0}  # symmetric int8 [-127, 127] (TensorRT); float8e4m3fn's largest finite
FP8_MIN_OPSET = 19
PERCENTILE = 99.99  # of |x| over the calibration images, for the percentile method


@dataclass(frozen=True)
class QLayer:
    """A matmul that can run quantized: its node, the module it computes (matmul_flops' key), the
    constant weight input (None for the attention's activation matmuls) and its channel axis."""

    node: str
    name: str
    op_type: str
    weight: str | None
    axis: int
    activations: tuple[str, ...]


def _module_of(node: onnx.NodeProto) -> str | None:
    """The module a node belongs to, from the exporter's name scopes ('model.' prefix dropped)."""
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            scopes = [s for s in eval(p.value) if s]  # noqa: S307 - the exporter writes a Python list literal
            if len(scopes) >= 2:
                name = scopes[-2]
                return name[len("model."):] if name.startswith("model.") else name
    return None


def quantizable_layers(model: onnx.ModelProto) -> list[QLayer]:
    """Every MatMul / Conv of the graph, named like calibration.matmul_flops: a Linear or Conv by its
    module, an attention's activation matmuls as '<attn>.scores' and '<attn>.weighted_v'."""
    inits = {i.name for i in model.graph.initializer}
    layers, seen_attn = [], {}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Conv"):
            continue
        module = _module_of(node) or node.name
        weight = node.input[1] if node.input[1] in inits else None
        if weight is None:  # q @ k^T, then softmax @ v, inside one attention module
            k = seen_attn.get(module, 0)
            seen_attn[module] = k + 1
            module = f"{module}.{('scores', 'weighted_v')[min(k, 1)]}"
            acts = (node.input[0], node.input[1])
        else:
            acts = (node.input[0],)
        layers.append(QLayer(node.name, module, node.op_type, weight, 0 if node.op_type == "Conv" else 1, acts))
    return layers


class _Feeds:
    """ONNX Runtime's CalibrationDataReader over a list of input dicts (re-iterable)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds, self.i = feeds, 0

    def get_next(self):
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.feeds = self.feeds[start_index:end_index]


def calibrate(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], method: str) -> dict[str, float]:
    """Symmetric range (max |x| as the method estimates it) of every matmul input tensor, from ONNX
    Runtime's calibrator for `method` run on the feeds."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    if method not in CALIB_METHODS:
        raise DeployError(f"calibration method must be one of {', '.join(CALIB_METHODS)}, got '{method}'")
    ort_method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                  "entropy": CalibrationMethod.Entropy}[method]
    extra = {"symmetric": True}
    if method == "percentile":
        extra["percentile"] = PERCENTILE
    with tempfile.TemporaryDirectory(prefix="dinov3-calib.") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, path)
        cal = create_calibrator(path, ["MatMul", "Conv"], augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                calibrate_method=ort_method, extra_options=extra,
                                providers=["CPUExecutionProvider"])
        by_size: dict[tuple, list] = {}  # the histogram collectors stack a call's tensors: one call per input size
        for feed in feeds:
            by_size.setdefault(tuple(a.shape for a in feed.values()), []).append(feed)
        for group in by_size.values():
            cal.collect_data(_Feeds(group))  # ranges and histograms accumulate over calls
        data = cal.compute_data()
    ranges = {}
    for name in data:
        lo, hi = data[name].range_value
        ranges[name] = float(max(abs(float(np.asarray(lo).max())), abs(float(np.asarray(hi).max()))))
    return ranges


def _quantize_weight(w: np.ndarray, axis: int, precision: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric quantization along `axis`: (stored values, scales)."""
    other = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=other).astype(np.float64)
    scale = np.where(amax > 0, amax / QMAX[precision], 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    scaled = w / scale.reshape(shape)
    if precision == "int8":
        return np.clip(np.rint(scaled), -127, 127).astype(np.int8), scale
    import ml_dtypes

    return np.clip(scaled, -448, 448).astype(ml_dtypes.float8_e4m3fn), scale


def _zero(precision: str, name: str, shape: tuple[int, ...] = ()) -> TensorProto:
    """Zero point 0 (symmetric); per-axis DequantizeLinear takes one per channel."""
    if precision == "int8":
        return numpy_helper.from_array(np.zeros(shape, np.int8), name)
    import ml_dtypes

    return numpy_helper.from_array(np.zeros(shape, ml_dtypes.float8_e4m3fn), name)


def activation_scale(absmax: float, precision: str) -> float:
    """Scale of an activation whose calibrated range is absmax (finite and positive always)."""
    return float(absmax / QMAX[precision]) if np.isfinite(absmax) and absmax > 0 else 1.0


def insert_qdq(model: onnx.ModelProto, layers: list[QLayer], ranges: dict[str, float], precision: str,
               keep: set[str] | frozenset[str] = frozenset(),
               layer_ranges: dict[str, dict[str, float]] | None = None) -> onnx.ModelProto:
    """A copy of `model` with Q/DQ pairs on every layer not named in `keep` (module docstring).
    `layer_ranges`: for the layers it names, the activation ranges to use instead of `ranges` (a
    layer calibrated with another method than the rest; each layer has its own Q/DQ pair)."""
    if precision not in QUANT_PRECISIONS:
        raise DeployError(f"quantization precision must be one of {', '.join(QUANT_PRECISIONS)}, got '{precision}'")
    out = copy.deepcopy(model)
    opset = next(o.version for o in out.opset_import if o.domain in ("", "ai.onnx"))
    if precision == "fp8" and opset < FP8_MIN_OPSET:
        raise DeployError(f"fp8 Q/DQ needs opset {FP8_MIN_OPSET} or later; the graph is opset {opset}")
    g = out.graph
    inits = {i.name: i for i in g.initializer}
    nodes = {n.name: n for n in g.node}
    new_nodes: dict[str, list[onnx.NodeProto]] = {}  # node name -> nodes to insert before it
    for layer in layers:
        if layer.name in keep:
            continue
        node, before = nodes[layer.node], []
        for idx, tensor in enumerate(node.input[:2]):
            stem = f"{layer.node}_in{idx}"
            if tensor == layer.weight:
                w = numpy_helper.to_array(inits[tensor])
                q, scale = _quantize_weight(w, layer.axis, precision)
                g.initializer.extend([numpy_helper.from_array(q, f"{stem}_w"),
                                      numpy_helper.from_array(scale, f"{stem}_scale"),
                                      _zero(precision, f"{stem}_zp", scale.shape)])
                before.append(helper.make_node("DequantizeLinear", [f"{stem}_w", f"{stem}_scale", f"{stem}_zp"],
                                               [f"{stem}_dq"], name=f"{stem}_dq", axis=layer.axis))
            else:
                own = (layer_ranges or {}).get(layer.name, ranges)
                if tensor not in own:
                    raise DeployError(f"no calibrated range for '{tensor}', input of {layer.name}")
                scale = np.array(activation_scale(own[tensor], precision), np.float32)
                g.initializer.extend([numpy_helper.from_array(scale, f"{stem}_scale"),
                                      _zero(precision, f"{stem}_zp", scale.shape)])
                before += [helper.make_node("QuantizeLinear", [tensor, f"{stem}_scale", f"{stem}_zp"], [f"{stem}_q"],
                                            name=f"{stem}_q"),
                           helper.make_node("DequantizeLinear", [f"{stem}_q", f"{stem}_scale", f"{stem}_zp"],
                                            [f"{stem}_dq"], name=f"{stem}_dq")]
            node.input[idx] = f"{stem}_dq"
        new_nodes[layer.node] = before
    _keep_bias_add(out, {layer.node for layer in layers if layer.weight is not None and layer.name not in keep})
    ordered = []
    for n in g.node:
        ordered += new_nodes.get(n.name, [])
        ordered.append(n)
    del g.node[:]
    g.node.extend(ordered)
    used = {t for n in g.node for t in n.input}
    unused = [i for i in g.initializer if i.name not in used]
    for i in unused:  # the fp32 copies of quantized weights
        g.initializer.remove(i)
    return out


def _keep_bias_add(model: onnx.ModelProto, matmuls: set[str]) -> None:
    """Give the bias Add after each quantized 3-D MatMul a [1, 1, N] bias (the same sum, broadcast).

    ONNX Runtime's MatMulAddFusion (level 1) turns MatMul + Add with a [N] bias into Reshape + Gemm +
    Reshape before its QDQ fusions (level 2) run: the Gemm then takes the DequantizeLinear outputs in
    float, so the layer runs as an fp32 GEMM behind a Q, a DQ and a per-call dequantization of its
    weights (slower than fp32: what made the default QDQ graph 0.84x fp32 here). It fuses only a 1-D
    bias into a 3-D MatMul; with the bias [1, 1, N] the DQ -> MatMul pattern stays and becomes
    MatMulIntegerToFloat. TensorRT reads either form."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    ranks = _ranks(model)
    for n in g.node:
        if n.name not in matmuls or n.op_type != "MatMul" or ranks.get(n.input[0], 3) < 3:
            continue
        (add, *more) = consumers.get(n.output[0], [None])
        if more or add is None or add.op_type != "Add":
            continue
        idx = 1 if add.input[0] == n.output[0] else 0
        bias = inits.get(add.input[idx])
        if bias is None or len(bias.dims) != 1:
            continue
        b = numpy_helper.to_array(bias).reshape(1, 1, -1)
        g.initializer.append(numpy_helper.from_array(b, f"{add.name}_bias_1x1xN"))
        add.input[idx] = f"{add.name}_bias_1x1xN"


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Rank of every tensor shape inference can tell (inputs of the MatMuls)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    vis = list(inferred.graph.value_info) + list(inferred.graph.input)
    return {v.name: len(v.type.tensor_type.shape.dim) for v in vis if v.type.tensor_type.HasField("shape")}


def quantized_layers(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes of a QDQ graph whose inputs come from DequantizeLinear (what runs quantized)."""
    dq_out = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name for n in model.graph.node if n.op_type in ("MatMul", "Conv") and any(i in dq_out for i in n.input)}


def feeds_hash(feeds: list[dict[str, np.ndarray]]) -> str:
    """sha256 of the calibration inputs as the graph sees them (names, shapes, float32 bytes)."""
    h = hashlib.sha256()
    for feed in feeds:
        for name in sorted(feed):
            a = np.ascontiguousarray(feed[name])
            h.update(name.encode())
            h.update(str(a.shape).encode())
            h.update(a.tobytes())
    return h.hexdigest()
