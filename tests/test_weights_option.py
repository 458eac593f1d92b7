"""`--weights` means one thing in every command: a checkpoint file or a Hugging Face folder, and the
model is taken from the checkpoint whenever it says which one it holds (export once fell back to
vits16 for a file whose metadata names another model, and refused HF folders)."""

import json

import torch
from click.testing import CliRunner

from dinov3_deploy.cli import cli
from dinov3_deploy.reference.factory import random_backbone

# static shapes: torch.export takes half the time, and the model chosen is what is at stake here
EXPORT = ["export", "--task", "features", "--static", "32x32", "--batch", "1", "--no-verify"]


def test_an_hf_folder_and_our_safetensors_name_their_model(tmp_path):
    runner = CliRunner()
    torch.save(random_backbone("vit_tiny_test", 0).state_dict(), tmp_path / "w.pth")
    for target, dst in (("hf", tmp_path / "hf"), ("safetensors", tmp_path / "w.safetensors")):
        res = runner.invoke(cli, ["convert", str(tmp_path / "w.pth"), str(dst), "--to", target, "--model",
                                  "vit_tiny_test"])
        assert res.exit_code == 0, res.output
        res = runner.invoke(cli, [*EXPORT, "--weights", str(dst), "-o", str(tmp_path / f"art_{target}")])
        assert res.exit_code == 0, res.output
        manifest = json.loads((tmp_path / f"art_{target}" / "manifest.json").read_text())
        assert manifest["backbone"]["name"] == "vit_tiny_test" and not manifest["backbone"]["random_weights"]
    res = runner.invoke(cli, [*EXPORT, "--weights", str(tmp_path / "hf"), "--model", "vits16"])
    assert res.exit_code == 2 and "holds vit_tiny_test" in res.output


def test_a_silent_checkpoint_needs_model(tmp_path):
    torch.save(random_backbone("vit_tiny_test", 0).state_dict(), tmp_path / "w.pth")
    res = CliRunner().invoke(cli, [*EXPORT, "--weights", str(tmp_path / "w.pth"), "-o", str(tmp_path / "a")])
    assert res.exit_code == 2 and "pass --model" in res.output and not (tmp_path / "a").exists()
    res = CliRunner().invoke(cli, [*EXPORT, "--weights", str(tmp_path / "w.pth"), "--model", "vit_tiny_test",
                                   "-o", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
