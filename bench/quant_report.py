"""int8 / fp8 accuracy report: what the quantization step (export/quant_step.py) buys over quantizing
everything, on the precision report's setup (vits16 seg, trained head, 4 verifier images at 224).

    python -m bench.quant_report --head runs/vits16-seg/head                 # release-like backbone
    python -m bench.quant_report --head runs/vits16-seg-outliers/head        # outliers stress backbone
    python -m bench.quant_report --speed --kept-from bench/results/quant-vits16-*-trained-head.json  # ORT CPU timing

Rows per precision, each against the fp32 PyTorch reference (the unfolded model) on the verifier's
synthetic images, which calibration never sees:
  naive      every matmul quantized, min-max calibration, no smoothing (what a default PTQ does)
  smoothed   every matmul quantized, SmoothQuant migration, the calibration method the search chose
  exported   what `export --precision int8|fp8` writes: smoothed, the sensitive layers calibrated with
             the method that suits each, the kept layers in fp32
All run on ONNX Runtime's CPU provider; fp8 Q/DQ there rounds through float8e4m3fn as written and
the matmul runs in fp32 (the ONNX reference evaluator gives the same numbers, tests/test_quant.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from dinov3_deploy.atomic import write_text
from dinov3_deploy.bench.machine import machine_info
from dinov3_deploy.deploy_module import DeployModule
from dinov3_deploy.export.calibration import CALIB_IMAGES, calibration_images, matmul_flops
from dinov3_deploy.export.onnx_graph import export_onnx
from dinov3_deploy.export.quant_step import prepare, quantize_graph
from dinov3_deploy.export.quantize import QUANT_PRECISIONS, calibrate, insert_qdq, quantizable_layers
from dinov3_deploy.export.sensitivity import flop_share
from dinov3_deploy.model_source import ModelSource
from dinov3_deploy.reference.models.fold import fold_all
from dinov3_deploy.shapes import DimRange, ShapeSpec
from dinov3_deploy.verification.parity import THRESHOLDS, compare

RESULTS = Path(__file__).resolve().parent / "results"


def _fp32_onnx(model: torch.nn.Module, size: int, opset: int, tmp: Path) -> onnx.ModelProto:
    """The folded model as the export writes it in fp32, static 1 x 3 x size x size."""
    shapes = ShapeSpec(DimRange(1, 1, 1), DimRange(size, size, size), DimRange(size, size, size), 16)
    path = tmp / f"fp32-{time.monotonic_ns()}.onnx"
    export_onnx(DeployModule(model, "fp32", opset=opset), path, shapes)
    return onnx.load(path)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def _row(graph: str, precision: str, ref: np.ndarray, out: np.ndarray, share: float, kept: list[str],
         extra: dict) -> dict:
    (p,) = compare({"logits": ref}, {"logits": out}, graph, "seg", precision)
    row = {"graph": graph, "precision": precision, "rel_fro": p.rel_fro, "min_token_cos": p.min_token_cos,
           "label_agreement": p.label_agreement, "passed": p.passed, "quantized_flop_share": share,
           "kept": kept, **extra}
    print(_fmt(row), flush=True)
    return row


def _fmt(r: dict) -> str:
    return (f"| {r['precision']} | {r['graph']} | {r.get('method', '-')} | {r['rel_fro']:.2e} | "
            f"{r['min_token_cos']:.5f} | {100 * r['label_agreement']:.2f} | {100 * r['quantized_flop_share']:.1f} | "
            f"{len(r['kept'])} | {'pass' if r['passed'] else 'FAIL'} |")


def run(head: str | None, model_name: str | None, init: str, size: int, n_images: int,
        precisions: tuple[str, ...]) -> dict:
    from bench.precision_report import _images, _logits, _trained_head

    torch.manual_seed(0)
    source = ModelSource.resolve("seg", model_name, head=head, init=init)
    model = source.build(attn_impl="math")
    x = _images(size, n_images)
    ref = _logits(DeployModule(model, "fp32"), x)
    folded, _ = fold_all(model)
    # as the export: twice the fp16 set, ranges from one half, the search judged on the other
    xc = calibration_images(None, size, size, model.spec.mean, model.spec.std, n=2 * CALIB_IMAGES)
    flops = matmul_flops(folded, xc[:1])
    smoothed = copy.deepcopy(folded)
    migrations = prepare(smoothed, xc)
    rows, details = [], {}
    with tempfile.TemporaryDirectory(prefix="quant-report.") as tmp:  # opset 19: fp8's, int8 is the same graph
        plain, graph = _fp32_onnx(folded, size, 19, Path(tmp)), _fp32_onnx(smoothed, size, 19, Path(tmp))
    feeds = [{plain.graph.input[0].name: xc[i:i + 1].numpy()} for i in range(len(xc))]
    for precision in precisions:
        layers = quantizable_layers(plain)
        naive = insert_qdq(plain, layers, calibrate(plain, feeds, "minmax"), precision)
        rows.append(_row("naive", precision, ref, _run(naive, x.numpy()), flop_share(flops, layers, ()), [],
                         {"method": "minmax"}))
        t = time.perf_counter()
        qdq, report = quantize_graph(graph, xc, precision, "seg", flops, migrations,
                                     log=lambda s: print("  " + s, flush=True))
        search_s = time.perf_counter() - t
        layers = quantizable_layers(graph)
        everything = insert_qdq(graph, layers, calibrate(graph, feeds, report.calibration_method), precision)
        rows.append(_row("smoothed", precision, ref, _run(everything, x.numpy()), flop_share(flops, layers, ()), [],
                         {"method": report.calibration_method}))
        kept = [k["layer"] for k in report.kept_layers]
        rows.append(_row("exported", precision, ref, _run(qdq, x.numpy()), report.quantized_flop_share, kept,
                         {"method": report.calibration_method, "layer_methods": report.layer_methods,
                          "search_seconds": round(search_s, 1)}))
        details[precision] = report.to_dict()
    return {"model": source.backbone, "init": source.init, "task": "seg", "input": f"{n_images} x 3 x {size} x {size}",
            "head": "random" if head is None else _trained_head(head), "smoothed_inputs": len(migrations),
            "thresholds": {p: vars(THRESHOLDS[p]) for p in precisions}, "rows": rows, "quantization": details}


def _sessions(graphs: dict[str, onnx.ModelProto], optimized_dir: Path | None = None) -> dict:
    """One ONNX Runtime CPU session per graph; with `optimized_dir`, ORT writes there the graph it runs."""
    import onnxruntime as ort

    sessions = {}
    for name, m in graphs.items():
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if optimized_dir is not None:
            opts.optimized_model_filepath = str(optimized_dir / f"{name}.onnx")
        sessions[name] = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sessions


def _matmul_kernels(path: Path) -> dict[str, int]:
    """Op types of the matmuls in an optimized graph (MatMulIntegerToFloat / QLinearMatMul: integer)."""
    from collections import Counter

    kinds = ("MatMul", "Gemm", "FusedMatMul", "Conv", "QLinearMatMul", "MatMulIntegerToFloat", "QLinearConv",
             "ConvInteger", "MatMulInteger")
    return dict(Counter(n.op_type for n in onnx.load(str(path)).graph.node if n.op_type in kinds))


def speed(model_name: str, size: int, reps: int, kept: dict[str, list[str]]) -> dict:
    """fp32, int8 with every matmul quantized, and int8 with each `kept` list in fp32 (the searched
    graphs' kept layers, from quant reports), on ONNX Runtime's CPU provider, timed in turn in one
    process (one run of each per round), medians over `reps` rounds. Timing does not depend on the
    weights, so the backbone is random."""
    import os

    import onnxruntime as ort

    torch.manual_seed(0)
    model = ModelSource.resolve("seg", model_name).build(attn_impl="math")
    folded, _ = fold_all(model)
    xc = calibration_images(None, size, size, model.spec.mean, model.spec.std, n=1)
    with tempfile.TemporaryDirectory(prefix="quant-speed.") as tmp:
        graph = _fp32_onnx(folded, size, 18, Path(tmp))
        feeds = [{graph.graph.input[0].name: xc.numpy()}]
        layers = quantizable_layers(graph)
        ranges = calibrate(graph, feeds, "minmax")
        graphs = {"fp32": graph, "int8 all": insert_qdq(graph, layers, ranges, "int8")}
        graphs |= {f"int8 {k}": insert_qdq(graph, layers, ranges, "int8", keep=set(v)) for k, v in kept.items()}
        sessions = _sessions(graphs, Path(tmp))
        kernels = {k: _matmul_kernels(Path(tmp) / f"{k}.onnx") for k in graphs}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    load = [os.getloadavg()[0]]
    for _ in range(reps):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feeds[0])
            times[k].append(time.perf_counter() - t)
        load.append(os.getloadavg()[0])
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"model": model_name, "input": f"1 x 3 x {size} x {size}", "backend": "onnxruntime-cpu",
            "threads": torch.get_num_threads(), "reps": reps, "kept": kept,
            "median_ms": {k: round(1e3 * v, 1) for k, v in med.items()},
            "all_ms": {k: [round(1e3 * t, 1) for t in v] for k, v in times.items()},
            "speedup_vs_fp32": {k: round(med["fp32"] / v, 2) for k, v in med.items() if k != "fp32"},
            "optimized_matmuls": kernels, "load_average_1min": [round(v, 2) for v in load], "ort": ort.__version__}


def _kept_from(paths: list[Path]) -> dict[str, list[str]]:
    """The int8 'exported' rows' kept layers of quant reports, labelled by the report's file name."""
    kept = {}
    for p in paths:
        d = json.loads(p.read_text())
        row = next(r for r in d["rows"] if r["graph"] == "exported" and r["precision"] == "int8")
        kept[f"searched {p.stem} ({len(row['kept'])} kept)"] = row["kept"]
    return kept


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--head", default=None, help="a trained seg head (dinov3-deploy train --task seg ...)")
    ap.add_argument("--model", default=None, help="backbone without --head (default vit_tiny_test)")
    ap.add_argument("--init", default="outliers", choices=["outliers", "release-like"])
    ap.add_argument("--size", type=int, default=None, help="square input side (default 64 tiny, 224 otherwise)")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--precisions", default="int8,fp8")
    ap.add_argument("--speed", action="store_true", help="time fp32 vs int8 on ONNX Runtime CPU instead")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--kept-from", type=Path, nargs="*", default=[],
                    help="--speed: quant report JSONs whose int8 kept layers are timed too")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    t = time.perf_counter()
    if args.speed:
        model = args.model or "vits16"
        report = speed(model, args.size or 512, args.reps, _kept_from(args.kept_from))
        print(json.dumps(report["median_ms"]), "speedup vs fp32", json.dumps(report["speedup_vs_fp32"]))
        out = args.out or RESULTS / f"quant-speed-{model}-{args.size or 512}.json"
    else:
        if args.head is not None:
            from dinov3_deploy.reference.head_checkpoint import read_head_spec

            args.model = read_head_spec(args.head).backbone
        args.model = args.model or "vit_tiny_test"
        size = args.size or (64 if args.model.endswith("_test") else 224)
        precisions = tuple(p for p in args.precisions.split(",") if p in QUANT_PRECISIONS)
        print("| precision | graph | calibration | rel Frobenius | min token cos | labels % | quantized FLOPs % | "
              "kept | bounds |")
        print("|---|---|---|---|---|---|---|---|---|")
        report = run(args.head, args.model, args.init if args.head is None else "release-like", size, args.images,
                     precisions)
        suffix = f"-{report['init']}" + ("" if args.head is None else "-trained-head")
        out = args.out or RESULTS / f"quant-{args.model}{suffix}.json"
    report["machine"] = machine_info()
    report["total_seconds"] = round(time.perf_counter() - t, 1)
    write_text(out, json.dumps(report, indent=2) + "\n")
    print(f"{report['total_seconds']} s; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
