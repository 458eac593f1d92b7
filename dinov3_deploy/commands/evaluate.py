"""`dinov3-deploy eval`: sliding-window mIoU / aAcc / per-class IoU of a head checkpoint."""

from __future__ import annotations

import click

from dinov3_deploy.options import data_option, device_option, out_option, weights_option


def _positive(ctx, param, value):
    if value is not None and value < 1:
        raise click.BadParameter(f"must be at least 1, got {value}")
    return value


@click.command("eval")
@click.option("--task", type=click.Choice(["seg"]), default="seg", show_default=True)
@click.option("--head", "head", type=click.Path(), required=True, help="Head checkpoint directory (from `train`).")
@weights_option("Backbone weights; default: the ones the head records (checked by hash), or the random "
                "backbone it was trained on.")
@data_option()
@click.option("--split", default="val", show_default=True,
              help="Dataset split to evaluate (ADE20K: validation; folder: the split's subfolder).")
@click.option("--short-side", "size", type=int, default=None, callback=_positive,
              help="Resize images to this short side before the sliding window (default: the head's input size).")
@click.option("--crop", type=int, default=None, callback=_positive,
              help="Sliding-window crop (default: the head's input size).")
@click.option("--stride", type=int, default=None, callback=_positive,
              help="Sliding-window stride (default: 2/3 of the crop).")
@click.option("--max-images", type=int, default=None, callback=_positive,
              help="Evaluate only the first N images.")
@click.option("--val-size", type=int, default=None, callback=_positive,
              help="Synthetic images (default: N of synthetic:N, or 24).")
@click.option("--bf16", is_flag=True, help="bfloat16 autocast for backbone and head (as the official evaluation).")
@device_option()
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="torch CPU threads (0: 1 for the tiny test backbones, else torch's default).")
@out_option(None, "Write metrics.json and predictions.png here.")
def command(task, head, weights, data, split, size, crop, stride, max_images, val_size, bf16, device,
            threads, out) -> None:
    """Evaluate a segmentation head checkpoint with the official sliding-window protocol."""
    from pathlib import Path

    import torch

    from dinov3_deploy.errors import DeployError
    from dinov3_deploy.reference.head_checkpoint import load_task_model
    from dinov3_deploy.reference.training.datasets import open_dataset
    from dinov3_deploy.reference.training.trainer import apply_threads, evaluate_seg

    from .train import print_seg_result

    model = load_task_model(head, backbone_weights=weights)
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
        from dinov3_deploy.atomic import write_json
        from dinov3_deploy.reference.training.visualize import save_prediction_figure

        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        write_json(o / "metrics.json", {**metrics, "class_names": names, "head": str(head), "data": data, "images": n})
        palette = spec.palette or getattr(dataset, "palette", None)
        save_prediction_figure(o / "predictions.png", kept, palette, names, title=f"mIoU {metrics['mIoU']:.1f}")
        click.echo(f"wrote {o / 'metrics.json'} and {o / 'predictions.png'}")
