"""Small artifacts for CLI tests: the tiny test ViT, fast to export, verification skipped."""

from click.testing import CliRunner

from dinov3_deploy.cli import cli


def export_tiny(tmp_path, task: str, *extra: str):
    """Export `task` on vit_tiny_test (batch 1:1:4, H/W 32:64:128) to tmp_path/art_<task>."""
    art = tmp_path / f"art_{task}"
    res = CliRunner().invoke(cli, ["export", "--task", task, "--model", "vit_tiny_test", "--batch", "1:1:4",
                                   "--height", "32:64:128", "--no-verify", "--out", str(art), *extra])
    assert res.exit_code == 0, res.output
    return art
