"""`infer`'s run below the CLI: `run_infer(InferOptions(...), console)` predicts every image of a batch
with one Predictor and writes the results, as `export_artifact(ExportOptions(...))` exports.

A batch run must not lose results quietly: every output name is unique (checked before any work),
one unreadable image is reported and the rest still run (exit status PARTIAL_FAILURE at the end,
failures listed in predictions.json; 2 stays for usage errors), and existing files are replaced only
with `overwrite`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from dinov3_deploy.errors import DeployError

# Exit status when some images failed and the others were written.
PARTIAL_FAILURE = 1


@dataclass
class InferOptions:
    artifact: str | Path
    out: str | Path
    images: tuple[str, ...] = ()
    overwrite: bool = False
    backend: str = "auto"  # backends.py: auto = the best backend that runs here
    demo: int = 0  # also run on N built-in synthetic images
    window: int | None = None
    stride: int | None = None
    batch_windows: int | None = None
    stitch: str = "auto"
    attn: str | None = None
    compile_mode: str | None = None
    cuda_graphs: bool = True
    tta: bool = False  # Mask2Former artifacts: the release's TTA (5 ratios x mirror)


def run_infer(opts: InferOptions, console) -> int:
    """Predict and write every image; returns the exit status (0, or PARTIAL_FAILURE)."""
    from dinov3_deploy.artifact import load_artifact

    from .prediction import batch_windows_of, resolve_stitch, window_size
    from .predictor import Predictor

    out_dir = Path(opts.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise DeployError(f"--out {out_dir} is a file, not a folder; choose another output folder")
    art = load_artifact(opts.artifact)
    tasks = art.manifest.tasks  # a multi-head artifact: every head's task
    window_size(art.shapes(), opts.window)  # a bad --window or --batch-windows fails here, not once per image
    if "seg" in tasks:
        batch_windows_of(art.shapes(), opts.batch_windows)
    predictor = Predictor(art, opts.backend, attn_impl=opts.attn, compile_mode=opts.compile_mode,
                          cuda_graphs=opts.cuda_graphs)
    try:  # closed also when a check below refuses the run
        used_stitch = resolve_stitch(opts.stitch, predictor.device, art.manifest) if "seg" in tasks else None
        inputs = _inputs(opts, out_dir)
        _refuse_existing(out_dir, [f for i in inputs for t in tasks for f in _output_files(t, i.name)]
                         + ["predictions.json"], opts.overwrite)
        for note in art.manifest.notes:
            console.print(f"[yellow]note:[/] {note}")
        start = time.perf_counter()
        summaries, failures = _predict_all(opts, predictor, art, inputs, out_dir, console)
        seconds = time.perf_counter() - start
    finally:
        predictor.close()
    _write_summary(opts, art, predictor, used_stitch, inputs, summaries, failures, seconds, console)
    return PARTIAL_FAILURE if failures else 0


def _output_files(task: str, name: str) -> list[str]:
    from .outputs import output_files

    return output_files(task, name)


def _inputs(opts: InferOptions, out_dir: Path) -> list:
    from .discovery import ImageInput, list_images

    inputs = list_images(opts.images, exclude=out_dir) if opts.images else []
    if opts.demo:
        from dinov3_deploy.reference.protocol.synthetic import make_sample

        taken = {i.name for i in inputs}
        for i in range(opts.demo):
            if f"synthetic_{i}" in taken:
                raise DeployError(f"an input named synthetic_{i} would write the same files as --demo image {i}; "
                                  "rename it or drop --demo")
            inputs.append(ImageInput(f"synthetic_{i}", make_sample(1000 + i, 384, 512)[0]))
    if not inputs:
        raise DeployError("give IMAGES (files or folders) or --demo N")
    return inputs


def _predict_all(opts: InferOptions, predictor, art, inputs: list, out_dir: Path, console) -> tuple[list, list]:
    """Every image through the predictor, with a progress bar; one failure is reported and the rest run."""
    from rich.progress import Progress, TextColumn

    from .outputs import save_prediction
    from .prediction import predict_image
    from .prefetch import image_stream

    summaries, failures = [], []
    start = time.perf_counter()
    columns = (*Progress.get_default_columns(), TextColumn("{task.fields[rate]}"))
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(f"{'+'.join(art.manifest.tasks)} with {predictor.name}", total=len(inputs), rate="")
        for done, (item, image, device_image) in enumerate(image_stream(inputs, predictor.device), 1):
            try:
                if isinstance(image, Exception):
                    raise image
                pred = predict_image(predictor, item.name, image, crop=opts.window, stride=opts.stride,
                                     batch_windows=opts.batch_windows, stitch=opts.stitch, device_image=device_image,
                                     tta=opts.tta)
                summaries.append(save_prediction(pred, out_dir, art.manifest))
            except Exception as exc:  # noqa: BLE001 - one bad image must not cost the others their results
                failures.append({"image": item.name, "reason": failure_reason(exc)})
                console.print(f"[red]failed:[/] {item.name}: {failures[-1]['reason']}")
            bar.update(task, advance=1, rate=f"{done / max(time.perf_counter() - start, 1e-9):.2f} images/s")
    return summaries, failures


def failure_reason(exc: Exception) -> str:
    """One line for an image that failed: our own errors as they are, others with their type."""
    return str(exc) if isinstance(exc, DeployError) else f"{type(exc).__name__}: {exc}"


def _write_summary(opts: InferOptions, art, predictor, used_stitch, inputs, summaries, failures, seconds,
                   console) -> None:
    from dinov3_deploy.atomic import write_json

    out_dir, tasks = Path(opts.out), art.manifest.tasks
    stats = {"images_ok": len(summaries), "images_failed": len(failures), "windows_run": predictor.windows,
             "seconds": round(seconds, 3), "seconds_per_image": round(seconds / len(inputs), 4),
             "images_per_second": round(len(inputs) / seconds, 3) if seconds > 0 else None,
             "backend": predictor.name, "stitch": used_stitch,
             "tasks": {t: "sliding windows" if t == "seg" else "whole image" for t in tasks}}
    write_json(out_dir / "predictions.json", {"artifact": str(Path(opts.artifact).resolve()),
                                              "backend": predictor.name, "summary": stats,
                                              "predictions": summaries, "failures": failures})
    if "cls" in tasks:
        _print_top5(summaries)
    ran = f"{predictor.windows} window(s) run"
    if len(tasks) > 1:  # say which results came from the windows and which from the whole image
        whole = "+".join(t for t in tasks if t != "seg")
        ran = (f"{'seg on windows, ' if 'seg' in tasks else ''}{whole} on the whole image: "
               f"{predictor.windows} input(s) run")
    console.print(
        f"{len(summaries)} image(s) ok, {len(failures)} failed -> {out_dir} | {ran} | "
        f"{1000 * seconds / len(inputs):.0f} ms/image, {len(inputs) / max(seconds, 1e-9):.2f} images/s | "
        f"backend {predictor.name}" + (f", stitch {used_stitch}" if used_stitch else ""))
    if failures:
        console.print(f"[red]{len(failures)} image(s) failed[/] (listed in {out_dir / 'predictions.json'})")


def _refuse_existing(out_dir: Path, planned: list[str], overwrite: bool) -> None:
    """Refuse, before any work, to replace files this run would write unless --overwrite; files
    in --out that this run does not write are never touched either way."""
    if overwrite or not out_dir.exists():
        return
    existing = [name for name in planned if (out_dir / name).exists()]
    if existing:
        shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise DeployError(f"{out_dir} already holds {len(existing)} file(s) this run would write ({shown}); "
                          "pass --overwrite to replace them, or choose another --out")


def _print_top5(summaries: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="top-5 classes")
    for column in ("image", "rank", "class", "probability", "logit"):
        table.add_column(column, overflow="fold", justify="right" if column in ("rank", "probability", "logit")
                         else "left")
    for s in summaries:
        top5 = s.get("top5") or s.get("tasks", {}).get("cls", {}).get("top5", [])  # single- or multi-head
        for rank, entry in enumerate(top5, 1):
            table.add_row(s["image"] if rank == 1 else "", str(rank), str(entry["class"]),
                          f"{entry['probability']:.1%}", f"{entry['logit']:.3f}", end_section=rank == len(top5))
    Console().print(table)
