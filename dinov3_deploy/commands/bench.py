"""`dinov3-deploy bench`: latency, throughput, memory and parity of PyTorch configurations and of
an artifact's backends, on the same inputs; JSON + Markdown + PNG under bench/results/."""

from __future__ import annotations

import re
from pathlib import Path

import click

from dinov3_deploy.errors import DeployError


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise DeployError(f"expected comma-separated integers, got '{text}'") from exc
    if not vals or min(vals) < 1:
        raise DeployError(f"expected positive integers, got '{text}'")
    return vals


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)(?:x(\d+))?", text.strip())
    if not m:
        raise DeployError(f"--size must be HxW or S, got '{text}'")
    h = int(m[1])
    return h, int(m[2] or h)


def _words(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    vals = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in vals if v not in allowed]
    if bad:
        raise DeployError(f"{what} must be among {', '.join(allowed)}; got {', '.join(bad)}")
    return vals


@click.command("bench")
@click.argument("artifact", required=False, type=click.Path(file_okay=False))
@click.option("--model", "model_name", default=None, help="Backbone to benchmark in PyTorch (default vits16).")
@click.option("--task", default="seg", type=click.Choice(["features", "seg", "depth", "cls"]), show_default=True)
@click.option("--weights", default=None, help="Backbone checkpoint (random weights otherwise).")
@click.option("--head", default=None, help="Head checkpoint directory from `dinov3-deploy train`.")
@click.option("--precision", "precisions", default=None,
              help="PyTorch precisions, comma-separated (default: bf16 on a GPU, fp32 on the CPU).")
@click.option("--attn", "attn", default="sdpa,math,triton", show_default=True,
              help="Attention implementations to time (triton needs a GPU).")
@click.option("--compile", "compile_modes", default="",
              help="torch.compile modes to time, e.g. 'default,max-autotune'.")
@click.option("--batch", "batches", default="1", show_default=True, help="Batch sizes, comma-separated.")
@click.option("--size", default=None, help="Input HxW (default: the artifact's opt shape, else 224x224).")
@click.option("--warmup", default=3, show_default=True, type=click.IntRange(0))
@click.option("--iters", default=10, show_default=True, type=click.IntRange(1))
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N] for the PyTorch targets.")
@click.option("--no-pytorch", is_flag=True, help="With an artifact: time only its deployment backends.")
@click.option("--out", "out_dir", default="bench/results", show_default=True, type=click.Path(file_okay=False))
@click.option("--name", default=None, help="Report file stem (default from model, task, device, date).")
@click.option("--no-plot", is_flag=True, help="Skip the PNG.")
def command(artifact, model_name, task, weights, head, precisions, attn, compile_modes, batches, size, warmup, iters,
            device, no_pytorch, out_dir, name, no_plot) -> None:
    """Time PyTorch (eager per attention implementation, torch.compile) and an ARTIFACT's backends
    (ONNX Runtime, TensorRT engines) on the same synthetic images, with parity against the fp32
    reference for every row. Speed goals are read from these reports, never asserted in tests."""
    import time

    from rich.console import Console

    from dinov3_deploy.bench.harness import Shape, run_benchmark
    from dinov3_deploy.bench.machine import machine_info
    from dinov3_deploy.bench.report import write_report
    from dinov3_deploy.bench.targets import (
        ATTN_IMPLS,
        artifact_targets,
        deterministic_reference_math,
        pytorch_targets,
        reference_target,
        resolve_device,
    )
    from dinov3_deploy.model_source import ModelSource
    from dinov3_deploy.onnx_export import PRECISIONS
    from dinov3_deploy.parity import THRESHOLDS
    from dinov3_deploy.verification import Case, make_batch

    console = Console(stderr=True)
    device = resolve_device(device)
    deterministic_reference_math()
    batch_list = _int_list(batches)
    attn_impls = _words(attn, ATTN_IMPLS, "--attn")
    modes = [m.strip() for m in compile_modes.split(",") if m.strip()]

    art = None
    if artifact is not None:
        from dinov3_deploy.artifact import load_artifact

        art = load_artifact(artifact)
        manifest = art.manifest
        source = ModelSource.from_manifest(manifest["source"], weights=weights, head=head)
        task = manifest["task"]
        inp = manifest["input"]
        io = {"uint8_input": inp["dtype"] == "uint8", "seg_output": manifest["outputs_config"]["seg_output"],
              "mean": tuple(inp["normalize"]["mean"]), "std": tuple(inp["normalize"]["std"])}
        shapes_spec = art.shapes()
        default_hw = (shapes_spec.height.opt, shapes_spec.width.opt)
        input_meta = manifest
    else:
        source = ModelSource.resolve(task, model_name or ("vits16" if head is None else None), weights, head)
        io = {}
        default_hw = (224, 224)
        spec_probe = source.build(attn_impl="sdpa").spec
        input_meta = {"input": {"dtype": "float32", "normalize": {"mean": list(spec_probe.mean),
                                                                  "std": list(spec_probe.std)}}}
        shapes_spec = None
    h, w = _size(size) if size else default_hw
    shapes = [Shape(b, h, w) for b in batch_list]
    if shapes_spec is not None:
        for s in shapes:
            shapes_spec.check(s.batch, s.height, s.width)

    if precisions is None:
        precs = ["bf16"] if device.startswith("cuda") else ["fp32"]
        if art is not None:
            precs = [art.precision]
    else:
        precs = _words(precisions, tuple(PRECISIONS), "--precision")

    targets = [] if (art is not None and no_pytorch) else pytorch_targets(source, precs, attn_impls, device, modes,
                                                                           **io)
    if art is not None:
        targets += artifact_targets(art)
    reference = reference_target(source, device, **io)

    def make_input(shape):
        return make_batch(Case("bench", shape.batch, shape.height, shape.width, 0), input_meta)

    with console.status("benchmarking") as status:
        rows = run_benchmark(targets, shapes, make_input, reference, task, warmup=warmup, iters=iters,
                             log=lambda msg: status.update(f"benchmarking: {msg}"))

    title = f"{source.backbone} {task}" + (f" artifact {Path(artifact).name}" if art is not None else "")
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
    stem = name or f"{source.backbone}-{task}-{device.split(':')[0]}-{time.strftime('%Y%m%d-%H%M%S')}"
    paths = write_report(report, Path(out_dir) / f"{stem}.json", png=not no_plot)

    from dinov3_deploy.bench.report import markdown

    click.echo(markdown({"schema": "", **report}))
    for p in paths:
        console.print(f"wrote {p}")
    if any(r["status"] in ("failed", "parity-failed") for r in rows):
        bad = [f"{r['target']} {r['shape']}: {r['status']}" for r in rows if r["status"] in ("failed", "parity-failed")]
        raise DeployError("benchmark finished with failures: " + "; ".join(bad))
