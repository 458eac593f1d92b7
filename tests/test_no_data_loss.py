"""--overwrite replaces only what this tool wrote. Each case here once deleted a user's files:
`export --out . --overwrite` took notes.txt, `export --out userdir --overwrite` took
important.txt, `convert x precious --to hf --force` took thesis.tex."""

import json
import os

import torch
from cli_helpers import export_tiny
from click.testing import CliRunner

from dinov3_deploy.cli import cli
from dinov3_deploy.reference.factory import random_backbone

# static shapes: torch.export takes half the time, and what is at stake here is the folder, not the graph
SMALL_EXPORT = ["export", "--model", "vit_tiny_test", "--task", "features", "--static", "32x32", "--batch", "1",
                "--no-verify"]


def test_export_overwrite_refuses_a_user_folder_and_names_the_files(tmp_path):
    user = tmp_path / "userdir"
    user.mkdir()
    (user / "important.txt").write_text("keep me")
    res = CliRunner().invoke(cli, [*SMALL_EXPORT, "--out", str(user), "--overwrite"])
    assert res.exit_code == 2, res.output
    assert "important.txt" in res.output and "Traceback" not in res.output
    assert (user / "important.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["userdir"]  # no temporary left behind


def test_export_overwrite_in_the_current_folder_keeps_notes(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        res = CliRunner().invoke(cli, [*SMALL_EXPORT, "--out", ".", "--overwrite"])
    finally:
        os.chdir(cwd)
    assert res.exit_code == 2 and "notes.txt" in res.output
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_export_overwrite_replaces_its_own_artifact_but_not_one_with_extra_files(tmp_path):
    art = export_tiny(tmp_path, "features")  # an artifact `export` wrote (a copy of the session's shared one)
    runner = CliRunner()
    res = runner.invoke(cli, [*SMALL_EXPORT, "--out", str(art), "--overwrite", "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert json.loads((art / "manifest.json").read_text())["input"]["shapes"]["height"] == [32, 32, 32]  # replaced
    (art / "my_results.csv").write_text("1,2,3")
    res = runner.invoke(cli, [*SMALL_EXPORT, "--out", str(art), "--overwrite"])
    assert res.exit_code == 2 and "my_results.csv" in res.output
    assert (art / "my_results.csv").exists() and (art / "manifest.json").exists()


def test_convert_force_refuses_a_folder_it_did_not_write(tmp_path):
    src = tmp_path / "w.pth"
    torch.save(random_backbone("vit_tiny_test", 0).state_dict(), src)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("\\begin{document}")
    runner = CliRunner()
    res = runner.invoke(cli, ["convert", str(src), str(precious), "--to", "hf", "--model", "vit_tiny_test", "--force"])
    assert res.exit_code == 2 and "not a Hugging Face folder written by dinov3-deploy" in res.output
    assert (precious / "thesis.tex").exists()
    hf = tmp_path / "hf"
    args = ["convert", str(src), str(hf), "--to", "hf", "--model", "vit_tiny_test"]
    assert runner.invoke(cli, args).exit_code == 0
    assert runner.invoke(cli, [*args, "--overwrite"]).exit_code == 0  # its own folder: replaced
    (hf / "README.md").write_text("my notes")
    res = runner.invoke(cli, [*args, "--overwrite"])
    assert res.exit_code == 2 and "README.md" in res.output and (hf / "README.md").exists()
