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
from dinov3_deploy.options import COMPILE_MODES, out_option, overwrite_option

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
@click.option("--attn", default=None, type=click.Choice(["sdpa", "triton"]),
              help="--backend torch: attention implementation (default: triton on a GPU, sdpa on the CPU; triton "
                   "on the CPU needs TRITON_INTERPRET=1).")
@click.option("--compile", "compile_mode", default=None, type=click.Choice(COMPILE_MODES),
              help="--backend torch: run the model through torch.compile in this mode.")
@click.option("--cuda-graphs/--no-cuda-graphs", default=True, show_default=True,
              help="On a GPU, replay one CUDA graph per input shape (torch and tensorrt backends); off: launch "
                   "every call eagerly.")
def command(artifact, images, out, overwrite, backend, demo, window, stride, batch_windows, stitch, attn,
            compile_mode, cuda_graphs) -> None:
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

    A multi-head artifact (export --head A --head B, or --task seg,depth,cls) writes every
    task's files above for each image: seg from the sliding windows, the other tasks from one
    pass over the whole image (the same results as their single-head artifacts).

    Images that cannot be read or run are reported (name and reason) and the others still run;
    the exit status is then 1 and predictions.json lists the failures (2: a usage error)."""
    from rich.console import Console
    from rich.progress import Progress, TextColumn

    from dinov3_deploy.artifact import load_artifact
    from dinov3_deploy.atomic import write_json
    from dinov3_deploy.runtime.inference import (
        ImageInput,
        batch_windows_of,
        image_stream,
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
    tasks = art.manifest.tasks  # a multi-head artifact: every head's task
    window_size(art.shapes(), window)  # a bad --window or --batch-windows fails here, not once per image
    if "seg" in tasks:
        batch_windows_of(art.shapes(), batch_windows)
    predictor = Predictor(art, backend, attn_impl=attn, compile_mode=compile_mode, cuda_graphs=cuda_graphs)
    click.get_current_context().call_on_close(predictor.close)  # also when a check below refuses the run
    used_stitch = resolve_stitch(stitch, predictor.device) if "seg" in tasks else None
    inputs: list[ImageInput] = list_images(images, exclude=out_dir) if images else []
    if demo:
        from dinov3_deploy.reference.protocol.synthetic import make_sample

        taken = {i.name for i in inputs}
        for i in range(demo):
            if f"synthetic_{i}" in taken:
                raise DeployError(f"an input named synthetic_{i} would write the same files as --demo image {i}; "
                                  "rename it or drop --demo")
            inputs.append(ImageInput(f"synthetic_{i}", make_sample(1000 + i, 384, 512)[0]))
    if not inputs:
        raise DeployError("give IMAGES (files or folders) or --demo N")
    _refuse_existing(out_dir, [f for i in inputs for t in tasks for f in output_files(t, i.name)]
                     + ["predictions.json"], overwrite)
    for note in art.manifest.notes:
        console.print(f"[yellow]note:[/] {note}")

    summaries, failures = [], []
    start = time.perf_counter()
    columns = (*Progress.get_default_columns(), TextColumn("{task.fields[rate]}"))
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(f"{'+'.join(tasks)} with {predictor.name}", total=len(inputs), rate="")
        for done, (item, image, device_image) in enumerate(image_stream(inputs, predictor.device), 1):
            try:
                if isinstance(image, Exception):
                    raise image
                pred = predict_image(predictor, item.name, image, crop=window, stride=stride,
                                     batch_windows=batch_windows, stitch=stitch, device_image=device_image)
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
             "backend": predictor.name, "stitch": used_stitch,
             "tasks": {t: "sliding windows" if t == "seg" else "whole image" for t in tasks}}
    write_json(out_dir / "predictions.json", {"artifact": str(Path(artifact).resolve()), "backend": predictor.name,
                                              "summary": stats, "predictions": summaries, "failures": failures})
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
        top5 = s.get("top5") or s.get("tasks", {}).get("cls", {}).get("top5", [])  # single- or multi-head
        for rank, entry in enumerate(top5, 1):
            table.add_row(s["image"] if rank == 1 else "", str(rank), str(entry["class"]),
                          f"{entry['probability']:.1%}", f"{entry['logit']:.3f}", end_section=rank == len(top5))
    Console().print(table)
