"""`dinov3-deploy inspect PATH`: what an artifact is, from its manifest (no GPU needed); or what a
Mask2Former segmentor head is (our M2F head directory or Meta's head file)."""

from __future__ import annotations

import json

import click


@click.command("inspect")
@click.argument("artifact", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--log", "show_log", is_flag=True, help="Also print the TensorRT build log.")
def command(artifact, as_json, show_log) -> None:
    """Print an artifact's manifest (checks its schema and the sha256 of every file), or describe a
    Mask2Former segmentor head (our head directory or Meta's head .pth)."""
    from dinov3_deploy.artifact import load_artifact
    from dinov3_deploy.reference.formats.m2f_checkpoint import is_m2f_head

    if is_m2f_head(artifact):
        return _inspect_m2f_head(artifact, as_json)

    art = load_artifact(artifact)
    m = art.manifest
    if as_json:
        click.echo(json.dumps(m.to_dict(), indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    from dinov3_deploy.commands._progress import make_console

    console = make_console()
    inp = m.input
    sh = inp.shapes
    t = Table(title=f"artifact {art.path}", show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value")
    bb = m.backbone
    t.add_row("schema", f"{m.schema} version {m.schema_version}")
    t.add_row("task / precision", f"{m.task} / {m.precision}")
    t.add_row("backbone", f"{bb.name} ({bb.family}, dim {bb.embed_dim})"
              + ("  [yellow]random weights[/]" if bb.random_weights else f"  {bb.weights}"))
    for h in ([m.head] if m.head else []) + m.heads:
        label = f"head {h.task}" if m.heads else "head"
        classes = f", {h.n_classes} classes" if h.task in ("seg", "cls") or h.n_classes else ""
        t.add_row(label, f"{h.head_type} on layers '{h.layers}'{classes}"
                  + (f" -> {', '.join(h.outputs)}" if m.heads else "")
                  + ("  [yellow]random weights[/]" if h.random_weights else f"  {h.checkpoint}"))
    t.add_row("input", f"{inp.name} {inp.dtype} {inp.layout} {inp.color}; batch {sh.batch}, "
              f"H {sh.height}, W {sh.width}, multiple of {sh.multiple}")
    t.add_row("normalisation", f"mean {list(inp.normalize.mean)} std {list(inp.normalize.std)}"
              + (" (in the graph)" if inp.normalize.in_graph else " (by the caller)"))
    for o in m.outputs:
        t.add_row(f"output {o.name}", f"{o.dtype} {o.shape}  {o.doc}")
    for task in m.tasks:
        classes = m.classes_for(task)
        if classes and classes.names:
            t.add_row("classes" + (f" ({task})" if m.heads else ""), ", ".join(classes.names))
    onnx = m.onnx
    t.add_row("onnx", f"{onnx.file} opset {onnx.opset}, {onnx.graph.nodes} nodes"
              + (", external data" if onnx.external_data else "")
              + (f", TensorRT plugin nodes: {', '.join(onnx.plugins)}" if onnx.plugins else ""))
    trt = m.tensorrt
    if trt:
        t.add_row("tensorrt", f"{trt.file} {trt.flavor} {trt.version}, targets {', '.join(trt.targets)}, "
                  f"{trt.engine_bytes / 1e6:.1f} MB, {trt.network_layers} network layers, "
                  f"opt level {trt.builder_optimization_level}, built in {trt.build_seconds}s")
    if m.folds:
        kinds: dict[str, int] = {}
        for f in m.folds:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        t.add_row("folded", ", ".join(f"{n} {k}" for k, n in kinds.items()) + " (exact; into the layers before them)")
    _precision_rows(t, m)
    if m.triton:
        t.add_row("triton", ", ".join(f"{x.name} ({x.backend})" for x in m.triton.models))
    t.add_row("toolchain", ", ".join(f"{k} {v}" for k, v in m.toolchain.items()))
    parity_file = art.path / "parity.json"
    if parity_file.exists():
        p = json.loads(parity_file.read_text())
        verdict = ("skipped" if p.get("passed") is None else "[green]passed[/]" if p["passed"] else "[red]failed[/]")
        t.add_row("parity", f"{verdict} {', '.join(p.get('verified_backends', []))}")
        for b in p.get("backends", []):
            if b["status"] != "skipped" and b["outputs"]:
                t.add_row(f"  {b['name']}", _worst(b["outputs"]))
    t.add_row("files", ", ".join(f"{k} ({v.bytes / 1e6:.2f} MB)" for k, v in m.files.items()))
    for note in m.notes:
        t.add_row("note", f"[yellow]{escape(note)}[/]")
    console.print(t)
    if show_log and trt:
        console.print(escape("\n".join(trt.build_log)))



def _precision_rows(t, m) -> None:
    """What a low-precision artifact keeps in higher precision: the quantization record (int8 / fp8)
    or the fp32 islands (fp16 / bf16)."""
    q = m.quantization
    if q is not None:
        scores = ", ".join(f"{k} rel {v['rel_fro']:.3g}" for k, v in q.method_scores.items())
        t.add_row("quantization", f"{q.precision}, calibration {q.calibration_method} ({scores}) on "
                  f"{q.calibration_images} images {'x'.join(map(str, q.calibration_shape))}, sha256 "
                  f"{q.calibration_hash[:16]}; {100 * q.quantized_flop_share:.1f} % of matmul FLOPs quantized "
                  f"({q.quantized_layers} layers), SmoothQuant on {q.smoothed} inputs")
        if q.layer_methods:
            t.add_row("calibrated otherwise", "; ".join(f"{n} ({m})" for n, m in q.layer_methods.items()))
        t.add_row("kept in fp32", "; ".join(f"{k.layer} (sensitivity {k.sensitivity:.3g})" for k in q.kept_layers)
                  or "none")
    elif m.precision != "fp32":
        t.add_row("fp32 islands", "; ".join(
            f"{i.module} ({i.reason}" + (f", max |{'q.k' if i.reason == 'scores' else 'out'}| {i.absmax:g})"
                                         if i.absmax is not None else ")")
            for i in m.fp32_islands) or f"none (every op's calibrated range fits {m.precision})")


def _worst(rows: list[dict]) -> str:
    """The worst figures over a backend's outputs and inputs."""
    pick = lambda key, fn: fn((r[key] for r in rows if r.get(key) is not None), default=None)
    rel, cos, lab = pick("rel_fro", max), pick("min_token_cos", min), pick("label_agreement", min)
    parts = [f"worst rel fro {rel:.2e}" if rel is not None else "",
             f"min token cos {cos:.6f}" if cos is not None else "",
             f"labels {lab:.3%}" if lab is not None else ""]
    return ", ".join(p for p in parts if p)


def m2f_head_summary(path) -> dict:
    """What an M2F head holds: its backbone (recorded, or the ViT of the adapter's width), widths,
    class count, tensors and parameters per part."""
    from dinov3_deploy.errors import CheckpointError
    from dinov3_deploy.reference.formats.m2f_checkpoint import head_backbone, head_dims, read_m2f_head

    config, head = read_m2f_head(path)
    width, hidden, classes = head_dims(head, str(path))
    try:
        backbone = head_backbone(path)[0]
    except CheckpointError:  # a width several ViTs share, in Meta's layout: say so instead of guessing
        backbone = None
    parts = {"adapter": "segmentation_model.0.", "pixel_decoder": "segmentation_model.1.pixel_decoder.",
             "transformer_decoder": "segmentation_model.1.predictor."}
    params = {name: sum(v.numel() for k, v in head.items() if k.startswith(prefix) and "num_batches" not in k
                        and "running_" not in k) for name, prefix in parts.items()}
    return {
        "format": "dinov3-deploy M2F head" if config else "Meta's segmentor head file",
        "backbone": backbone or f"a ViT of width {width}", "backbone_width": width, "hidden_dim": hidden,
        "num_classes": classes, "queries": int(head["segmentation_model.1.predictor.query_feat.weight"].shape[0]),
        "layers": (config or {}).get("layers"), "tensors": len(head),
        "params_m": {k: round(v / 1e6, 1) for k, v in params.items()} | {"head": round(sum(params.values()) / 1e6, 1)},
        "backbone_record": None if config is None else (
            f"random, seed {config['backbone_seed']}" if config.get("backbone_seed") is not None
            else (config.get("backbone_weights") or {}).get("path")),
    }


def _inspect_m2f_head(path, as_json: bool) -> None:
    summary = m2f_head_summary(path)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    from rich.table import Table

    from dinov3_deploy.commands._progress import make_console

    t = Table(title=f"Mask2Former segmentor head {path}", show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value")
    p = summary["params_m"]
    t.add_row("format", summary["format"])
    t.add_row("backbone", f"{summary['backbone']} (width {summary['backbone_width']})"
              + (f", layers {summary['layers']}" if summary["layers"] else ""))
    if summary["backbone_record"]:
        t.add_row("trained on", str(summary["backbone_record"]))
    t.add_row("head", f"hidden {summary['hidden_dim']}, {summary['num_classes']} classes, "
              f"{summary['queries']} queries, {summary['tensors']} tensors")
    t.add_row("parameters (M)", f"{p['head']} = adapter {p['adapter']} + pixel decoder {p['pixel_decoder']} "
              f"+ transformer decoder {p['transformer_decoder']}")
    make_console().print(t)
