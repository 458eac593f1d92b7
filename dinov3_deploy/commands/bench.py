"""`dinov3-deploy bench`: latency, throughput, memory and parity of PyTorch configurations and of
an artifact's backends, on the same inputs; JSON + Markdown + PNG under --out (default out/bench/,
git-ignored). The options become a BenchOptions; the run is bench/run.py's `run_bench`."""

from __future__ import annotations

import re

import click
from click.core import ParameterSource

from dinov3_deploy.bench.run import DEFAULT_OUT
from dinov3_deploy.options import (
    COMPILE_MODES,
    PrimaryNameOption,
    device_option,
    out_option,
    weights_option,
)
from dinov3_deploy.runtime.backends import backend_help
from dinov3_deploy.runtime.stitches import STITCHES


def _int_list(ctx, param, text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got '{text}'") from None
    if not vals or min(vals) < 1:
        raise click.BadParameter(f"batch sizes must be positive integers, got '{text}'")
    return vals


def _size(ctx, param, text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"(\d+)(?:x(\d+))?", text.strip())
    if not m or int(m[1]) < 1 or int(m[2] or m[1]) < 1:
        raise click.BadParameter(f"must be HxW or S (pixels), got '{text}'")
    return int(m[1]), int(m[2] or m[1])


def _words_of(allowed: tuple[str, ...]):
    def check(ctx, param, text: str | None) -> list[str] | None:
        if text is None:
            return None
        vals = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in vals if v not in allowed]
        if bad:
            raise click.BadParameter(f"takes a comma-separated subset of {', '.join(allowed)}; got {', '.join(bad)}")
        return vals

    return check


def _precisions():
    from dinov3_deploy.deploy_module import PRECISIONS

    return tuple(PRECISIONS)


def _attn_impls():
    from dinov3_deploy.reference.models.layers.attention import ATTN_IMPLS

    return tuple(ATTN_IMPLS)


@click.command("bench", short_help="Time PyTorch and an artifact's backends, with parity for every row.")
@click.argument("artifact", required=False, type=click.Path(file_okay=False))
@click.option("--model", "model_name", default=None,
              help="Backbone to benchmark in PyTorch (default: the one --weights holds, else vits16).")
@click.option("--task", default="seg", type=click.Choice(["features", "seg", "depth", "cls"]), show_default=True,
              help="Task head on the backbone (without an ARTIFACT).")
@weights_option()
@click.option("--head", default=None, type=click.Path(exists=True, file_okay=False),
              help="Head checkpoint directory from `dinov3-deploy train`.")
@click.option("--precision", "precisions", default=None, callback=lambda c, p, v: _words_of(_precisions())(c, p, v),
              help="PyTorch precisions, comma-separated (default: bf16 on a GPU, fp32 on the CPU; with an "
                   "ARTIFACT its precision).")
@click.option("--attn", "attn_impls", default="sdpa,math,triton", show_default=True,
              callback=lambda c, p, v: _words_of(_attn_impls())(c, p, v),
              help="Attention implementations to time (triton needs a GPU). With --e2e: the torch backend's, "
                   "one row each (default there: triton on a GPU, sdpa on the CPU).")
@click.option("--compile", "compile_modes", default="", callback=_words_of(COMPILE_MODES),
              help=f"torch.compile modes to time, comma-separated: {', '.join(COMPILE_MODES)} (with --e2e: of the "
                   "torch backend).")
@click.option("--batch-sizes", "--batch", "batch_list", cls=PrimaryNameOption, default="1", show_default=True,
              callback=_int_list, help="Batch sizes to time, comma-separated (export's --batch is a range).")
@click.option("--size", default=None, callback=_size,
              help="Input HxW or S, multiples of the model's input multiple (default: the artifact's opt shape, "
                   "else 224x224).")
@click.option("--warmup", default=3, show_default=True, type=click.IntRange(0), help="Untimed runs per row.")
@click.option("--iters", default=10, show_default=True, type=click.IntRange(1), help="Timed runs per row.")
@device_option("auto | cpu | cuda[:N]: where the PyTorch targets run.")
@click.option("--backend", "backends", default="all", show_default=True,
              help=backend_help("bench", "With an ARTIFACT: which of its backends to time: all, auto, or names "
                                "from `dinov3-deploy verify`, comma-separated (--e2e: torch, onnxruntime, tensorrt "
                                "rows through infer's Predictor)."))
@click.option("--no-pytorch", is_flag=True, help="With an artifact: time only its deployment backends.")
@out_option(DEFAULT_OUT, "Folder of the reports (JSON, Markdown, PNG); git-ignored by default. Developers "
                         "publish measured figures with --out bench/results.")
@click.option("--name", default=None, help="Report file stem (default from model, task, device, date).")
@click.option("--no-plot", is_flag=True, help="Skip the PNG.")
@click.option("--e2e", "e2e_images", default=None, type=click.Path(exists=True),
              help="With an ARTIFACT (seg): time `infer`'s whole path instead, end-to-end images/s from the files "
                   "in this folder (or this file) to labels, per --backend (all: torch and each runnable artifact "
                   "backend) and --stitch.")
@click.option("--stitch", "stitches", default="auto", show_default=True,
              callback=_words_of(STITCHES),
              help=f"--e2e: stitches to time, comma-separated: {', '.join(STITCHES)}.")
@click.option("--window", default=None, type=click.IntRange(min=1), help="--e2e: sliding-window size (as infer).")
@click.option("--batch-windows", default=None, type=click.IntRange(min=1), help="--e2e: windows per model call.")
def command(artifact, model_name, task, weights, head, precisions, attn_impls, compile_modes, batch_list, size,
            warmup, iters, device, backends, no_pytorch, out, name, no_plot, e2e_images, stitches, window,
            batch_windows) -> None:
    """Time PyTorch (eager per attention implementation, torch.compile) and an ARTIFACT's backends
    (ONNX Runtime, TensorRT engines) on the same synthetic images, with parity against the fp32
    reference for every row. Speed goals are read from these reports, never asserted in tests.

    A multi-head ARTIFACT (export --head A --head B) is timed beside each of its heads alone on the
    same backbone (a temporary single-head ONNX per head for ONNX Runtime, the single-head module for
    PyTorch): the report adds multi ms, each single ms, their sum, multi / seg-only and multi / sum."""
    from rich.console import Console

    from dinov3_deploy.bench.run import BenchOptions, run_bench

    # --attn's default lists every implementation for the model bench; for --e2e only an explicit
    # --attn picks torch rows (else the Predictor's default: triton on a GPU, sdpa on the CPU).
    explicit = click.get_current_context().get_parameter_source("attn_impls") != ParameterSource.DEFAULT
    opts = BenchOptions(artifact=artifact, model=model_name, task=task, weights=weights, head=head,
                        precisions=precisions, attn_impls=attn_impls, attn_explicit=explicit,
                        compile_modes=compile_modes or [], batch_sizes=batch_list, size=size, warmup=warmup,
                        iters=iters, device=device, backends=backends, no_pytorch=no_pytorch, out=out, name=name,
                        no_plot=no_plot, e2e_images=e2e_images, stitches=stitches, window=window,
                        batch_windows=batch_windows)
    run_bench(opts, Console(stderr=True))
