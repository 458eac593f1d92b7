"""ONNX export of a DeployModule (deploy_module.py): one input, per-task outputs, precision
decided in the graph.

    module = DeployModule(task_model, "fp16", seg_output="labels")
    export_onnx(module, "model.onnx", shapes)          # dynamic batch/H/W unless static
    facts = graph_facts("model.onnx"); problems = check_graph(facts, "fp16", shapes)

Exporter: torch.onnx with `dynamo=True` and `dynamic_shapes` (torch.export). It gives a graph
without the TorchScript exporter's zero-placeholder `Reshape` guards (Equal/Where on shapes),
without `If`/`Tile`, with truly symbolic batch/H/W (H and W declared as multiples of the
backbone's input multiple), and keeps the reference's fp32 islands as explicit `Cast`s.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dinov3_deploy.deploy_module import DEFAULT_OPSET, PRECISIONS, SEG_OUTPUTS, DeployModule, output_names
from dinov3_deploy.errors import ArtifactError
from dinov3_deploy.manifest import GraphInfo, TensorInfo
from dinov3_deploy.shapes import ShapeSpec

# DeployModule lives in deploy_module.py; these names stay importable from here for callers that
# still do (bench/targets.py).
__all__ = ["PRECISIONS", "SEG_OUTPUTS", "DeployModule", "output_names", "export_onnx", "ensure_clean",
           "graph_facts", "check_graph", "GraphFacts", "ExportResult", "needs_external_data"]
# Default opsets live with DeployModule, which rewrites bf16 convs for opsets without bf16 Conv.
OPSET = DEFAULT_OPSET
# Protobuf cannot hold more than 2 GiB: above this the weights go to `model.onnx.data`.
EXTERNAL_DATA_BYTES = 1_800_000_000
# data-dependent control flow or shapes, and ops TensorRT runs slowly or not at all in a dynamic graph
FORBIDDEN_OPS = ("If", "Tile", "Loop", "Scan", "NonZero", "ScatterND")
# from opset 20 GridSample's bilinear mode is spelt "linear", which onnx-tensorrt parses as nearest
# (NVIDIA/TensorRT#4646): M2F's deformable-attention sampling would change silently in TensorRT
GRIDSAMPLE_MAX_OPSET = 19
# fed fp32 in every graph (Instance- / GroupNormalization: GroupNorm, Mask2Former's pixel decoder)
FP32_ISLAND_OPS = ("LayerNormalization", "InstanceNormalization", "GroupNormalization", "Softmax", "Sin", "Cos")

_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
                11: "float64", 16: "bfloat16", 17: "float8e4m3fn"}
# the compute dtype a MatMul/Conv has when its input comes through DequantizeLinear (export/quantize.py)
QUANT_COMPUTE = {"int8": "int8", "fp8": "float8e4m3fn"}


def needs_external_data(model: nn.Module, precision: str) -> bool:
    """True when the weights at `precision` would not fit a single protobuf (works on meta models)."""
    itemsize = torch.empty((), dtype=PRECISIONS[precision]).element_size()
    n = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    return n * itemsize > EXTERNAL_DATA_BYTES


def _example_dims(shapes: ShapeSpec) -> tuple[int, int, int]:
    """An example input inside the ranges that torch.export does not specialise: batch >= 2
    when dynamic (0/1 would become constants) and H != W when both are dynamic."""
    b, h, w = shapes.opt_shape
    if not shapes.batch.static and b < 2:
        b = min(2, shapes.batch.max)
    if not shapes.height.static and not shapes.width.static and h == w:
        m = shapes.multiple
        w = w + m if w + m <= shapes.width.max else w - m if w - m >= shapes.width.min else w
    return b, h, w


def _dynamic_shapes(module: DeployModule, shapes: ShapeSpec) -> dict | None:
    from torch.export import Dim

    m = shapes.multiple
    dims: dict[int, object] = {}
    if not shapes.batch.static:
        dims[0] = Dim("batch", min=shapes.batch.min, max=shapes.batch.max)
    h_axis, w_axis = (1, 2) if module.uint8_input else (2, 3)
    if not shapes.height.static:
        dims[h_axis] = m * Dim("height_blocks", min=shapes.height.min // m, max=shapes.height.max // m)
    if not shapes.width.static:
        dims[w_axis] = m * Dim("width_blocks", min=shapes.width.min // m, max=shapes.width.max // m)
    return {"x": dims} if dims else None


@dataclass
class ExportResult:
    path: Path
    files: list[str]  # written files, relative to path's folder
    opset: int
    external_data: bool
    example_shape: list[int]


def export_onnx(module: DeployModule, path: str | os.PathLike, shapes: ShapeSpec,
                external_data: bool | None = None, attention_plugin: bool = False,
                deform_plugin: bool = False) -> ExportResult:
    """Export `module` to `path`; weights go to `<path>.data` when large (or when asked).
    attention_plugin: the module runs attn_impl="triton"; each block's attention becomes one
    `dinov3_deploy.attention` node for TensorRT's dinov3_deploy::attention plugin (qkv split and
    RoPE stay standard ops, see engines/plugins.py). deform_plugin: the Mask2Former runs
    set_deform_impl("triton"); each deformable-attention core becomes one `dinov3_deploy.ms_deform_attn` node."""
    path = Path(path)
    opset = getattr(module, "opset", OPSET[module.precision])  # DeployModule's; a wrapper may not say
    if external_data is None:
        external_data = needs_external_data(module, module.precision)
    b, h, w = _example_dims(shapes)
    x = module.example_input(b, h, w)
    table = {}
    if attention_plugin:
        from dinov3_deploy.engines.plugins import onnx_translation_table

        table.update(onnx_translation_table(plugin=True))
    if deform_plugin:
        from dinov3_deploy.engines.plugins import ms_deform_attn_translation_table

        table.update(ms_deform_attn_translation_table())
    extra = {"custom_translation_table": table} if table else {}
    with torch.no_grad(), _quiet_torchvision_probe():
        program = torch.onnx.export(
            module, (x,), dynamo=True, dynamic_shapes=_dynamic_shapes(module, shapes),
            input_names=[module.input_name], output_names=module.output_names,
            opset_version=opset, verbose=False, report=False, optimize=False, **extra,
        )
        _optimize(program)
    program.save(str(path), external_data=external_data)
    _name_grid_dims(path)
    files = [path.name] + ([path.name + ".data"] if external_data and Path(str(path) + ".data").exists() else [])
    return ExportResult(path, files, opset, external_data, list(x.shape))


# onnxscript rewrite rules the exporter's optimisation runs that we leave out. SlicesSplit (several Slices of
# one tensor -> one Split) matches pairwise over every Slice: on the Mask2Former graph (hundreds of Slices in
# the deformable attention and the adapter) it took 324 of a 458 s export of the tiny segmentor on this 2-core
# CPU, for a rewrite neither ONNX Runtime nor TensorRT needs (both run the Slices as they are).
SLOW_REWRITES = ("SlicesSplit",)


def _optimize(program) -> None:
    """torch.onnx's own optimisation (constant folding, onnxscript's default rewrites, clean-up passes),
    without the rules in SLOW_REWRITES. onnxscript's optimize_ir reads the rule list from the rewriter module
    when it runs, so the list is narrowed around the call and restored."""
    from onnxscript import rewriter

    rules = getattr(rewriter, "_DEFAULT_REWRITE_RULES", None)
    if rules is None:  # another onnxscript layout: its optimisation as it is
        program.optimize()
        return
    rewriter._DEFAULT_REWRITE_RULES = tuple(r for r in rules if getattr(r, "name", None) not in SLOW_REWRITES)
    try:
        program.optimize()
    finally:
        rewriter._DEFAULT_REWRITE_RULES = rules


# torch.onnx's op registry looks up the torchvision ops it has ONNX functions for (nms, roi_align,
# ...) on every export and logs a warning for each when torchvision is absent. No DINOv3 graph uses
# them, and torchvision is no dependency of ours, so the four lines only read like a broken install.
_REGISTRY_LOGGER = "torch.onnx._internal.exporter._registration"


class _TorchvisionProbeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("torchvision is not installed")


@contextmanager
def _quiet_torchvision_probe():
    """Drop only the registry's "torchvision is not installed. Skipping torchvision::..." records
    while the export runs; every other exporter message still shows."""
    logger, probe_filter = logging.getLogger(_REGISTRY_LOGGER), _TorchvisionProbeFilter()
    logger.addFilter(probe_filter)
    try:
        yield
    finally:
        logger.removeFilter(probe_filter)


def _name_grid_dims(path: Path) -> None:
    """Give the exporter's anonymous output symbols (s75, s95, ...) names: the first two are the
    output grid's height and width (patch grid for ViT maps, last-stage grid for ConvNeXt tokens)."""
    import re

    import onnx

    model = onnx.load(str(path), load_external_data=False)
    order: list[str] = []
    for out in model.graph.output:
        for d in out.type.tensor_type.shape.dim:
            for sym in re.findall(r"\bs\d+\b", d.dim_param):
                if sym not in order:
                    order.append(sym)
    names = dict(zip(order, ("grid_h", "grid_w")))
    if not names:
        return
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    for v in list(model.graph.output) + list(model.graph.value_info):
        for d in v.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_param = pattern.sub(lambda m: names[m.group(1)], d.dim_param)
    onnx.save_model(model, str(path))  # initializers keep their external-data references


# -- graph facts and hygiene -------------------------------------------------------------------
@dataclass
class GraphFacts:
    opset: int
    inputs: list[dict]
    outputs: list[dict]
    op_counts: dict[str, int]
    fp32_islands: dict[str, Counter] = field(default_factory=dict)  # op -> Counter of input dtypes
    compute_dtypes: Counter = field(default_factory=Counter)  # MatMul/Conv input dtypes

    def to_info(self) -> GraphInfo:
        """The manifest's `onnx.graph`."""
        return GraphInfo(opset=self.opset, inputs=[TensorInfo(**t) for t in self.inputs],
                         outputs=[TensorInfo(**t) for t in self.outputs], nodes=sum(self.op_counts.values()),
                         op_counts=dict(sorted(self.op_counts.items())),
                         fp32_islands={k: dict(v) for k, v in self.fp32_islands.items()},
                         compute_dtypes=dict(self.compute_dtypes))


def _value_info(v) -> dict:
    t = v.type.tensor_type
    dims = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
    return {"name": v.name, "dtype": _ONNX_DTYPES.get(t.elem_type, str(t.elem_type)), "shape": dims}


def graph_facts(path: str | os.PathLike) -> GraphFacts:
    """Structure of an exported graph (after shape inference), without loading external weights."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    islands: dict[str, Counter] = {op: Counter() for op in FP32_ISLAND_OPS}
    compute: Counter = Counter()
    dequantized = {n.output[0]: n.input[0] for n in g.node if n.op_type == "DequantizeLinear"}
    for node in g.node:
        if node.op_type in islands and node.input:
            islands[node.op_type][_ONNX_DTYPES.get(types.get(node.input[0], 0), "unknown")] += 1
        if node.op_type in ("MatMul", "Conv", "Gemm"):
            x = dequantized.get(node.input[0], node.input[0])  # a quantized op computes in its Q/DQ dtype
            compute[_ONNX_DTYPES.get(types.get(x, 0), "unknown")] += 1
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    initializer_names = {t.name for t in g.initializer}
    return GraphFacts(
        opset=opset,
        inputs=[_value_info(v) for v in g.input if v.name not in initializer_names],
        outputs=[_value_info(v) for v in g.output],
        op_counts=dict(Counter(n.op_type for n in g.node)),
        fp32_islands={k: v for k, v in islands.items() if v},
        compute_dtypes=compute,
    )


def check_graph(facts: GraphFacts, precision: str, shapes: ShapeSpec | None = None, fp32_ops: int = 0) -> list[str]:
    """Problems with an exported graph (empty when it is clean). `fp32_ops`: the MatMul/Conv that
    fp32 islands (DeployModule.fp32_islands / opset_islands) keep in float32 on purpose."""
    problems = []
    if len(facts.inputs) != 1:
        problems.append(f"expected exactly one input, found {[i['name'] for i in facts.inputs]}")
    if facts.opset < 18:
        problems.append(f"opset {facts.opset} < 18")
    bad = {op: n for op, n in facts.op_counts.items() if op in FORBIDDEN_OPS}
    if bad:
        problems.append(f"forbidden ops in the graph: {bad}")
    if facts.op_counts.get("GridSample") and facts.opset > GRIDSAMPLE_MAX_OPSET:
        problems.append(f"GridSample at opset {facts.opset}: TensorRT parses opset 20's 'linear' mode as nearest; "
                        f"export at opset <= {GRIDSAMPLE_MAX_OPSET}")
    for op, dtypes in facts.fp32_islands.items():
        low = {d: n for d, n in dtypes.items() if d != "float32"}
        if low:
            problems.append(f"{op} fed {low} instead of float32")
    if precision != "fp32":
        want = {"fp16": "float16", "bf16": "bfloat16", **QUANT_COMPUTE}[precision]
        if facts.compute_dtypes.get(want, 0) == 0:
            problems.append(f"no MatMul/Conv runs in {want}: the graph is not {precision}")
        if facts.compute_dtypes.get("float32", 0) > fp32_ops:
            problems.append(f"{facts.compute_dtypes['float32']} MatMul/Conv still run in float32 "
                            f"({fp32_ops} of them fp32 islands)")
    if shapes is not None and facts.inputs:
        dims = facts.inputs[0]["shape"]
        h_axis, w_axis = (1, 2) if facts.inputs[0]["dtype"] == "uint8" else (2, 3)
        for axis, r, name in ((0, shapes.batch, "batch"), (h_axis, shapes.height, "height"),
                              (w_axis, shapes.width, "width")):
            if len(dims) == 4 and not r.static and not isinstance(dims[axis], str):
                problems.append(f"the {name} axis came out static ({dims[axis]}) though {r} was asked")
    return problems


def ensure_clean(path: str | os.PathLike, precision: str, shapes: ShapeSpec, fp32_ops: int = 0) -> GraphFacts:
    """onnx.checker + shape inference + hygiene; raise ArtifactError on any problem."""
    import onnx

    try:
        onnx.checker.check_model(str(path))  # path form: works with external data and > 2 GiB
    except onnx.checker.ValidationError as exc:
        raise ArtifactError(f"the exported ONNX fails onnx.checker: {exc}") from exc
    facts = graph_facts(path)
    problems = check_graph(facts, precision, shapes, fp32_ops)
    if problems:
        raise ArtifactError("the exported ONNX graph is not clean: " + "; ".join(problems))
    return facts
