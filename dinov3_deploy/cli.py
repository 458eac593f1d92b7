"""The `dinov3-deploy` command line. Each command lives in dinov3_deploy/commands/<name>.py
and is imported only when invoked, so `dinov3-deploy models` does not pay for onnx or tensorrt."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from dinov3_deploy import __version__
from dinov3_deploy.errors import DeployError

# command name -> module in dinov3_deploy.commands exposing a click command named `command`
COMMANDS: dict[str, str] = {
    "models": "models",
    "convert": "convert",
    "export": "export",
    "verify": "verify",
    "inspect": "inspect",
    "train": "train",
    "eval": "evaluate",
    "infer": "infer",
    "bench": "bench",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [name for name, mod in COMMANDS.items() if _module_exists(mod)]

    def get_command(self, ctx, name):
        mod = COMMANDS.get(name)
        if mod is None or not _module_exists(mod):
            return None
        return importlib.import_module(f"dinov3_deploy.commands.{mod}").command

    def format_commands(self, ctx, formatter):
        """Each command's summary in full (its short_help, else its help's first sentence), wrapped;
        click's default cuts it at the terminal width with '...'."""
        rows = [(name, self.get_command(ctx, name).get_short_help_str(limit=1000)) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DeployError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(2)


def _module_exists(mod: str) -> bool:
    return importlib.util.find_spec(f"dinov3_deploy.commands.{mod}") is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dinov3-deploy")
def cli() -> None:
    """Export, verify and benchmark DINOv3 models as ONNX / TensorRT deployment artifacts."""


def main() -> None:
    sys.exit(cli.main(standalone_mode=True))
