"""`dinov3-deploy train`: the reference linear-protocol trainer (frozen backbone, trained head)."""

from __future__ import annotations

import click

from dinov3_deploy.options import data_option, device_option, out_option, overwrite_option, weights_option


def _positive(ctx, param, value):
    if value is not None and value < 1:
        raise click.BadParameter(f"must be at least 1, got {value}")
    return value


@click.command("train")
@click.option("--task", type=click.Choice(["seg"]), default="seg", show_default=True, help="Task head to train.")
@click.option("--model", "backbone", default=None,
              help="Backbone name (see `dinov3-deploy models --all`). Default: the one --weights holds, else "
                   "vit_tiny_test.")
@weights_option("Backbone weights (.pth, .safetensors, HF folder); without it a random backbone from --seed, "
                "recorded in the head so export rebuilds the same one.")
@click.option("--layers", type=click.Choice(["last", "four_last", "four_even"]), default="last", show_default=True,
              help="Backbone blocks the head reads: the last, the four last, or four evenly spaced.")
@data_option()
@out_option("runs/seg", "Run folder: head/ (the checkpoint), metrics.jsonl, train_state.pt, predictions.png.")
@overwrite_option("Replace the run in --out (only a run folder of this tool holding nothing else).")
@click.option("--iters", type=int, default=200, show_default=True, callback=_positive, help="Training steps.")
@click.option("--batch-size", type=int, default=8, show_default=True, callback=_positive,
              help="Global batch over all processes.")
@click.option("--crop", type=int, default=128, show_default=True, callback=_positive,
              help="Training crop and sliding-window size: a multiple of the backbone's input multiple (16 for "
                   "ViT, 32 for ConvNeXt).")
@click.option("--base-size", type=int, default=128, show_default=True, callback=_positive,
              help="Short side before the 0.5-2.0 random scaling; evaluation resizes to it.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
              help="Peak learning rate (AdamW).")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=1e-3, show_default=True,
              help="AdamW weight decay.")
@click.option("--warmup", type=int, default=30, show_default=True, help="Linear warmup steps before the cosine.")
@click.option("--grad-clip", type=float, default=0.0, show_default=True, help="Max gradient norm (0 = off).")
@click.option("--bf16", is_flag=True, help="bfloat16 autocast for backbone and head.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the data order, the head's init and (without --weights) the random backbone.")
@click.option("--eval-every", type=int, default=0, show_default=True, help="Evaluate every N steps (0 = at the end).")
@click.option("--save-every", type=int, default=100, show_default=True, help="Save the training state every N steps.")
@click.option("--cache-features", is_flag=True, help="Linear protocol with one cached augmented view per image.")
@click.option("--classes", "n_classes", type=int, default=6, show_default=True, help="Classes of the synthetic data.")
@click.option("--train-size", type=int, default=256, show_default=True, help="Synthetic training images.")
@click.option("--val-size", type=int, default=24, show_default=True, help="Synthetic validation images.")
@device_option()
@click.option("--threads", type=int, default=0, show_default=True,
              help="torch CPU threads (0: 1 for the tiny test backbones, else torch's default).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its train_state.pt.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def command(**kw) -> None:
    """Train a task head on a frozen DINOv3 backbone and write a head checkpoint.

    The defaults train a linear segmentation head on the tiny test ViT with the built-in synthetic
    data in well under a minute on 2 CPU cores. Multi-process (gloo on CPU, NCCL on GPU), same
    result as one process with the same global --batch-size:

        torchrun --standalone --nproc-per-node 2 --no-python dinov3-deploy train ...
    """
    from dinov3_deploy.errors import DeployError
    from dinov3_deploy.options import resolve_model
    from dinov3_deploy.reference.configs import get_config
    from dinov3_deploy.reference.training.trainer import TrainConfig, train

    resume, overwrite = kw.pop("resume"), kw.pop("overwrite")
    kw["progress"] = not kw.pop("no_progress")
    kw["backbone_weights"] = kw.pop("weights")
    kw["backbone"] = resolve_model(kw["backbone"], kw["backbone_weights"], default="vit_tiny_test")
    multiple = get_config(kw["backbone"]).input_multiple
    for opt in ("crop", "base_size"):
        if kw[opt] % multiple:
            raise DeployError(f"--{opt.replace('_', '-')} {kw[opt]} must be a multiple of {multiple} for "
                              f"{kw['backbone']} (its patch grid)")
    cfg = TrainConfig(**kw)
    result = train(cfg, resume=resume, overwrite=overwrite)
    if "checkpoint" in result:  # rank 0 only
        print_seg_result(result, title=f"{cfg.backbone} + linear head on {cfg.data} ({result['step']} steps, "
                         f"{result['train_s']:.0f} s, {result['world_size']} process(es))")
        click.echo(f"head checkpoint: {result['checkpoint']}")
        if "figure" in result:
            click.echo(f"predictions:     {result['figure']}")


def print_seg_result(result: dict, title: str) -> None:
    from rich.table import Table

    from ._progress import make_console

    console = make_console()
    console.print(f"[bold]{title}")
    table = Table()
    table.add_column("class")
    table.add_column("IoU", justify="right")
    for name, iou in zip(result["class_names"], result["IoU"]):
        table.add_row(name, "-" if iou != iou else f"{iou:.1f}")
    table.add_section()
    table.add_row("[bold]mIoU", f"[bold]{result['mIoU']:.1f}")
    table.add_row("aAcc", f"{result['aAcc']:.1f}")
    console.print(table)
    # plain lines too, for logs and scripts
    click.echo(f"mIoU {result['mIoU']:.2f}  aAcc {result['aAcc']:.2f}")
