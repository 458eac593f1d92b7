"""`dinov3-deploy infer ARTIFACT IMAGES... -o OUT`: predictions of a deployed artifact on images.

A batch run must not lose results quietly: every output name is unique (checked before any work),
one unreadable image is reported and the rest still run (exit status 1 at the end, failures listed
in predictions.json; 2 stays for usage errors), and existing files are replaced only with --overwrite.

The model runs through one Predictor (runtime/predictor.py): images go to the backend's device once,
sliding windows are cut, run and stitched there, and only the results come back to numpy."""

from __future__ import annotations

import time
from pathlib import Path

import click

from dinov3_deploy.errors import DeployError
from dinov3_deploy.options import out_option, overwrite_option

# Exit status when some images failed and the others were written.
PARTIAL_FAILURE = 1


@click.command("infer")
@click.argument("artifact", type=click.Path(file_okay=False))
@click.argument("images", nargs=-1)
@out_option(None, "Output folder. Each image's files mirror its path relative to the folder given, extension "
                  "included: IMAGES/sub/a.jpg -> OUT/sub/a.jpg_seg.png.", required=True)
@overwrite_option("Replace files in --out that this run writes (other files there are left alone).")
@click.option("--backend", default="auto", show_default=True,
              help="auto | torch | onnxruntime | tensorrt, or a long name from `dinov3-deploy verify` "
                   "(onnxruntime-cpu, onnxruntime-cuda, ...). auto: the engine or ONNX Runtime on a GPU, "
                   "ONNX Runtime on the CPU.")
@click.option("--demo", default=0, type=click.IntRange(0), help="Also run on N built-in synthetic images.")
@click.option("--window", default=None, type=click.IntRange(min=1),
              help="seg: sliding-window size, a multiple of the artifact's input multiple (default: its opt size).")
@click.option("--stride", default=None, type=click.IntRange(min=1), help="seg: window stride (default: 2/3 of the "
              "window; a stride above the window is clamped to it).")
@click.option("--batch-windows", default=None, type=click.IntRange(min=1),
              help="seg: windows per model call, within the artifact's batch range (default: up to 4).")
@click.option("--stitch", default="auto", show_default=True, type=click.Choice(["auto", "triton", "torch"]),
              help="seg: how window logits become labels: the Triton kernel on the device, or the reference "
                   "(PyTorch). auto: triton on a GPU, torch on the CPU.")
def command(artifact, images, out, overwrite, backend, demo, window, stride, batch_windows, stitch) -> None:
    """Segmentation masks (official sliding-window protocol), depth maps, class scores or patch
    features for IMAGES (files, or folders read recursively), plus predictions.json in OUT.

    \b
    NAME: the image's path relative to the folder argument, extension included
    (the file name for a file argument; synthetic_N for --demo). Per image:
      seg       NAME_labels.png (class ids),
                NAME_seg.png (image | overlay | mask, with a class legend)
      depth     NAME_depth.npy (metres),
                NAME_depth.png (image | depth, with a colour bar in metres)
      cls       the top-5 classes, printed and in predictions.json
      features  NAME_patch_tokens.npy, NAME_pca.png

    Images that cannot be read or run are reported (name and reason) and the others still run;
    the exit status is then 1 and predictions.json lists the failures (2: a usage error)."""
    from rich.console import Console
    from rich.progress import Progress, TextColumn

    from dinov3_deploy.artifact import load_artifact
    from dinov3_deploy.atomic import write_json
    from dinov3_deploy.runtime.inference import (
        ImageInput,
        batch_windows_of,
        decoded,
        list_images,
        output_files,
        predict_image,
        resolve_stitch,
        save_prediction,
        window_size,
    )
    from dinov3_deploy.runtime.predictor import Predictor

    console = Console(stderr=True)
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise DeployError(f"--out {out_dir} is a file, not a folder; choose another output folder")
    art = load_artifact(artifact)
    window_size(art.shapes(), window)  # a bad --window or --batch-windows fails here, not once per image
    if art.task == "seg":
        batch_windows_of(art.shapes(), batch_windows)
    predictor = Predictor(art, backend)
    click.get_current_context().call_on_close(predictor.close)  # also when a check below refuses the run
    used_stitch = resolve_stitch(stitch, predictor.device) if art.task == "seg" else None
    inputs: list[ImageInput] = list_images(images, exclude=out_dir) if images else []
    if demo:
        from dinov3_deploy.reference.training.synthetic import make_sample

        taken = {i.name for i in inputs}
        for i in range(demo):
            if f"synthetic_{i}" in taken:
                raise DeployError(f"an input named synthetic_{i} would write the same files as --demo image {i}; "
                                  "rename it or drop --demo")
            inputs.append(ImageInput(f"synthetic_{i}", make_sample(1000 + i, 384, 512)[0]))
    if not inputs:
        raise DeployError("give IMAGES (files or folders) or --demo N")
    _refuse_existing(out_dir, [f for i in inputs for f in output_files(art.task, i.name)] + ["predictions.json"],
                     overwrite)
    for note in art.manifest.notes:
        console.print(f"[yellow]note:[/] {note}")

    summaries, failures = [], []
    start = time.perf_counter()
    columns = (*Progress.get_default_columns(), TextColumn("{task.fields[rate]}"))
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(f"{art.task} with {predictor.name}", total=len(inputs), rate="")
        for done, (item, image) in enumerate(decoded(inputs), 1):
            try:
                if isinstance(image, Exception):
                    raise image
                pred = predict_image(predictor, item.name, image, crop=window, stride=stride,
                                     batch_windows=batch_windows, stitch=stitch)
                summaries.append(save_prediction(pred, out_dir, art.manifest))
            except Exception as exc:  # noqa: BLE001 - one bad image must not cost the others their results
                reason = str(exc) if isinstance(exc, DeployError) else f"{type(exc).__name__}: {exc}"
                failures.append({"image": item.name, "reason": reason})
                console.print(f"[red]failed:[/] {item.name}: {reason}")
            bar.update(task, advance=1, rate=f"{done / max(time.perf_counter() - start, 1e-9):.2f} images/s")
    seconds = time.perf_counter() - start
    stats = {"images_ok": len(summaries), "images_failed": len(failures), "windows_run": predictor.windows,
             "seconds": round(seconds, 3), "seconds_per_image": round(seconds / len(inputs), 4),
             "images_per_second": round(len(inputs) / seconds, 3) if seconds > 0 else None,
             "backend": predictor.name, "stitch": used_stitch}
    write_json(out_dir / "predictions.json", {"artifact": str(Path(artifact).resolve()), "backend": predictor.name,
                                              "summary": stats, "predictions": summaries, "failures": failures})
    if art.task == "cls":
        _print_top5(summaries)
    console.print(
        f"{len(summaries)} image(s) ok, {len(failures)} failed -> {out_dir} | {predictor.windows} window(s) run | "
        f"{1000 * seconds / len(inputs):.0f} ms/image, {len(inputs) / max(seconds, 1e-9):.2f} images/s | "
        f"backend {predictor.name}" + (f", stitch {used_stitch}" if used_stitch else ""))
    if failures:
        console.print(f"[red]{len(failures)} image(s) failed[/] (listed in {out_dir / 'predictions.json'})")
        click.get_current_context().exit(PARTIAL_FAILURE)


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
        for rank, entry in enumerate(s.get("top5", []), 1):
            table.add_row(s["image"] if rank == 1 else "", str(rank), str(entry["class"]),
                          f"{entry['probability']:.1%}", f"{entry['logit']:.3f}", end_section=rank == len(s["top5"]))
    Console().print(table)
