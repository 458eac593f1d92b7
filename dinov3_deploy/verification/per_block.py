"""`verify --per-block`: where does a deployed model leave the fp32 reference? The final outputs
only say *that* it does; a precision fault (an fp16 overflow, a bf16 residual add, a bad fold) starts
in one block and is carried by every block after it. So this runs a debug copy of the artifact's
graph that also outputs every ViT block's tokens (ConvNeXt: every stage's map), with the same
weights, shapes and precision, and compares each with the same module's output in the fp32 PyTorch
reference (forward hooks), with the metrics and thresholds of parity.py.

Finding the block outputs: the torch exporter records, on every node, the module scopes it was
traced in (`pkg.torch.onnx.name_scopes`, e.g. ['', 'model', 'model.backbone.blocks.3', ...]). A
block's output is the tensor that the last of its nodes (graph order is topological) hands to a
node outside the block: the residual Add that ends it, or a Cast after it. Those scope names are
also the reference module's submodule paths, so the hooks need no second naming scheme. A graph
without that metadata (not written by the torch exporter) is refused with a clear error.

The debug graph lives in a temporary directory, never inside the artifact (its hashes stay valid).
On TensorRT the extra graph outputs become network outputs when the debug graph is parsed, so the
engine path builds a debug engine with the artifact's recorded settings; marking tensors as outputs
stops TensorRT fusing across them, so its figures can differ a little from the production engine's.
"""

from __future__ import annotations

import ast
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dinov3_deploy.errors import DeployError
from dinov3_deploy.verification.parity import THRESHOLDS, compare, min_token_cosine, relative_frobenius

SCHEMA = "dinov3-deploy-per-block"
SCOPES_KEY = "pkg.torch.onnx.name_scopes"
# ops whose outputs are shapes/indices shared across blocks by the exporter, never a block's tokens
_NOT_TOKENS = {"Constant", "Shape", "Slice", "Gather", "Concat", "Unsqueeze", "Squeeze", "Range", "Reshape"}


@dataclass(frozen=True)
class BlockKind:
    """One kind of block of a head family: `part` names it in the report ("" for the backbone of a
    backbone-only family); `pattern` matches the module scope (the exact scope, not its children), its
    group 1 the block's index (no group: a single block, index 0)."""

    part: str
    pattern: re.Pattern


def _kind(part: str, scope: str) -> BlockKind:
    return BlockKind(part, re.compile(rf"^(?:.*\.)?{scope}$"))


_VIT_BLOCKS = _kind("", r"backbone\.blocks\.(\d+)")
#: The blocks per-block compares, per family, in the order data flows through them. The Mask2Former
#: segmentor (reference/models/m2f_*.py): the backbone blocks, the adapter's interaction blocks, the pixel
#: decoder's deformable encoder layers and its mask-feature projection, the masked-attention decoder's
#: layers (each ends with its FFN layer).
BLOCK_TABLES: dict[str, tuple[BlockKind, ...]] = {
    "vit": (_VIT_BLOCKS,),
    "convnext": (_kind("", r"backbone\.stages\.(\d+)"),),
    "m2f": (
        _kind("backbone", r"backbone\.blocks\.(\d+)"),
        _kind("adapter", r"segmentation_model\.0\.interactions\.(\d+)"),
        _kind("pixel decoder", r"pixel_decoder\.encoder\.encoder\.layers\.(\d+)"),
        _kind("mask features", r"pixel_decoder\.mask_feature"),
        _kind("decoder", r"predictor\.transformer_ffn_layers\.(\d+)"),
    ),
}


def block_family(manifest) -> str:
    """The family whose block table applies to an artifact: m2f for a Mask2Former head, else its backbone's."""
    if manifest.head is not None and manifest.head.head_type == "m2f":
        return "m2f"
    return manifest.backbone.family


@dataclass(frozen=True)
class BlockTensor:
    scope: str  # the module path, in the graph's metadata and in the reference module
    index: int  # within its part
    tensor: str  # the ONNX tensor holding the block's output
    part: str = ""
    single: bool = False  # the part's only block (M2F's mask features): named without an index

    @property
    def name(self) -> str:
        return self.part if self.single else f"{self.part} {self.index}" if self.part else str(self.index)


def node_scopes(node) -> list[str]:
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            try:
                return list(ast.literal_eval(prop.value))
            except (ValueError, SyntaxError):
                return []
    return []


def _match(kinds: tuple[BlockKind, ...], scope: str) -> tuple[int, int] | None:
    """(kind position, block index) of a scope that is one of the family's blocks, else None."""
    for k, kind in enumerate(kinds):
        m = kind.pattern.match(scope)
        if m:
            return k, int(m.group(1)) if m.groups() else 0
    return None


def find_block_outputs(model, family: str | None = None) -> list[BlockTensor]:
    """Every block's output tensor of `family`'s table (block_family; None: the backbone's, ViT or
    ConvNeXt as the graph's scopes say), in data-flow order; a DeployError when they cannot be found."""
    kinds = BLOCK_TABLES[family or ("convnext" if _has_stages(model) else "vit")]
    graph = model.graph
    members: dict[str, list[int]] = {}
    where: dict[str, tuple[int, int]] = {}
    for i, node in enumerate(graph.node):
        for scope in node_scopes(node):
            hit = where.get(scope) or _match(kinds, scope)
            if hit:
                where[scope] = hit
                members.setdefault(scope, []).append(i)
    if not members:
        raise DeployError("--per-block: the graph names no backbone blocks (its nodes carry no "
                          f"'{SCOPES_KEY}' metadata: it was not written by this tool's torch export)")
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    graph_outputs = {o.name for o in graph.output}
    found = []
    for scope, nodes in members.items():
        tensor = _leaving_tensor(graph, nodes, consumers, graph_outputs)
        if tensor is None:
            raise DeployError(f"--per-block: no output of {scope} leaves it in the graph")
        k, index = where[scope]
        found.append(BlockTensor(scope, index, tensor, kinds[k].part, not kinds[k].pattern.groups))
    found.sort(key=lambda b: (where[b.scope], b.index))
    for kind in kinds:
        got = [b.index for b in found if b.part == kind.part]
        if got != list(range(len(got))):
            raise DeployError(f"--per-block: the graph holds {kind.part or 'blocks'} {got}, not 0..{len(got) - 1}")
    return found


def _has_stages(model) -> bool:
    """A backbone-only graph of ConvNeXt stages (the caller did not name the family)."""
    kind = BLOCK_TABLES["convnext"][0]
    return any(kind.pattern.match(s) for node in model.graph.node for s in node_scopes(node))


def _leaving_tensor(graph, nodes: list[int], consumers: dict, graph_outputs: set) -> str | None:
    """The output of the block's last node (graph order is topological) that a node outside the block
    reads, or that the graph outputs: the residual Add (or norm) that ends it, or a Cast after it."""
    inside = set(nodes)
    for i in reversed(nodes):
        node = graph.node[i]
        if node.op_type in _NOT_TOKENS:
            continue
        leaving = [o for o in node.output if o in graph_outputs or any(c not in inside for c in consumers.get(o, []))]
        if leaving:
            return leaving[0]
    return None


def with_block_outputs(model, blocks: list[BlockTensor]):
    """The model (changed in place and returned) with every block tensor also a graph output, typed
    as shape inference finds it (its precision: a bf16 block stays bf16)."""
    import onnx

    have = {o.name for o in model.graph.output}
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type for v in (*inferred.graph.value_info, *inferred.graph.output)}
    for b in blocks:
        if b.tensor in have:
            continue
        if b.tensor not in types or not types[b.tensor].tensor_type.elem_type:
            raise DeployError(f"--per-block: shape inference gives no type for {b.tensor} ({b.scope})")
        vi = onnx.ValueInfoProto(name=b.tensor)
        vi.type.CopyFrom(types[b.tensor])
        model.graph.output.append(vi)
    return model


def reference_block_outputs(module, blocks: list[BlockTensor], batch: np.ndarray) -> tuple[dict, dict]:
    """(final outputs, {scope: block output}) of the fp32 reference, through forward hooks on the
    modules the graph's scopes name."""
    import torch

    captured: dict[str, np.ndarray] = {}
    handles = []
    for b in blocks:
        try:
            sub = module.get_submodule(b.scope)
        except AttributeError as exc:
            raise DeployError(f"--per-block: the reference model has no module {b.scope}") from exc

        def hook(_mod, _inp, out, scope=b.scope):
            out = out[0] if isinstance(out, tuple | list) else out
            captured[scope] = out.detach().float().numpy().copy()

        handles.append(sub.register_forward_hook(hook))
    try:
        with torch.no_grad():
            outs = module(torch.from_numpy(np.ascontiguousarray(batch)))
    finally:
        for h in handles:
            h.remove()
    return {n: o.numpy() for n, o in zip(module.output_names, outs)}, captured


def block_row(position: int, b: BlockTensor, ref: np.ndarray, out: np.ndarray, precision: str) -> dict:
    """`block`: the position in data-flow order (a backbone-only family: the block's index); `name`:
    the part and index within it (M2F: "adapter 2")."""
    th = THRESHOLDS[precision]
    out = np.asarray(out, dtype=np.float32)
    row = {"block": position, "name": b.name, "part": b.part, "scope": b.scope, "tensor": b.tensor,
           "shape": list(ref.shape)}
    if tuple(out.shape) != tuple(ref.shape):
        return {**row, "passed": False, "failures": [f"shape {list(out.shape)} != reference {list(ref.shape)}"]}
    nonfinite = int((~np.isfinite(out)).sum())
    row.update(
        rel_fro=relative_frobenius(ref, out),
        min_token_cos=min_token_cosine(ref, out),
        max_abs=float(np.nanmax(np.abs(out.astype(np.float64) - ref))) if ref.size else 0.0,
        ref_absmax=float(np.abs(ref).max()) if ref.size else 0.0,
        nonfinite=nonfinite,
    )
    failures = [f"{nonfinite} non-finite values"] if nonfinite else []
    if not row["rel_fro"] <= th.max_rel_fro:
        failures.append(f"rel_fro {row['rel_fro']:.2e} > {th.max_rel_fro:.0e}")
    if not row["min_token_cos"] >= th.min_token_cos:
        failures.append(f"min_token_cos {row['min_token_cos']:.6f} < {th.min_token_cos}")
    return {**row, "passed": not failures, "failures": failures}


def _debug_runner(be, artifact, debug_model, debug_path: Path, blocks: list[BlockTensor]):
    """A runner of the chosen backend on the debug graph (None with a reason when it has none)."""
    from dinov3_deploy.runtime.runners import ENGINE_BACKENDS, OnnxReferenceRunner, OrtRunner

    if be.name == "onnx-reference":
        return OnnxReferenceRunner(debug_model), ""
    if be.name.startswith("onnxruntime-"):
        return OrtRunner(debug_path, be.name.removeprefix("onnxruntime-"), be.name), ""
    if be.name in ENGINE_BACKENDS:
        return _debug_engine_runner(artifact, debug_path, [b.tensor for b in blocks]), ""
    return None, f"{be.name} runs no ONNX graph"


def _debug_engine_runner(artifact, debug_path: Path, tensors: list[str]):
    """Build an engine of the debug graph with the artifact's recorded settings. The ONNX parser
    makes every graph output a network output; any block tensor it did not is marked here
    (`INetworkDefinition.mark_output`), so they all come out of the engine. Its precision is the
    graph's own (strongly typed network), as in the production engine. Not run on a machine
    without a GPU (the engine backend is skipped there before this is reached)."""
    from dinov3_deploy.engines.build import build_engine, network_from_onnx, profiles_from_shapes
    from dinov3_deploy.engines.runtime import EngineRunner
    from dinov3_deploy.engines.trt_api import load_api

    trt = artifact.manifest.tensorrt
    net = network_from_onnx(debug_path, load_api(trt.flavor))
    network = net.network
    outputs = {network.get_output(i).name for i in range(network.num_outputs)}
    missing = set(tensors) - outputs
    for layer in (network.get_layer(i) for i in range(network.num_layers)):
        for t in (layer.get_output(j) for j in range(layer.num_outputs)):
            if t.name in missing:
                network.mark_output(t)
                missing.discard(t.name)
    if missing:
        raise DeployError(f"--per-block: {trt.flavor} has no tensor {sorted(missing)[0]} after parsing the debug graph")
    built = build_engine(net, profiles_from_shapes(net, artifact.shapes()),
                         workspace_gib=trt.workspace_bytes / (1 << 30) if trt.workspace_bytes else None,
                         opt_level=trt.builder_optimization_level, targets=trt.targets or None)
    path = built.save(debug_path.with_suffix(".engine"))
    return EngineRunner(path, trt.flavor, trt.version, name=f"{trt.flavor}-engine (per-block)")


def per_block_report(artifact, backends, *, model=None, weights: str | None = None, head: str | None = None,
                     log: Callable[[str], None] = lambda msg: None) -> dict:
    """Run the debug graph on the first runnable backend of `backends` at the verification's first
    input (the smallest allowed one for a backend sized for small shapes) and compare every block."""
    import onnx

    from dinov3_deploy.verification.verify import (
        backend_cases,
        default_cases,
        make_batch,
        reference_model,
        reference_module,
    )

    manifest = artifact.manifest
    precision = manifest.precision
    runnable = [b for b in backends if b.runner is not None and b.name != "pytorch"]
    if not runnable:
        why = "; ".join(f"{b.name}: {b.skip_reason or 'runs no ONNX graph'}" for b in backends) or "none chosen"
        raise DeployError(f"--per-block: no chosen backend can run this {precision} graph here ({why})")
    be = runnable[0]
    shapes = artifact.shapes()
    cases, note = backend_cases(be, default_cases(shapes)[:1], shapes)
    case = cases[0]
    batch = make_batch(case, manifest.io)
    log("finding the block outputs in the graph")
    debug_model = onnx.load(str(artifact.onnx_path))
    family = block_family(manifest)
    blocks = find_block_outputs(debug_model, family)
    with_block_outputs(debug_model, blocks)
    if model is None:
        model = reference_model(manifest, weights, head)
    log(f"fp32 reference with hooks on {len(blocks)} blocks, {case.batch}x{case.height}x{case.width}")
    ref_out, ref_blocks = reference_block_outputs(reference_module(model, manifest.io), blocks, batch)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dinov3-per-block-") as tmp:
        debug_path = Path(tmp) / "model.per_block.onnx"
        # weights past protobuf's 2 GiB limit go to a file beside it, as the export does
        big = debug_model.ByteSize() > (1 << 31) - (1 << 26) if hasattr(debug_model, "ByteSize") else False
        onnx.save(debug_model, str(debug_path), save_as_external_data=big)
        runner, reason = _debug_runner(be, artifact, debug_model, debug_path, blocks)
        if runner is None:
            raise DeployError(f"--per-block: {reason}")
        log(f"{be.name} on the debug graph")
        try:
            out = runner.run(batch)
        finally:
            close = getattr(runner, "close", None)
            if close:
                close()
    rows = [block_row(i, b, ref_blocks[b.scope], out[b.tensor], precision) for i, b in enumerate(blocks)]
    first = next((r for r in rows if not r["passed"]), None)
    outputs = [o.to_dict() for o in compare(ref_out, out, case.name, manifest.task, precision)]
    return {
        "schema": SCHEMA,
        "artifact": str(artifact.path),
        "backend": be.name,
        "precision": precision,
        "family": family,
        "input": asdict(case),
        "note": note,
        "thresholds": asdict(THRESHOLDS[precision]),
        "blocks": rows,
        "first_failing_block": first and first["block"],
        "first_failing": first and first["name"],
        "outputs": outputs,
        "seconds": round(time.perf_counter() - t0, 2),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def render_per_block(report: dict, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    unit = "stage" if report["family"] == "convnext" else "block"
    c = report["input"]
    table = Table(title=f"Per-{unit} parity: {report['backend']} ({report['precision']}) vs PyTorch fp32, "
                        f"{c['batch']}x{c['height']}x{c['width']}")
    for col in (unit, "rel fro", "min token cos", "max abs err", "ref abs max", "result"):
        table.add_column(col, justify="left" if col in (unit, "result") else "right")
    fmt = lambda v, f: "" if v is None else format(v, f)
    for r in report["blocks"]:
        mark = " [red]<- first over threshold[/]" if r["block"] == report["first_failing_block"] else ""
        table.add_row(r.get("name", str(r["block"])), fmt(r.get("rel_fro"), ".2e"), fmt(r.get("min_token_cos"), ".6f"),
                      fmt(r.get("max_abs"), ".2e"), fmt(r.get("ref_absmax"), ".2e"),
                      ("[green]pass[/]" if r["passed"] else f"[red]FAIL[/] {escape('; '.join(r['failures']))}") + mark)
    console.print(table)
    if report["note"]:
        console.print(f"[yellow]note[/] {escape(report['backend'])}: {escape(report['note'])}", soft_wrap=True)
    th = report["thresholds"]
    first = report.get("first_failing", report["first_failing_block"])
    console.print(f"thresholds ({report['precision']}): rel fro <= {th['max_rel_fro']:.0e}, min token cos >= "
                  f"{th['min_token_cos']}; " + (f"first {unit} over threshold: {first}" if first is not None
                                                 else f"every {unit} within threshold"))


def save_per_block(report: dict, out_dir: str | Path) -> tuple[Path, Path | None]:
    """per_block.json and per_block.png (error against depth) in out_dir, written atomically; the
    plot is left out, with a note in the JSON, when matplotlib is not installed."""
    from dinov3_deploy.atomic import atomic_write, write_json

    out_dir = Path(out_dir)
    art = Path(report["artifact"]).resolve()
    if out_dir.resolve() == art or art in out_dir.resolve().parents:
        raise DeployError(f"--per-block-out must be outside the artifact ({art}): its files are hashed")
    png: Path | None = out_dir / "per_block.png"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        png, report = None, {**report, "plot": "not written: matplotlib is not installed"}
    if png is not None:
        fig = _plot(report, plt)
        try:
            atomic_write(png, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
        finally:
            plt.close(fig)
    json_path = out_dir / "per_block.json"
    write_json(json_path, report)
    return json_path, png


def _plot(report: dict, plt):
    unit = "stage" if report["family"] == "convnext" else "block"
    rows = [r for r in report["blocks"] if r.get("rel_fro") is not None]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    depth = [r["block"] for r in rows]
    err = [max(r["rel_fro"], 1e-12) for r in rows]
    ax.semilogy(depth, err, "o-", label=f"{report['backend']} ({report['precision']})")
    ax.axhline(report["thresholds"]["max_rel_fro"], color="tab:red", ls="--", label="threshold")
    first = report["first_failing_block"]
    if first is not None and first in depth:
        ax.semilogy([first], [err[depth.index(first)]], "o", color="tab:red", ms=10, mfc="none",
                    label=f"first {unit} over threshold")
    ax.set_xlabel(f"{unit} (depth)")
    ax.set_ylabel("relative Frobenius error vs fp32")
    ax.set_xticks(depth)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig
