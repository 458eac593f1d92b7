"""`dinov3-deploy eval`: sliding-window mIoU / aAcc / per-class IoU of a head checkpoint."""

from __future__ import annotations

import json

import click


@click.command("eval")
@click.option("--task", type=click.Choice(["seg"]), default="seg", show_default=True)
@click.option("--head", "head", type=click.Path(), required=True, help="Head checkpoint directory (from `train`).")
@click.option("--weights", "--backbone-weights", "backbone_weights", type=click.Path(exists=True), default=None,
              help="Backbone checkpoint; without it the backbone is random (only right for test heads).")
@click.option("--data", default="synthetic", show_default=True, help="synthetic[:N] | ade20k:PATH | folder:PATH")
@click.option("--split", default="val", show_default=True)
@click.option("--size", type=int, default=None, help="Resize to this short side (default: head input size).")
@click.option("--crop", type=int, default=None, help="Sliding-window crop (default: the head's input size).")
@click.option("--stride", type=int, default=None, help="Sliding-window stride (default: 2/3 of the crop).")
@click.option("--max-images", type=int, default=None)
@click.option("--val-size", type=int, default=None, help="Synthetic images (default: N of synthetic:N, or 24).")
@click.option("--bf16", is_flag=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(), default=None, help="Write metrics.json and predictions.png here.")
def command(task, head, backbone_weights, data, split, size, crop, stride, max_images, val_size, bf16, device,
            threads, out) -> None:
    """Evaluate a segmentation head checkpoint with the official sliding-window protocol."""
    from pathlib import Path

    import torch

    from dinov3_deploy.errors import DeployError
    from dinov3_deploy.reference.head_checkpoint import load_task_model
    from dinov3_deploy.reference.training.datasets import open_dataset
    from dinov3_deploy.reference.training.trainer import apply_threads, evaluate_seg

    from .train import print_seg_result

    model = load_task_model(head, backbone_weights=backbone_weights)
    spec = model.spec
    if spec.task != task:
        raise DeployError(f"{head} is a '{spec.task}' head, not '{task}'")
    dev = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    apply_threads(threads, spec.backbone, dev.type)
    model.to(dev)
    dataset = open_dataset(data, split, synthetic_size=val_size, n_classes=spec.n_classes)
    if dataset.n_classes != spec.n_classes:
        raise DeployError(f"{data} has {dataset.n_classes} classes but the head predicts {spec.n_classes}")
    size, crop = size or spec.input_size, crop or spec.input_size
    from rich.progress import Progress

    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    with Progress(transient=True) as progress:
        tid = progress.add_task("eval", total=n)
        metrics, kept = evaluate_seg(model, dataset, size=size, crop=crop, stride=stride, bf16=bf16,
                                     max_images=max_images, keep=4 if out else 0,
                                     progress=lambda: progress.advance(tid))
    names = spec.class_names or [str(i) for i in range(spec.n_classes)]
    print_seg_result({**metrics, "class_names": names},
                     title=f"{spec.backbone} {spec.task} head on {data} ({n} images, crop {crop}, short side {size})")
    if out:
        from dinov3_deploy.reference.training.visualize import save_prediction_figure

        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        (o / "metrics.json").write_text(json.dumps({**metrics, "class_names": names, "head": str(head),
                                                    "data": data, "images": n}, indent=2) + "\n")
        palette = spec.palette or getattr(dataset, "palette", None)
        save_prediction_figure(o / "predictions.png", kept, palette, names, title=f"mIoU {metrics['mIoU']:.1f}")
        click.echo(f"wrote {o / 'metrics.json'} and {o / 'predictions.png'}")
