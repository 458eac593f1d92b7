"""Every user error, in every command, ends in one clear line and exit status 2: no traceback, and
the message names the option (or argument) at fault. Each row here once crashed or was accepted
silently."""

import pytest
import torch
from click.testing import CliRunner

from dinov3_deploy.cli import COMMANDS, cli

CUDA = torch.cuda.is_available()


def _cases(tmp: str) -> list[tuple[list[str], str]]:
    """(argv, text the message must contain)."""
    return [
        (["models", "--bogus"], "--bogus"),
        (["convert", f"{tmp}/nonexistent.pth", f"{tmp}/o.pth", "--to", "official"], "not found"),
        (["convert", f"{tmp}/nonexistent.pth", f"{tmp}/o.pth", "--to", "onnx"], "--to"),
        (["export", "--precision", "int4"], "--precision"),
        (["export", "--weights", f"{tmp}/nothere.pth"], "--weights"),
        (["export", "--weights", tmp], "--weights"),  # a folder that is no HF model folder
        (["export", "--height", "65"], "--height"),
        (["export", "--batch", "0"], "--batch"),
        (["export", "--model", "vit_tiny_test", "--attention", "plugin", "--precision", "fp32", "--no-verify"],
         "--precision"),
        (["verify", f"{tmp}/nothing"], "artifact"),
        (["verify", f"{tmp}/nothing", "--weights", tmp], "--weights"),
        (["verify", f"{tmp}/nothing", "--weights", f"{tmp}/nothere.pth"], "--weights"),
        (["inspect", f"{tmp}/nothing"], "artifact"),
        (["infer", f"{tmp}/nothing", f"{tmp}", "-o", f"{tmp}/out"], "artifact"),
        (["infer", f"{tmp}/nothing", f"{tmp}", "-o", f"{tmp}/out", "--stride", "0"], "--stride"),
        (["infer", f"{tmp}/nothing", f"{tmp}", "-o", f"{tmp}/out", "--window", "-16"], "--window"),
        (["bench", "--compile", "bogus"], "--compile"),
        (["bench", "--device", "tpu"], "--device"),
        (["bench", "--size", "65"], "--size"),
        (["bench", "--batch-sizes", "0"], "--batch-sizes"),
        (["bench", "--attn", "flash9"], "--attn"),
        (["train", "--iters", "0"], "--iters"),
        (["train", "--crop", "100"], "--crop"),
        (["train", "--data", "synthetic:abc"], "--data"),
        (["train", "--data", f"folder:{tmp}/missing"], "--data"),
        (["train", "--weights", f"{tmp}/nothere.pth"], "--weights"),
        (["eval", "--head", f"{tmp}/nohead"], "head"),
        (["eval", "--head", f"{tmp}/nohead", "--stride", "0"], "--stride"),
        *([] if CUDA else [(["train", "--device", "cuda"], "--device"), (["bench", "--device", "cuda:0"], "--device"),
                           (["eval", "--head", f"{tmp}/nohead", "--device", "cuda"], "--device")]),
    ]


def test_every_command_has_a_bad_input_row():
    rows = {argv[0] for argv, _ in _cases("/x")}
    assert rows == set(COMMANDS), set(COMMANDS) - rows


@pytest.mark.parametrize("index", range(len(_cases("/x"))))
def test_bad_invocation_exits_2_with_one_clear_line(tmp_path, index):
    argv, expected = _cases(str(tmp_path))[index]
    res = CliRunner().invoke(cli, argv)
    out = res.output
    assert res.exit_code == 2, (argv, res.exit_code, out, res.exception)
    assert "Traceback" not in out and not isinstance(res.exception, (AttributeError, TypeError, KeyError)), out
    assert expected in out, (argv, out)
    error_lines = [line for line in out.splitlines() if line.lower().startswith("error")]
    assert len(error_lines) == 1, out
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "a temporary was left behind"


def test_every_option_says_what_it_does():
    """`--help` documents every option of every command (some once had none)."""
    import click

    missing = []
    for name in COMMANDS:
        command = cli.get_command(None, name)
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip():
                if param.name != "help":
                    missing.append(f"{name} {param.opts[0]}")
    assert not missing, missing


def _placeholder(param) -> list[str]:
    import click

    value = param.type.choices[0] if isinstance(param.type, click.Choice) else "x"
    return [param.opts[0], value] if isinstance(param, click.Option) else [value]


def test_a_missing_required_parameter_is_clicks_usage_error_on_every_command():
    """Every required option and argument of every command, left out, is click's usage error (exit 2,
    'Missing ...'), never a traceback: `infer ART IMAGES` without -o once passed None on and crashed.
    Commands without a required parameter have nothing to leave out."""
    covered = []
    for name in COMMANDS:
        command = cli.get_command(None, name)
        required = [p for p in command.params if p.required and p.nargs != -1]
        for missing in required:
            argv = [name] + [v for p in required if p is not missing for v in _placeholder(p)]
            res = CliRunner().invoke(cli, argv)
            assert res.exit_code == 2, (argv, res.exit_code, res.output, res.exception)
            assert "Missing" in res.output and "Traceback" not in res.output, (argv, res.output)
            covered.append((name, missing.name))
    assert ("infer", "out") in covered and ("eval", "head") in covered and ("convert", "target") in covered
