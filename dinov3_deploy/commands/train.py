"""`dinov3-deploy train`: the reference linear-protocol trainer (frozen backbone, trained head) for
segmentation, depth and classification heads, and the Mask2Former segmentation head."""

from __future__ import annotations

import click

from dinov3_deploy.options import (
    check_task_data,
    device_option,
    out_option,
    overwrite_option,
    positive,
    random_init_option,
    task_data_option,
    weights_option,
)


# dataset kinds per task (reference/training/datasets.py DATA_KINDS, repeated here so that option
# checking imports no torch)
@click.command("train")
@click.option("--task", type=click.Choice(["seg", "depth", "cls"]), default="seg", show_default=True,
              help="Head to train: seg (linear or Mask2Former), depth (bins or DPT, metres), cls (linear on class + "
                   "mean patch token).")
@click.option("--head-type", type=click.Choice(["linear", "dpt", "m2f"]), default="linear", show_default=True,
              help="depth: linear (AdaBins-style bins on a 1x1 conv) or dpt (DPT on four layers); seg: linear or m2f "
                   "(ViT-Adapter + Mask2Former on the release's four evenly spaced layers, ViT backbones, crop and "
                   "base size multiples of 32).")
@click.option("--model", "backbone", default=None,
              help="Backbone name (see `dinov3-deploy models --all`). Default: the one --weights holds, else "
                   "vit_tiny_test.")
@weights_option("Backbone weights (.pth, .safetensors, HF folder); without it a random backbone from --seed, "
                "recorded in the head so export rebuilds the same one.")
@random_init_option("Random backbone initialisation (without --weights; recorded in the head): outliers adds "
                    "trained-like tiny LayerScale gammas and massive activations, to train a head for a "
                    "low-precision stress test.")
@click.option("--layers", type=click.Choice(["last", "four_last", "four_even"]), default=None,
              help="Backbone blocks the head reads: the last, the four last, or four evenly spaced. Default: last; "
                   "four_even for DPT.")
@task_data_option()
@out_option(None, "Run folder: head/ (the checkpoint), metrics.jsonl, train_state.pt, predictions.png. Default: "
                  "runs/<task>.")
@overwrite_option("Replace the run in --out (only a run folder of this tool holding nothing else).")
@click.option("--iters", type=int, default=200, show_default=True, callback=positive, help="Training steps.")
@click.option("--batch-size", type=int, default=8, show_default=True, callback=positive,
              help="Global batch over all processes.")
@click.option("--crop", type=int, default=128, show_default=True, callback=positive,
              help="Training crop and sliding-window size: a multiple of the backbone's input multiple (16 for "
                   "ViT, 32 for ConvNeXt).")
@click.option("--base-size", type=int, default=128, show_default=True, callback=positive,
              help="Short side before the 0.5-2.0 random scaling; evaluation resizes to it.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Peak learning rate (AdamW). Default: 1e-3 for seg, 1e-2 for depth and cls; m2f: 1e-4, "
                   "Mask2Former's ADE20K recipe (the CPU demo passes 1e-3: docs/training.md).")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=None,
              help="AdamW weight decay. Default: 1e-3; m2f: 0.05 (the recipe's).")
@click.option("--warmup", type=click.IntRange(min=0), default=None,
              help="Linear warmup steps before the decay (cosine; m2f: poly, power 0.9, the recipe's). Default: 30; "
                   "m2f: 0 (the recipe's).")
@click.option("--grad-clip", type=click.FloatRange(min=0), default=None,
              help="Max gradient norm (0 = off). Default: 0; m2f: 0.01 over all trained parameters (the recipe's).")
@click.option("--bf16", is_flag=True, help="bfloat16 autocast for backbone and head.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the data order, the head's init and (without --weights) the random backbone.")
@click.option("--eval-every", type=int, default=0, show_default=True, help="Evaluate every N steps (0 = at the end).")
@click.option("--save-every", type=int, default=100, show_default=True, help="Save the training state every N steps.")
@click.option("--cache-features", is_flag=True, help="Linear protocol with one cached augmented view per image.")
@click.option("--classes", "n_classes", type=click.IntRange(2, 8), default=6, show_default=True,
              help="Classes of the synthetic seg / cls data.")
@click.option("--min-depth", type=click.FloatRange(min=0, min_open=True), default=0.001, show_default=True,
              help="depth: the first bin centre, metres.")
@click.option("--max-depth", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="depth: the last bin centre, metres (10 for NYU; 80 for outdoor scenes).")
@click.option("--bins", "n_bins", type=click.IntRange(min=2), default=256, show_default=True,
              help="depth: number of depth bins.")
@click.option("--dpt-features", type=click.IntRange(min=8), default=256, show_default=True,
              help="depth, DPT: width of the fusion layers.")
@click.option("--hidden-dim", type=click.IntRange(min=32), default=64, show_default=True,
              help="m2f: width of the pixel decoder and transformer decoder (FFN twice it). The recipe's is 2048 "
                   "(FFN 4096); the default is scaled for CPU demos on the tiny / vits16 backbones. A multiple of 32.")
@click.option("--points", type=click.IntRange(min=1), default=None,
              help="m2f: points per mask in the loss. Default: the recipe's 12544, or (crop/4)^2 when fewer "
                   "(1024 at crop 128: the mask logits have no more pixels).")
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
    data in well under a minute on 2 CPU cores. `--head-type m2f` trains the Mask2Former segmentor's
    adapter and decoders instead (Mask2Former's ADE20K recipe; docs/training.md). Multi-process
    (gloo on CPU, NCCL on GPU), same result as one process with the same global --batch-size (M2F:
    close, not exact):

        torchrun --standalone --nproc-per-node 2 --no-python dinov3-deploy train ...
    """
    from dinov3_deploy.errors import DeployError
    from dinov3_deploy.options import resolve_model
    from dinov3_deploy.reference.configs import get_config
    from dinov3_deploy.reference.training.trainer import TrainConfig, train

    task = kw["task"]
    check_task_data(task, kw["data"])
    if kw["head_type"] == "dpt" and task != "depth":
        raise click.BadParameter(f"dpt is a depth head; --task {task} trains a linear head", param_hint="'--head-type'")
    m2f = kw["head_type"] == "m2f"
    if m2f:
        check_m2f_options(task, kw)
    elif kw["layers"] is None:
        kw["layers"] = "four_even" if kw["head_type"] == "dpt" else "last"
    elif kw["head_type"] == "dpt" and kw["layers"] == "last":
        raise click.BadParameter("the DPT head reads four layers: use four_even or four_last", param_hint="'--layers'")
    if kw["min_depth"] >= kw["max_depth"]:
        raise click.BadParameter(f"{kw['min_depth']} is not below --max-depth {kw['max_depth']}",
                                 param_hint="'--min-depth'")
    kw["out"] = kw["out"] or f"runs/{task}"
    resume, overwrite = kw.pop("resume"), kw.pop("overwrite")
    kw["progress"] = not kw.pop("no_progress")
    kw["backbone_weights"] = kw.pop("weights")
    kw["init"] = kw.pop("random_init")
    if kw["backbone_weights"] is not None and kw["init"] != "release-like":
        raise click.BadParameter(f"{kw['init']} draws a random backbone; drop --weights", param_hint="'--random-init'")
    kw["backbone"] = resolve_model(kw["backbone"], kw["backbone_weights"], default="vit_tiny_test")
    multiple = 32 if m2f else get_config(kw["backbone"]).input_multiple  # m2f: the adapter's stride 32
    for opt in ("crop", "base_size"):
        if kw[opt] % multiple:
            raise DeployError(f"--{opt.replace('_', '-')} {kw[opt]} must be a multiple of {multiple} for "
                              f"{kw['backbone']} (its patch grid)")
    cfg = TrainConfig(**kw)
    result = train(cfg, resume=resume, overwrite=overwrite)
    if "checkpoint" in result:  # rank 0 only
        from dinov3_deploy.reference.training.trainer import head_name

        print_result(task, result, title=f"{cfg.backbone} + {head_name(task, cfg.head_type)} head on {cfg.data} "
                     f"({result['step']} steps, {result['train_s']:.0f} s, {result['world_size']} process(es))")
        click.echo(f"head checkpoint: {result['checkpoint']}")
        if "figure" in result:
            click.echo(f"predictions:     {result['figure']}")


def check_m2f_options(task: str, kw: dict) -> None:
    """The M2F head: seg only, its own four layers, no cached features, a hidden width GroupNorm takes."""
    if task != "seg":
        raise click.BadParameter(f"m2f is a segmentation head; --task {task} has none", param_hint="'--head-type'")
    if kw["layers"] not in (None, "four_even"):
        raise click.BadParameter("the M2F head reads the release's four evenly spaced layers (four_even)",
                                 param_hint="'--layers'")
    kw["layers"] = "four_even"
    if kw["cache_features"]:
        raise click.BadParameter("the M2F head reads the image and four layers at every step: nothing to cache",
                                 param_hint="'--cache-features'")
    if kw["hidden_dim"] % 32:
        raise click.BadParameter(f"{kw['hidden_dim']} is not a multiple of 32 (GroupNorm's groups)",
                                 param_hint="'--hidden-dim'")


def print_result(task: str, result: dict, title: str) -> None:
    """The metrics of a run or an evaluation: a table, then one plain line for logs and scripts."""
    from rich.table import Table

    from dinov3_deploy.reference.training.tasks import RECIPES

    from ._progress import make_console

    def pct(v: float) -> str:
        return "-" if v != v else f"{v:.1f}"

    table = Table()
    if task == "depth":
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, label in (("AbsRel", "AbsRel (lower is better)"), ("RMSE", "RMSE, m (lower is better)"),
                           ("log10", "log10 (lower is better)"), ("delta1", "δ1 < 1.25, %"),
                           ("delta2", "δ2 < 1.25², %"), ("delta3", "δ3 < 1.25³, %")):
            table.add_row(label, f"{result[key]:.4f}" if key in ("AbsRel", "RMSE", "log10") else f"{result[key]:.2f}")
    else:  # per class, then the totals
        per_class, totals = {"seg": ("IoU", (("mIoU", "mIoU"), ("aAcc", "aAcc"))),
                             "cls": ("acc", (("top1", "top-1"), ("top5", "top-5")))}[task]
        table.add_column("class")
        table.add_column("IoU" if task == "seg" else "accuracy", justify="right")
        for name, v in zip(result["class_names"], result[per_class]):
            table.add_row(name, pct(v))
        table.add_section()
        for i, (key, label) in enumerate(totals):
            table.add_row(f"[bold]{label}" if i == 0 else label, f"[bold]{pct(result[key])}" if i == 0
                          else pct(result[key]))
    console = make_console()
    console.print(f"[bold]{title}")
    console.print(table)
    click.echo(RECIPES[task].summary(result))
