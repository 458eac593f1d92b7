"""`bench`'s run below the CLI: `run_bench(BenchOptions(...), console)` times PyTorch configurations and
an artifact's backends on the same inputs (the model bench), or with `e2e_images` infer's whole path
(bench/e2e.py), and publishes one report; as `export_artifact(ExportOptions(...))` exports.

Reports go to `out`: by default `out/bench/` under the working folder, which .gitignore covers; the
tracked `bench/results/` receives only what a developer passes as `--out bench/results`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from dinov3_deploy.errors import DeployError

#: Where reports go unless --out says otherwise (git-ignored: a user's working folder stays theirs).
DEFAULT_OUT = "out/bench"


@dataclass
class BenchOptions:
    artifact: str | None = None
    model: str | None = None
    task: str = "seg"
    weights: str | None = None
    head: str | None = None
    precisions: list[str] | None = None  # None: bf16 on a GPU, fp32 on the CPU; with an artifact its precision
    attn_impls: list[str] = field(default_factory=lambda: ["sdpa", "math", "triton"])
    attn_explicit: bool = False  # --e2e: only an explicit --attn picks torch rows
    compile_modes: list[str] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    size: tuple[int, int] | None = None
    warmup: int = 3
    iters: int = 10
    device: str = "auto"
    backends: str = "all"  # backends.py: select_bench_targets (model bench), e2e_backends (--e2e)
    no_pytorch: bool = False
    out: str | Path = DEFAULT_OUT
    name: str | None = None
    no_plot: bool = False
    e2e_images: str | None = None
    stitches: list[str] = field(default_factory=lambda: ["auto"])
    window: int | None = None
    batch_windows: int | None = None


def run_bench(opts: BenchOptions, console) -> None:
    """The model bench, or the end-to-end one with `e2e_images`; a DeployError when a row failed."""
    if opts.e2e_images is not None:
        return run_e2e(opts, console)
    from dinov3_deploy.bench.harness import Shape, torch_target
    from dinov3_deploy.bench.machine import machine_info
    from dinov3_deploy.bench.targets import deterministic_reference_math
    from dinov3_deploy.options import resolve_device
    from dinov3_deploy.verification.parity import THRESHOLDS
    from dinov3_deploy.verification.verify import Case, make_batch, reference_module

    device = resolve_device(opts.device)
    deterministic_reference_math()
    model = _model(opts)
    h, w = opts.size or model.default_hw
    multiple = model.ref_model.backbone.cfg.input_multiple
    if h % multiple or w % multiple:
        raise DeployError(f"--size {h}x{w}: height and width must be multiples of {multiple} for "
                          f"{model.source.backbone} (its patch grid)")
    shapes = [Shape(b, h, w) for b in opts.batch_sizes]
    if model.art is not None:
        for s in shapes:
            model.art.shapes().check(s.batch, s.height, s.width)
    precs = opts.precisions or ([model.art.precision] if model.art is not None
                                else ["bf16"] if device.startswith("cuda") else ["fp32"])
    targets = _targets(opts, model, precs, device)
    reference = torch_target(reference_module(model.ref_model, model.io), "pytorch-fp32-reference", "fp32", device)

    def make_input(shape):
        return make_batch(Case("bench", shape.batch, shape.height, shape.width, 0), model.io)

    rows = _time_rows(model, targets, shapes, make_input, reference, opts, device, console)
    art, task = model.art, model.task
    what = "+".join(art.manifest.tasks) if art is not None else task
    title = f"{model.source.backbone} {what}" + (f" artifact {Path(opts.artifact).name}" if art is not None else "")
    report = {
        "config": {"title": title, "task": task, "backbone": model.source.backbone,
                   "random_weights": model.source.random_backbone, "device": device, "precisions": precs,
                   "attn_impls": opts.attn_impls, "compile": opts.compile_modes, "shapes": [s.label for s in shapes],
                   "warmup": opts.warmup, "iters": opts.iters,
                   "artifact": str(Path(opts.artifact).resolve()) if art is not None else None},
        "machine": machine_info(),
        "reference": "PyTorch fp32 eager (SDPA attention, no TF32), same weights and inputs",
        "thresholds": {p: vars(THRESHOLDS[p]) for p in sorted({t.precision for t in targets} | {"fp32"})},
        "rows": rows,
    }
    if model.multi:
        from dinov3_deploy.bench.multi_head import comparison

        report["config"].update(tasks=art.manifest.tasks, interleaved=True)
        report["multi_head"] = comparison(rows, art.manifest.tasks)
    stem = opts.name or f"{model.source.backbone}-{task}-{device.split(':')[0]}-{time.strftime('%Y%m%d-%H%M%S')}"
    publish(console, report, Path(opts.out) / f"{stem}.json", opts.no_plot, "benchmark")


@dataclass
class _Model:
    """What the model bench times: the source, its fp32 reference model, the I/O contract, and the artifact."""

    source: object
    ref_model: object
    io: object
    task: str
    default_hw: tuple[int, int]
    art: object = None

    @property
    def multi(self) -> bool:
        from dinov3_deploy.manifest import MULTI_TASK

        return self.art is not None and self.task == MULTI_TASK


def _model(opts: BenchOptions) -> _Model:
    from dinov3_deploy.manifest import DeployIO
    from dinov3_deploy.model_source import ModelSource, source_from_manifest

    if opts.artifact is not None:
        from dinov3_deploy.artifact import load_artifact

        art = load_artifact(opts.artifact)
        source = source_from_manifest(art.manifest.source, weights=opts.weights, head=opts.head)
        spec = art.shapes()
        # the artifact's I/O contract, extra feature outputs included
        return _Model(source, source.build(attn_impl="sdpa"), art.manifest.io, art.task,
                      (spec.height.opt, spec.width.opt), art)
    from dinov3_deploy.options import resolve_model

    name = resolve_model(opts.model, opts.weights, default=None if opts.head is not None else "vits16")
    source = ModelSource.resolve(opts.task, name, opts.weights, opts.head)
    ref_model = source.build(attn_impl="sdpa")
    return _Model(source, ref_model, DeployIO(mean=tuple(ref_model.spec.mean), std=tuple(ref_model.spec.std)),
                  opts.task, (224, 224))


def _targets(opts: BenchOptions, model: _Model, precs: list[str], device: str) -> list:
    from dinov3_deploy.bench.targets import artifact_targets, pytorch_targets
    from dinov3_deploy.runtime.backends import select_bench_targets

    art = model.art
    targets = []
    if art is None or not opts.no_pytorch:
        targets += pytorch_targets(model.source, precs, opts.attn_impls, device, opts.compile_modes, model.io,
                                   manifest=art.manifest if art is not None else None)
    if art is not None:
        targets += select_bench_targets(artifact_targets(art), opts.backends)
    return targets


def _time_rows(model: _Model, targets, shapes, make_input, reference, opts: BenchOptions, device: str,
               console) -> list[dict]:
    import tempfile

    from dinov3_deploy.bench.harness import run_benchmark

    with tempfile.TemporaryDirectory(prefix="dinov3-bench-") as workdir, console.status("benchmarking") as status:
        def log(msg: str) -> None:
            status.update(f"benchmarking: {msg}")

        if model.multi:  # each head alone beside the multi-head graph (bench/multi_head.py), timed right after it
            from dinov3_deploy.bench.multi_head import mark_multi, single_head_targets

            mark_multi(targets)
            singles = single_head_targets(model.art, model.source, targets, Path(workdir), device, log=log)
            targets = [x for t in targets for x in [t, *(s for s in singles if s.info["multi_target"] == t.name)]]
        # multi-head rows are compared with their single heads: timed in rounds, so load changes hit all alike
        return run_benchmark(targets, shapes, make_input, reference, model.task, warmup=opts.warmup,
                             iters=opts.iters, log=log, interleave=model.multi)


def publish(console, report: dict, path: Path, no_plot: bool, what: str) -> None:
    """Write the report (JSON, Markdown, PNG), print its table, and fail when a row failed."""
    import click

    from dinov3_deploy.bench.report import markdown, write_report

    paths = write_report(report, path, png=not no_plot)
    click.echo(markdown({"schema": "", **report}))
    for p in paths:
        console.print(f"wrote {p}")
    bad = [f"{r['target']} {r.get('shape', '')}".rstrip() + f": {r['status']}" for r in report["rows"]
           if r["status"] in ("failed", "parity-failed")]
    if bad:
        raise DeployError(f"{what} finished with failures: " + "; ".join(bad))


def run_e2e(opts: BenchOptions, console) -> None:
    """`bench --e2e IMAGES`: rows of end-to-end images/s, written through the one report envelope."""
    from dinov3_deploy.artifact import load_artifact
    from dinov3_deploy.bench.e2e import e2e_rows
    from dinov3_deploy.bench.machine import machine_info
    from dinov3_deploy.runtime.backends import e2e_backends, parse_backend
    from dinov3_deploy.runtime.discovery import list_images
    from dinov3_deploy.runtime.m2f_prediction import is_m2f_artifact, resolve_m2f_stitch
    from dinov3_deploy.runtime.prediction import batch_windows_of, window_size
    from dinov3_deploy.verification.parity import THRESHOLDS

    if opts.artifact is None:
        raise DeployError("--e2e needs an ARTIFACT (a seg artifact from `dinov3-deploy export --task seg`)")
    art = load_artifact(opts.artifact)
    if art.task != "seg":
        raise DeployError(f"--e2e times the sliding window of seg artifacts; this one is '{art.task}'")
    window_size(art.shapes(), opts.window)
    batch_windows_of(art.shapes(), opts.batch_windows)
    if is_m2f_artifact(art.manifest):  # a stitch M2F has not is refused before the reference pass
        for stitch in opts.stitches:
            resolve_m2f_stitch(stitch)
    names = e2e_backends(art, opts.backends)
    is_torch = {n: parse_backend(n)[0] == "torch" for n in names}
    torch_options = _torch_options(opts, any(is_torch.values()))
    inputs = list_images([opts.e2e_images])
    combos = [(b, s, o) for b in names for s in opts.stitches for o in (torch_options if is_torch[b] else [{}])]
    unreadable: list[dict] = []
    with console.status("end-to-end") as status:
        rows = e2e_rows(art, inputs, combos, window=opts.window, batch_windows=opts.batch_windows,
                        warmup=opts.warmup, iters=opts.iters, log=lambda msg: status.update(f"end-to-end: {msg}"),
                        unreadable=unreadable)
    for failure in unreadable:  # the same rule as infer: report it, time the others
        console.print(f"[red]failed:[/] {failure['image']}: {failure['reason']}")
    timed = len(inputs) - len(unreadable)
    report = {
        "config": {"title": f"{art.manifest.backbone.name} seg end-to-end ({timed} images)", "task": "seg",
                   "mode": "e2e", "artifact": str(Path(opts.artifact).resolve()),
                   "images": timed, "unreadable": unreadable,
                   "backends": names, "stitches": opts.stitches, "torch_options": torch_options,
                   "window": opts.window, "batch_windows": opts.batch_windows,
                   "warmup": opts.warmup, "iters": opts.iters},
        "machine": machine_info(),
        "reference": "the torch fp32 backend (SDPA) with the reference stitch, same files: label agreement",
        "thresholds": {art.precision: vars(THRESHOLDS[art.precision])},
        "rows": rows,
    }
    stem = opts.name or f"{art.manifest.backbone.name}-seg-e2e-{time.strftime('%Y%m%d-%H%M%S')}"
    publish(console, report, Path(opts.out) / f"{stem}.json", opts.no_plot, "end-to-end benchmark")


def _torch_options(opts: BenchOptions, any_torch: bool) -> list[dict]:
    """The torch backend's rows: one per (--attn, --compile); an explicit --attn only (else the
    Predictor's default: triton on a GPU, sdpa on the CPU)."""
    attn_impls = opts.attn_impls if opts.attn_explicit else [None]
    compile_modes = opts.compile_modes or [None]
    torch_options = [{k: v for k, v in (("attn_impl", a), ("compile_mode", c)) if v}
                     for a in attn_impls for c in compile_modes]
    if any_torch:
        import torch

        from dinov3_deploy.runtime.device_backends import check_attn

        for a in attn_impls:
            check_attn(a, "cuda" if torch.cuda.is_available() else "cpu")
    elif torch_options != [{}]:
        raise DeployError("--attn and --compile apply to the torch backend; add torch to --backend")
    return torch_options
