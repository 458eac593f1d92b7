"""`dinov3-deploy infer ARTIFACT IMAGES... -o OUT`: predictions of a deployed artifact on images."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dinov3_deploy.errors import DeployError


@click.command("infer")
@click.argument("artifact", type=click.Path(file_okay=False))
@click.argument("images", nargs=-1)
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--backend", default="auto", show_default=True,
              help="auto (the first runnable backend of the artifact), or a name from `dinov3-deploy verify`.")
@click.option("--demo", default=0, type=click.IntRange(0), help="Also run on N built-in synthetic images.")
@click.option("--window", default=None, type=int, help="seg: sliding-window size (default: the artifact's opt size).")
@click.option("--stride", default=None, type=int, help="seg: window stride (default: 2/3 of the window).")
def command(artifact, images, out_dir, backend, demo, window, stride) -> None:
    """Segmentation masks (official sliding-window protocol), depth maps, class scores or patch
    features for IMAGES (files or folders), written as PNG/NPY plus predictions.json."""
    import numpy as np
    from rich.console import Console
    from rich.progress import Progress

    from dinov3_deploy.artifact import load_artifact
    from dinov3_deploy.inference import ArtifactModel, list_images, predict_image, read_rgb, save_prediction
    from dinov3_deploy.runners import artifact_backends

    console = Console(stderr=True)
    art = load_artifact(artifact)
    backends = artifact_backends(art)
    runnable = [b for b in backends if b.runner is not None]
    if backend != "auto":
        chosen = [b for b in backends if b.name == backend]
        if not chosen:
            raise DeployError(f"unknown backend '{backend}'; this artifact has {', '.join(b.name for b in backends)}")
        if chosen[0].runner is None:
            raise DeployError(f"{backend} cannot run here: {chosen[0].skip_reason}")
        be = chosen[0]
    elif runnable:
        be = runnable[0]
    else:
        raise DeployError("no backend of this artifact runs here: " +
                          "; ".join(f"{b.name}: {b.skip_reason}" for b in backends))
    inputs: list[tuple[str, np.ndarray]] = []
    if images:
        inputs += [(p.name, p) for p in list_images(list(images))]
    if demo:
        from dinov3_deploy.reference.training.synthetic import make_sample

        inputs += [(f"synthetic_{i}.png", make_sample(1000 + i, 384, 512)[0]) for i in range(demo)]
    if not inputs:
        raise DeployError("give IMAGES (files or folders) or --demo N")
    for note in art.manifest.get("notes", []):
        console.print(f"[yellow]note:[/] {note}")
    model = ArtifactModel(art, be.runner)
    out = Path(out_dir)
    summaries = []
    try:
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task(f"{art.task} with {be.name}", total=len(inputs))
            for name, src in inputs:
                image = read_rgb(src) if isinstance(src, Path) else src
                pred = predict_image(model, name, image, crop=window, stride=stride)
                summaries.append(save_prediction(pred, out, art.manifest))
                bar.advance(task)
    finally:
        close = getattr(be.runner, "close", None)
        if close:
            close()
    (out / "predictions.json").write_text(json.dumps({"artifact": str(Path(artifact).resolve()),
                                                      "backend": be.name, "predictions": summaries}, indent=2))
    console.print(f"{len(summaries)} image(s) -> {out} ({be.name})")
