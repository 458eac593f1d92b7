"""Options every command spells and checks the same way: `--weights` (one type, one resolver),
`--device`, `--overwrite`, `-o/--out`. A bad value fails at the option, naming it and the rule
(click prints "Invalid value for '--x'" and exits 2), before any work starts."""

from __future__ import annotations

import re
from pathlib import Path

import click

from dinov3_deploy.errors import DeployError

HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# torch.compile modes the torch backend accepts (infer --compile, bench --compile)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class PrimaryNameOption(click.Option):
    """An option whose help shows only its first name: older spellings stay accepted (--force,
    --backbone-weights) without cluttering the help."""

    def get_help_record(self, ctx):
        opts = self.opts
        short = [o for o in opts if not o.startswith("--")]
        self.opts = short + [o for o in opts if o.startswith("--")][:1]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = opts


class WeightsPath(click.ParamType):
    """Backbone weights: a checkpoint file (.pth/.pt/.bin/.safetensors) or a Hugging Face model
    folder. Returns the absolute path as a string."""

    name = "weights"

    def convert(self, value, param, ctx):
        if value is None:
            return None
        p = Path(value)
        if not p.exists():
            self.fail(f"backbone weights not found: {value}", param, ctx)
        if p.is_dir() and not any((p / n).exists() for n in HF_WEIGHT_FILES):
            self.fail(f"{value} is a folder without {' / '.join(HF_WEIGHT_FILES)}: not a Hugging Face model folder",
                      param, ctx)
        return str(p.resolve())


def weights_option(help_text: str = "Backbone weights: Meta's .pth, a Hugging Face folder or file, timm, or our "
                                    ".safetensors. Random weights without it."):
    return click.option("--weights", "--backbone-weights", "weights", cls=PrimaryNameOption, type=WeightsPath(),
                        default=None, help=help_text)


def random_init_option(help_text: str):
    """--random-init: how a random backbone is drawn (export, train)."""
    from dinov3_deploy.model_source import RANDOM_INITS  # imports no torch

    return click.option("--random-init", type=click.Choice(RANDOM_INITS), default="release-like", show_default=True,
                        help=help_text)


def resolve_model(model: str | None, weights: str | None, default: str | None = None) -> str | None:
    """The backbone name: from the weights whenever they say which model they hold (our safetensors
    metadata, an HF config.json, Meta's file name), checked against --model when both are given;
    else --model, else `default` (only when there are no weights to be silent about)."""
    if weights is None:
        return model or default
    from dinov3_deploy.reference.formats.identify import identify_backbone

    found, how = identify_backbone(weights)
    if found is not None and model is not None and found != model:
        raise DeployError(f"--model {model} does not match the weights: {weights} holds {found} (from its {how}); "
                          "drop --model")
    if found is None and model is None:
        raise DeployError(f"cannot tell which backbone {weights} holds (no metadata, config.json or official file "
                          "name); pass --model (see `dinov3-deploy models`)")
    return found or model


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


class Device(click.ParamType):
    """auto | cpu | cuda[:N]; a CUDA device that this machine lacks is refused here."""

    name = "device"

    def convert(self, value, param, ctx):
        if not _DEVICE.fullmatch(str(value)):
            self.fail(f"'{value}' is not a device: use auto, cpu, cuda or cuda:N", param, ctx)
        if value.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                self.fail(f"'{value}' asked for, but this machine has no CUDA GPU (torch.cuda.is_available() is "
                          "False); use --device cpu or auto", param, ctx)
            index = int(value.split(":")[1]) if ":" in value else 0
            if index >= torch.cuda.device_count():
                self.fail(f"'{value}' asked for, but this machine has {torch.cuda.device_count()} GPU(s)", param, ctx)
        return value


def device_option(help_text: str = "auto (a CUDA GPU when there is one, else the CPU) | cpu | cuda[:N]."):
    return click.option("--device", type=Device(), default="auto", show_default=True, help=help_text)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


TASK_DATA = {"seg": ("synthetic", "ade20k", "folder"), "depth": ("synthetic", "nyu"),
             "cls": ("synthetic", "imagefolder")}


class DataSpec(click.ParamType):
    """A dataset spec, checked before any model is built: synthetic[:N] (every task); seg:
    ade20k:PATH, folder:PATH; depth: nyu:PATH; cls: imagefolder:PATH."""

    name = "data"

    def convert(self, value, param, ctx):
        from pathlib import Path

        kind, _, arg = str(value).partition(":")
        if kind == "synthetic":
            if arg and not (arg.isdigit() and int(arg) > 0):
                self.fail(f"'{value}': synthetic:N takes a positive number of images", param, ctx)
            return value
        if kind not in ("ade20k", "folder", "nyu", "imagefolder"):
            self.fail(f"'{value}' is not a dataset: use synthetic[:N], ade20k:PATH or folder:PATH (seg), nyu:PATH "
                      "(depth), imagefolder:PATH (cls)", param, ctx)
        if not arg:
            self.fail(f"'{value}': {kind}:PATH needs the dataset folder", param, ctx)
        if not Path(arg).is_dir():
            self.fail(f"'{value}': dataset folder {arg} not found", param, ctx)
        return value


def task_data_option():
    return click.option("--data", type=DataSpec(), default="synthetic", show_default=True,
                        help="synthetic[:N] (built in, every task) | seg: ade20k:PATH (ADEChallengeData2016), "
                             "folder:PATH (images/, masks/, classes.txt) | depth: nyu:PATH (train/ and test/ with "
                             "NAME_rgb.png + NAME_depth.png, 16-bit millimetres) | cls: imagefolder:PATH "
                             "(PATH/[train|val/]<class>/*.jpg).")


def check_task_data(task: str, data: str) -> None:
    """A dataset of another task fails at --data (exit 2), before any work."""
    kind = data.partition(":")[0]
    if kind not in TASK_DATA[task]:
        usage = " or ".join("synthetic[:N]" if k == "synthetic" else f"{k}:PATH" for k in TASK_DATA[task])
        raise click.BadParameter(f"'{data}' is not a {task} dataset: use {usage} with --task {task}",
                                 param_hint="'--data'")


def positive(ctx, param, value):
    """click callback: None or an integer >= 1."""
    if value is not None and value < 1:
        raise click.BadParameter(f"must be at least 1, got {value}")
    return value


def overwrite_option(help_text: str):
    return click.option("--overwrite", "--force", "overwrite", cls=PrimaryNameOption, is_flag=True, help=help_text)


def out_option(default: str | None, help_text: str, **kw):
    if not kw.get("required"):  # click skips the required check when a default (even None) is passed
        kw["default"] = default
    return click.option("-o", "--out", "out", type=click.Path(), show_default=default is not None,
                        help=help_text, **kw)


# Compute capabilities TensorRT-RTX does not build for, and why (checked at the option, before the
# export's minutes of work). Hopper (9.0) is a data-centre GPU: full TensorRT is what runs there.
RTX_UNSUPPORTED = {"SM90": "TensorRT-RTX does not support compute capability 9.0 (Hopper); full TensorRT runs "
                           "there: --trt-flavor tensorrt (pip install 'dinov3-deploy[trt]') on that GPU"}


def rtx_targets() -> tuple[str, ...]:
    """The targets the installed TensorRT-RTX names (its ComputeCapability members); without it, the
    defaults and CURRENT (the build then fails on the missing TensorRT-RTX, with its own message)."""
    from dinov3_deploy.engines.trt_api import DEFAULT_RTX_TARGETS

    try:
        import tensorrt_rtx
    except ImportError:
        return (*DEFAULT_RTX_TARGETS, "CURRENT")
    return tuple(k for k in tensorrt_rtx.ComputeCapability.__members__ if k != "NONE")


def parse_trt_targets(ctx, param, value: str | None) -> list[str] | None:
    """--trt-targets "SM86,sm89" -> ["SM86", "SM89"]; an unknown target fails here, naming the known ones."""
    if value is None:
        return None
    names = [t.strip().upper() for t in value.split(",") if t.strip()]
    if not names:
        raise click.BadParameter("give comma-separated compute capabilities, e.g. SM86,SM89")
    for name in names:
        if name in RTX_UNSUPPORTED:
            raise click.BadParameter(f"{name}: {RTX_UNSUPPORTED[name]}")
    known = rtx_targets()
    bad = [t for t in names if t not in known]
    if bad:
        raise click.BadParameter(f"unknown TensorRT-RTX target(s) {', '.join(bad)}; known: {', '.join(known)}")
    return names


def trt_targets_option():
    from dinov3_deploy.engines.trt_api import DEFAULT_RTX_TARGETS

    return click.option(
        "--trt-targets", default=None, callback=parse_trt_targets, metavar="SM86,SM89,...",
        help=f"TensorRT-RTX compute capabilities to build for. Default: {','.join(DEFAULT_RTX_TARGETS)}. "
             "Not SM90: TensorRT-RTX does not run on Hopper; use --trt-flavor tensorrt there.")
