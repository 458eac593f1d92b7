"""`dinov3-deploy bench`: latency, throughput, memory and parity of PyTorch configurations and of
an artifact's backends, on the same inputs; JSON + Markdown + PNG under bench/results/."""

from __future__ import annotations

import re
from pathlib import Path

import click
from click.core import ParameterSource

from dinov3_deploy.errors import DeployError
from dinov3_deploy.options import (
    COMPILE_MODES,
    PrimaryNameOption,
    device_option,
    out_option,
    resolve_device,
    weights_option,
)


def _int_list(ctx, param, text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got '{text}'") from None
    if not vals or min(vals) < 1:
        raise click.BadParameter(f"batch sizes must be positive integers, got '{text}'")
    return vals


def _size(ctx, param, text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"(\d+)(?:x(\d+))?", text.strip())
    if not m or int(m[1]) < 1 or int(m[2] or m[1]) < 1:
        raise click.BadParameter(f"must be HxW or S (pixels), got '{text}'")
    return int(m[1]), int(m[2] or m[1])


def _words_of(allowed: tuple[str, ...]):
    def check(ctx, param, text: str | None) -> list[str] | None:
        if text is None:
            return None
        vals = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in vals if v not in allowed]
        if bad:
            raise click.BadParameter(f"takes a comma-separated subset of {', '.join(allowed)}; got {', '.join(bad)}")
        return vals

    return check


def _precisions():
    from dinov3_deploy.deploy_module import PRECISIONS

    return tuple(PRECISIONS)


def _attn_impls():
    from dinov3_deploy.reference.models.layers.attention import ATTN_IMPLS

    return tuple(ATTN_IMPLS)


def _chosen(targets: list, backends: str) -> list:
    """The artifact's targets that --backend names (all; auto: the first runnable; or names)."""
    if backends == "all":
        return targets
    if backends == "auto":
        runnable = [t for t in targets if not t.skip_reason]
        if not runnable:
            raise DeployError("--backend auto: no backend of this artifact runs here: "
                              + "; ".join(f"{t.name}: {t.skip_reason}" for t in targets))
        return runnable[:1]
    names = [n.strip() for n in backends.split(",") if n.strip()]
    # The short names of `infer`: onnxruntime = the artifact's runnable ONNX Runtime providers, tensorrt =
    # its engine, torch = the PyTorch rows only (they are timed unless --no-pytorch).
    short = {"onnxruntime": lambda t: t.name.startswith("onnxruntime-") and not t.skip_reason,
             "tensorrt": lambda t: t.name.endswith("-engine"), "torch": lambda t: False}
    unknown = [n for n in names if n not in short and n not in {t.name for t in targets}]
    if unknown:
        raise DeployError(f"--backend {', '.join(unknown)}: this artifact has {', '.join(t.name for t in targets)} "
                          "(or the short names torch, onnxruntime, tensorrt)")
    return [t for t in targets if t.name in names or any(short[n](t) for n in names if n in short)]


@click.command("bench")
@click.argument("artifact", required=False, type=click.Path(file_okay=False))
@click.option("--model", "model_name", default=None,
              help="Backbone to benchmark in PyTorch (default: the one --weights holds, else vits16).")
@click.option("--task", default="seg", type=click.Choice(["features", "seg", "depth", "cls"]), show_default=True,
              help="Task head on the backbone (without an ARTIFACT).")
@weights_option()
@click.option("--head", default=None, type=click.Path(exists=True, file_okay=False),
              help="Head checkpoint directory from `dinov3-deploy train`.")
@click.option("--precision", "precisions", default=None, callback=lambda c, p, v: _words_of(_precisions())(c, p, v),
              help="PyTorch precisions, comma-separated (default: bf16 on a GPU, fp32 on the CPU; with an "
                   "ARTIFACT its precision).")
@click.option("--attn", "attn_impls", default="sdpa,math,triton", show_default=True,
              callback=lambda c, p, v: _words_of(_attn_impls())(c, p, v),
              help="Attention implementations to time (triton needs a GPU). With --e2e: the torch backend's, "
                   "one row each (default there: triton on a GPU, sdpa on the CPU).")
@click.option("--compile", "compile_modes", default="", callback=_words_of(COMPILE_MODES),
              help=f"torch.compile modes to time, comma-separated: {', '.join(COMPILE_MODES)} (with --e2e: of the "
                   "torch backend).")
@click.option("--batch-sizes", "--batch", "batch_list", cls=PrimaryNameOption, default="1", show_default=True,
              callback=_int_list, help="Batch sizes to time, comma-separated (export's --batch is a range).")
@click.option("--size", default=None, callback=_size,
              help="Input HxW or S, multiples of the model's input multiple (default: the artifact's opt shape, "
                   "else 224x224).")
@click.option("--warmup", default=3, show_default=True, type=click.IntRange(0), help="Untimed runs per row.")
@click.option("--iters", default=10, show_default=True, type=click.IntRange(1), help="Timed runs per row.")
@device_option("auto | cpu | cuda[:N]: where the PyTorch targets run.")
@click.option("--backend", "backends", default="all", show_default=True,
              help="With an ARTIFACT: which of its backends to time: all, auto (the first that runs here, as "
                   "`infer` picks), or names from `dinov3-deploy verify`, comma-separated.")
@click.option("--no-pytorch", is_flag=True, help="With an artifact: time only its deployment backends.")
@out_option("bench/results", "Folder of the reports (JSON, Markdown, PNG).")
@click.option("--name", default=None, help="Report file stem (default from model, task, device, date).")
@click.option("--no-plot", is_flag=True, help="Skip the PNG.")
@click.option("--e2e", "e2e_images", default=None, type=click.Path(exists=True),
              help="With an ARTIFACT (seg): time `infer`'s whole path instead, end-to-end images/s from the files "
                   "in this folder (or this file) to labels, per --backend (all: torch and each runnable artifact "
                   "backend) and --stitch.")
@click.option("--stitch", "stitches", default="auto", show_default=True,
              callback=_words_of(("auto", "triton", "torch")),
              help="--e2e: stitches to time, comma-separated: auto, triton, torch.")
@click.option("--window", default=None, type=click.IntRange(min=1), help="--e2e: sliding-window size (as infer).")
@click.option("--batch-windows", default=None, type=click.IntRange(min=1), help="--e2e: windows per model call.")
def command(artifact, model_name, task, weights, head, precisions, attn_impls, compile_modes, batch_list, size,
            warmup, iters, device, backends, no_pytorch, out, name, no_plot, e2e_images, stitches, window,
            batch_windows) -> None:
    """Time PyTorch (eager per attention implementation, torch.compile) and an ARTIFACT's backends
    (ONNX Runtime, TensorRT engines) on the same synthetic images, with parity against the fp32
    reference for every row. Speed goals are read from these reports, never asserted in tests.

    A multi-head ARTIFACT (export --head A --head B) is timed beside each of its heads alone on the
    same backbone (a temporary single-head ONNX per head for ONNX Runtime, the single-head module for
    PyTorch): the report adds multi ms, each single ms, their sum, multi / seg-only and multi / sum."""
    import time

    from rich.console import Console

    from dinov3_deploy.bench.harness import Shape, run_benchmark, torch_target
    from dinov3_deploy.bench.machine import machine_info
    from dinov3_deploy.bench.targets import (
        artifact_targets,
        deterministic_reference_math,
        pytorch_targets,
    )
    from dinov3_deploy.manifest import MULTI_TASK, DeployIO
    from dinov3_deploy.model_source import ModelSource, source_from_manifest
    from dinov3_deploy.verification.parity import THRESHOLDS
    from dinov3_deploy.verification.verify import Case, make_batch, reference_module

    console = Console(stderr=True)
    if e2e_images is not None:
        # --attn's default lists every implementation for the model bench; for --e2e only an explicit
        # --attn picks torch rows (else the Predictor's default: triton on a GPU, sdpa on the CPU).
        explicit = click.get_current_context().get_parameter_source("attn_impls") != ParameterSource.DEFAULT
        return _e2e(console, artifact, e2e_images, backends, stitches, window, batch_windows, warmup, iters, out,
                    name, no_plot, attn_impls if explicit else [None], compile_modes or [None])
    device = resolve_device(device)
    deterministic_reference_math()
    modes = compile_modes or []

    art = None
    if artifact is not None:
        from dinov3_deploy.artifact import load_artifact

        art = load_artifact(artifact)
        source = source_from_manifest(art.manifest.source, weights=weights, head=head)
        task = art.task
        io = art.manifest.io  # the artifact's I/O contract, extra feature outputs included
        ref_model = source.build(attn_impl="sdpa")
        shapes_spec = art.shapes()
        default_hw = (shapes_spec.height.opt, shapes_spec.width.opt)
    else:
        from dinov3_deploy.options import resolve_model

        model_name = resolve_model(model_name, weights, default=None if head is not None else "vits16")
        source = ModelSource.resolve(task, model_name, weights, head)
        ref_model = source.build(attn_impl="sdpa")
        io = DeployIO(mean=tuple(ref_model.spec.mean), std=tuple(ref_model.spec.std))
        default_hw = (224, 224)
        shapes_spec = None
    h, w = size or default_hw
    multiple = ref_model.backbone.cfg.input_multiple
    if h % multiple or w % multiple:
        raise DeployError(f"--size {h}x{w}: height and width must be multiples of {multiple} for {source.backbone} "
                          "(its patch grid)")
    shapes = [Shape(b, h, w) for b in batch_list]
    if shapes_spec is not None:
        for s in shapes:
            shapes_spec.check(s.batch, s.height, s.width)

    if precisions is None:
        precs = ["bf16"] if device.startswith("cuda") else ["fp32"]
        if art is not None:
            precs = [art.precision]
    else:
        precs = precisions

    targets = []
    if art is None or not no_pytorch:
        targets += pytorch_targets(source, precs, attn_impls, device, modes, io,
                                   manifest=art.manifest if art is not None else None)
    if art is not None:
        targets += _chosen(artifact_targets(art), backends)
    reference = torch_target(reference_module(ref_model, io), "pytorch-fp32-reference", "fp32", device)

    def make_input(shape):
        return make_batch(Case("bench", shape.batch, shape.height, shape.width, 0), io)

    import tempfile

    multi = art is not None and task == MULTI_TASK
    with tempfile.TemporaryDirectory(prefix="dinov3-bench-") as workdir, console.status("benchmarking") as status:
        if multi:  # each head alone beside the multi-head graph (bench/multi_head.py), timed right after it
            from dinov3_deploy.bench.multi_head import mark_multi, single_head_targets

            mark_multi(targets)
            singles = single_head_targets(art, source, targets, Path(workdir), device,
                                          log=lambda msg: status.update(f"benchmarking: {msg}"))
            targets = [x for t in targets for x in [t, *(s for s in singles if s.info["multi_target"] == t.name)]]
        # multi-head rows are compared with their single heads: timed in rounds, so load changes hit all alike
        rows = run_benchmark(targets, shapes, make_input, reference, task, warmup=warmup, iters=iters,
                             log=lambda msg: status.update(f"benchmarking: {msg}"), interleave=multi)

    what = "+".join(art.manifest.tasks) if art is not None else task
    title = f"{source.backbone} {what}" + (f" artifact {Path(artifact).name}" if art is not None else "")
    report = {
        "config": {"title": title, "task": task, "backbone": source.backbone, "random_weights": source.random_backbone,
                   "device": device, "precisions": precs, "attn_impls": attn_impls, "compile": modes,
                   "shapes": [s.label for s in shapes], "warmup": warmup, "iters": iters,
                   "artifact": str(Path(artifact).resolve()) if art is not None else None},
        "machine": machine_info(),
        "reference": "PyTorch fp32 eager (SDPA attention, no TF32), same weights and inputs",
        "thresholds": {p: vars(THRESHOLDS[p]) for p in sorted({t.precision for t in targets} | {"fp32"})},
        "rows": rows,
    }
    if multi:
        from dinov3_deploy.bench.multi_head import comparison

        report["config"].update(tasks=art.manifest.tasks, interleaved=True)
        report["multi_head"] = comparison(rows, art.manifest.tasks)
    stem = name or f"{source.backbone}-{task}-{device.split(':')[0]}-{time.strftime('%Y%m%d-%H%M%S')}"
    _publish(console, report, Path(out) / f"{stem}.json", no_plot, "benchmark")


def _publish(console, report: dict, path: Path, no_plot: bool, what: str) -> None:
    """Write the report (JSON, Markdown, PNG), print its table, and fail when a row failed."""
    from dinov3_deploy.bench.report import markdown, write_report

    paths = write_report(report, path, png=not no_plot)
    click.echo(markdown({"schema": "", **report}))
    for p in paths:
        console.print(f"wrote {p}")
    bad = [f"{r['target']} {r.get('shape', '')}".rstrip() + f": {r['status']}" for r in report["rows"]
           if r["status"] in ("failed", "parity-failed")]
    if bad:
        raise DeployError(f"{what} finished with failures: " + "; ".join(bad))


def _e2e(console, artifact, images, backends, stitches, window, batch_windows, warmup, iters, out, name,
         no_plot, attn_impls: list, compile_modes: list) -> None:
    """`bench --e2e IMAGES`: rows of end-to-end images/s, written through the one report envelope."""
    import time

    from dinov3_deploy.artifact import load_artifact
    from dinov3_deploy.bench.e2e import e2e_rows
    from dinov3_deploy.bench.machine import machine_info
    from dinov3_deploy.runtime.inference import batch_windows_of, list_images, window_size
    from dinov3_deploy.runtime.predictor import check_attn, parse_backend
    from dinov3_deploy.verification.parity import THRESHOLDS

    if artifact is None:
        raise DeployError("--e2e needs an ARTIFACT (a seg artifact from `dinov3-deploy export --task seg`)")
    art = load_artifact(artifact)
    if art.task != "seg":
        raise DeployError(f"--e2e times the sliding window of seg artifacts; this one is '{art.task}'")
    window_size(art.shapes(), window)
    batch_windows_of(art.shapes(), batch_windows)
    if backends == "all":
        names = ["torch", "onnxruntime"] + (["tensorrt"] if art.manifest.tensorrt else [])
    else:
        names = [n.strip() for n in backends.split(",") if n.strip()]
    is_torch = {n: parse_backend(n)[0] == "torch" for n in names}
    torch_options = [{k: v for k, v in (("attn_impl", a), ("compile_mode", c)) if v}
                     for a in attn_impls for c in compile_modes]
    if any(is_torch.values()):
        import torch

        for a in attn_impls:
            check_attn(a, "cuda" if torch.cuda.is_available() else "cpu")
    elif torch_options != [{}]:
        raise DeployError("--attn and --compile apply to the torch backend; add torch to --backend")
    inputs = list_images([images])
    combos = [(b, s, o) for b in names for s in stitches for o in (torch_options if is_torch[b] else [{}])]
    with console.status("end-to-end") as status:
        rows = e2e_rows(art, inputs, combos, window=window, batch_windows=batch_windows, warmup=warmup, iters=iters,
                        log=lambda msg: status.update(f"end-to-end: {msg}"))
    report = {
        "config": {"title": f"{art.manifest.backbone.name} seg end-to-end ({len(inputs)} images)", "task": "seg",
                   "mode": "e2e", "artifact": str(Path(artifact).resolve()), "images": len(inputs),
                   "backends": names, "stitches": stitches, "torch_options": torch_options, "window": window,
                   "batch_windows": batch_windows,
                   "warmup": warmup, "iters": iters},
        "machine": machine_info(),
        "reference": "the torch fp32 backend (SDPA) with the reference stitch, same files: label agreement",
        "thresholds": {art.precision: vars(THRESHOLDS[art.precision])},
        "rows": rows,
    }
    stem = name or f"{art.manifest.backbone.name}-seg-e2e-{time.strftime('%Y%m%d-%H%M%S')}"
    _publish(console, report, Path(out) / f"{stem}.json", no_plot, "end-to-end benchmark")
