"""`dinov3-deploy eval`: the metrics of a head checkpoint: sliding-window mIoU / aAcc / per-class IoU
(seg), AbsRel / RMSE / log10 / δ1-3 (depth), top-1 / top-5 (cls). A Mask2Former segmentor head (our
M2F head directory or Meta's head file) is evaluated with the release's M2F protocol instead
(protocol/m2f.py: multi-scale + flip TTA around the crop-896 / stride-596 sliding window)."""

from __future__ import annotations

import click

from dinov3_deploy.options import (
    check_task_data,
    device_option,
    out_option,
    positive,
    resolve_device,
    task_data_option,
    weights_option,
)


@click.command("eval")
@click.option("--task", type=click.Choice(["seg", "depth", "cls"]), default=None,
              help="The head's task (default: the one the checkpoint records; checked against it).")
@click.option("--head", "head", type=click.Path(), required=True, help="Head checkpoint directory (from `train`).")
@weights_option("Backbone weights; default: the ones the head records (checked by hash), or the random "
                "backbone it was trained on.")
@task_data_option()
@click.option("--split", default="val", show_default=True,
              help="Dataset split to evaluate (ADE20K: validation; folder: the split's subfolder).")
@click.option("--short-side", "size", type=int, default=None, callback=positive,
              help="Resize images to this short side first (default: the head's input size).")
@click.option("--crop", type=int, default=None, callback=positive,
              help="seg: sliding-window crop; cls: centre crop (default: the head's input size). Depth predicts "
                   "whole images.")
@click.option("--stride", type=int, default=None, callback=positive,
              help="seg: sliding-window stride (default: 2/3 of the crop).")
@click.option("--max-images", type=int, default=None, callback=positive,
              help="Evaluate only the first N images.")
@click.option("--val-size", type=int, default=None, callback=positive,
              help="Synthetic images (default: N of synthetic:N, or 24).")
@click.option("--bf16", is_flag=True, help="bfloat16 autocast for backbone and head (as the official evaluation).")
@click.option("--no-tta", "no_tta", is_flag=True,
              help="M2F heads: one view at the short side, no flip (the release's protocol has 5 scales x flip).")
@click.option("--backbone", "backbone_name", default=None,
              help="M2F head files in Meta's layout: the backbone they sit on (default: from the adapter's width).")
@device_option()
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="torch CPU threads (0: 1 for the tiny test backbones, else torch's default).")
@out_option(None, "Write metrics.json and predictions.png here.")
def command(task, head, weights, data, split, size, crop, stride, max_images, val_size, bf16, no_tta, backbone_name,
            device, threads, out) -> None:
    """Evaluate a head checkpoint: seg with the official sliding-window protocol, depth on whole
    images (metres, where the ground truth is valid), cls on centre crops; Mask2Former segmentor
    heads with the release's M2F protocol."""
    from pathlib import Path

    import torch

    from dinov3_deploy.errors import DeployError
    from dinov3_deploy.reference.formats.m2f_checkpoint import is_m2f_head

    if is_m2f_head(head):
        if task not in (None, "seg"):
            raise DeployError(f"{head} is a Mask2Former segmentation head, not a '{task}' head")
        if bf16:
            raise DeployError("--bf16 is not supported for Mask2Former heads (the reference evaluates them in fp32)")
        return evaluate_m2f_head(head, weights, backbone_name, data, split, size, crop, stride, max_images, val_size,
                                 not no_tta, device, threads, out)
    from dinov3_deploy.reference.head_checkpoint import load_task_model, read_head_spec
    from dinov3_deploy.reference.training.datasets import open_dataset
    from dinov3_deploy.reference.training.tasks import RECIPES
    from dinov3_deploy.reference.training.trainer import apply_threads

    from .train import print_result

    recorded = read_head_spec(head).task
    if task is not None and recorded != task:
        raise DeployError(f"{head} is a '{recorded}' head, not '{task}'")
    task = recorded
    if task not in RECIPES:
        raise DeployError(f"{head} is a '{task}' head: there is nothing to evaluate (seg, depth and cls heads are)")
    check_task_data(task, data)
    model = load_task_model(head, backbone_weights=weights)
    spec = model.spec
    dev = torch.device(resolve_device(device))
    apply_threads(threads, spec.backbone, dev.type)
    model.to(dev)
    dataset = open_dataset(data, split, synthetic_size=val_size, n_classes=spec.n_classes or 6, task=task)
    if task != "depth" and dataset.n_classes != spec.n_classes:
        raise DeployError(f"{data} has {dataset.n_classes} classes but the head predicts {spec.n_classes}")
    size, crop = size or spec.input_size, crop or spec.input_size
    from rich.progress import Progress

    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    with Progress(transient=True) as progress:
        tid = progress.add_task("eval", total=n)
        metrics, kept = RECIPES[task].evaluate(model, dataset, size=size, crop=crop, stride=stride, bf16=bf16,
                                               max_images=max_images, keep=(4 if task != "cls" else 16) if out else 0,
                                               progress=lambda: progress.advance(tid))
    names = spec.class_names or [str(i) for i in range(spec.n_classes)]
    how = {"seg": f"crop {crop}, short side {size}", "depth": f"short side {size}",
           "cls": f"short side {size}, centre crop {crop}"}[task]
    print_result(task, {**metrics, "class_names": names},
                 title=f"{spec.backbone} {spec.task} head on {data} ({n} images, {how})")
    if out:
        from dinov3_deploy.atomic import write_json

        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        write_json(o / "metrics.json", {**metrics, "class_names": names, "head": str(head), "data": data, "images": n})
        if task == "seg" and not spec.palette:  # old heads: the dataset's colours
            spec.palette = getattr(dataset, "palette", None) or spec.palette
        RECIPES[task].figure(o / "predictions.png", kept, model, RECIPES[task].summary(metrics))
        click.echo(f"wrote {o / 'metrics.json'} and {o / 'predictions.png'}")


def evaluate_m2f_head(head, weights, backbone_name, data, split, size, crop, stride, max_images, val_size, tta,
                      device, threads, out) -> None:
    """`eval` of a Mask2Former segmentor head with the release's protocol (defaults: short side 896,
    crop 896, stride 596, 5 scales x flip)."""
    from pathlib import Path

    import torch
    from rich.progress import Progress

    from dinov3_deploy.errors import DeployError
    from dinov3_deploy.reference import create_segmentor
    from dinov3_deploy.reference.configs import normalization_for_weights
    from dinov3_deploy.reference.formats.m2f_checkpoint import head_backbone
    from dinov3_deploy.reference.protocol import m2f
    from dinov3_deploy.reference.training.datasets import open_dataset
    from dinov3_deploy.reference.training.m2f_eval import evaluate_m2f
    from dinov3_deploy.reference.training.trainer import apply_threads

    from .train import print_result

    check_task_data("seg", data)
    backbone, config = head_backbone(head, backbone_name)
    if config is None and weights is None:
        raise DeployError(f"{head} is a head file in Meta's layout, without its backbone: pass --weights (the "
                          f"{backbone} backbone checkpoint, e.g. dinov3_{backbone}_pretrain_lvd1689m-<hash>.pth)")
    dev = torch.device(resolve_device(device))
    apply_threads(threads, backbone, dev.type)
    model = create_segmentor(backbone, weights=weights, head_weights=head).to(dev)
    dataset = open_dataset(data, split, synthetic_size=val_size, n_classes=model.num_classes, task="seg")
    if dataset.n_classes != model.num_classes:
        raise DeployError(f"{data} has {dataset.n_classes} classes but the head predicts {model.num_classes}")
    mean, std = normalization_for_weights(weights)
    if config is not None and config.get("mean") and config.get("std"):
        mean, std = tuple(config["mean"]), tuple(config["std"])
    size, crop, stride = size or m2f.SHORT_SIDE, crop or m2f.CROP, stride or m2f.STRIDE
    ratios = m2f.TTA_RATIOS if tta else (1.0,)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    with Progress(transient=True) as progress:
        tid = progress.add_task("eval (M2F)", total=n)
        metrics, kept = evaluate_m2f(model, dataset, short_side=size, crop=crop, stride=stride, ratios=ratios,
                                     flip=tta, mean=mean, std=std, max_images=max_images, keep=4 if out else 0,
                                     progress=lambda: progress.advance(tid))
    names = list(dataset.class_names)
    how = f"short side {size}, crop {crop}, stride {stride}, " + ("TTA 5 scales x flip" if tta else "no TTA")
    print_result("seg", {**metrics, "class_names": names},
                 title=f"{backbone} Mask2Former segmentor on {data} ({n} images, {how})")
    if out:
        from dinov3_deploy.atomic import write_json
        from dinov3_deploy.reference.training.visualize import save_prediction_figure

        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        write_json(o / "metrics.json", {**metrics, "class_names": names, "head": str(head), "data": data, "images": n,
                                        "protocol": {"short_side": size, "crop": crop, "stride": stride,
                                                     "ratios": list(ratios), "flip": tta}})
        save_prediction_figure(o / "predictions.png", kept, dataset.palette, names,
                               title=f"mIoU {metrics['mIoU']:.2f}")
        click.echo(f"wrote {o / 'metrics.json'} and {o / 'predictions.png'}")
