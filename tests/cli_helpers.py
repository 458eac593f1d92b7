"""Small artifacts for CLI tests: the tiny test ViT, fast to export, verification skipped.

An export costs 10-20 s of torch.export on 2 cores and a copy a few milliseconds, while many test
files want the very same artifact (the seg one above all). So each (task, options) is exported
once per test session and every caller gets its own copy, as if it had exported it: a test may
change or tamper with its artifact without touching anyone else's."""

import os
import shutil
import tempfile
import traceback

from click.testing import CliRunner

from dinov3_deploy.cli import cli

_EXPORTED: dict[tuple[str, ...], str] = {}  # (task, *extra) -> an untouched artifact in _store()
_STORE: list[tempfile.TemporaryDirectory] = []  # removed when the session's interpreter exits


def _store() -> str:
    if not _STORE:
        _STORE.append(tempfile.TemporaryDirectory(prefix="export_tiny_"))
    return _STORE[0].name


def export_failure(res) -> str:
    """The CLI's output and, when the export raised (CliRunner catches it and prints nothing), the
    exception with its traceback: a failed fixture must say why."""
    if res.exc_info is None or isinstance(res.exception, SystemExit):
        return res.output
    return res.output + "\n" + "".join(traceback.format_exception(*res.exc_info))


def export_tiny(tmp_path, task: str, *extra: str):
    """Export `task` on vit_tiny_test (batch 1:1:4, H/W 32:64:128) to tmp_path/art_<task>."""
    art = tmp_path / f"art_{task}"
    key = (task, *extra)
    # an option naming a file (a head, weights) may name different bytes in the next test: export those each time
    reusable = not any(os.path.exists(a) for a in extra)
    if reusable and key in _EXPORTED:
        shutil.copytree(_EXPORTED[key], art)
        return art
    res = CliRunner().invoke(cli, ["export", "--task", task, "--model", "vit_tiny_test", "--batch", "1:1:4",
                                   "--height", "32:64:128", "--no-verify", "--out", str(art), *extra])
    assert res.exit_code == 0, export_failure(res)
    if reusable:
        kept = os.path.join(_store(), str(len(_EXPORTED)))
        shutil.copytree(art, kept)
        _EXPORTED[key] = kept
    return art
