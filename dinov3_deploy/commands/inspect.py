"""`dinov3-deploy inspect DIR`: what an artifact is, from its manifest (no GPU needed)."""

from __future__ import annotations

import json

import click


@click.command("inspect")
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--log", "show_log", is_flag=True, help="Also print the TensorRT build log.")
def command(artifact, as_json, show_log) -> None:
    """Print an artifact's manifest (checks its schema and the sha256 of every file)."""
    from dinov3_deploy.artifact import load_artifact

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
    q = m.quantization
    if q is not None:
        scores = ", ".join(f"{k} rel {v['rel_fro']:.3g}" for k, v in q.method_scores.items())
        t.add_row("quantization", f"{q.precision}, calibration {q.calibration_method} ({scores}) on "
                  f"{q.calibration_images} images {'x'.join(map(str, q.calibration_shape))}, sha256 "
                  f"{q.calibration_hash[:16]}; {100 * q.quantized_flop_share:.1f} % of matmul FLOPs quantized "
                  f"({q.quantized_layers} layers), SmoothQuant on {q.smoothed} inputs")
        t.add_row("kept in fp32", "; ".join(f"{k.layer} (sensitivity {k.sensitivity:.3g})" for k in q.kept_layers)
                  or "none")
    elif m.precision != "fp32":
        t.add_row("fp32 islands", "; ".join(
            f"{i.module} ({i.reason}" + (f", max |{'q.k' if i.reason == 'scores' else 'out'}| {i.absmax:g})"
                                         if i.absmax is not None else ")")
            for i in m.fp32_islands) or f"none (every op's calibrated range fits {m.precision})")
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


def _worst(rows: list[dict]) -> str:
    """The worst figures over a backend's outputs and inputs."""
    pick = lambda key, fn: fn((r[key] for r in rows if r.get(key) is not None), default=None)
    rel, cos, lab = pick("rel_fro", max), pick("min_token_cos", min), pick("label_agreement", min)
    parts = [f"worst rel fro {rel:.2e}" if rel is not None else "",
             f"min token cos {cos:.6f}" if cos is not None else "",
             f"labels {lab:.3%}" if lab is not None else ""]
    return ", ".join(p for p in parts if p)
