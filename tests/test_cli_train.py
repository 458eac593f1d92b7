"""`dinov3-deploy train` and `eval` end to end on the built-in synthetic data."""

import json
import re

from click.testing import CliRunner

from dinov3_deploy.cli import cli


def test_train_then_eval(tmp_path):
    out = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(cli, ["train", "--task", "seg", "--out", str(out), "--iters", "30", "--train-size", "24",
                              "--val-size", "4", "--warmup", "5", "--no-progress"])
    assert res.exit_code == 0, res.output
    miou = float(re.search(r"mIoU (\d+\.\d+)", res.output).group(1))
    assert (out / "head" / "config.json").exists() and (out / "head" / "head.safetensors").exists()
    assert (out / "predictions.png").exists() and (out / "train_state.pt").exists()
    cfg = json.loads((out / "head" / "config.json").read_text())
    assert cfg["spec"]["task"] == "seg" and cfg["spec"]["backbone"] == "vit_tiny_test"
    assert cfg["spec"]["n_classes"] == 6 and len(cfg["spec"]["palette"]) == 6 and cfg["spec"]["input_size"] == 128
    assert cfg["extra"]["mIoU"] == miou or abs(cfg["extra"]["mIoU"] - miou) < 0.01

    # eval on the same validation data reproduces the number (same seeded random backbone)
    res = runner.invoke(cli, ["eval", "--task", "seg", "--head", str(out / "head"), "--data", "synthetic",
                              "--val-size", "4", "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert f"mIoU {miou:.2f}" in res.output
    for name in ("ground", "grass", "water", "brick", "sand", "metal"):
        assert name in res.output  # per-class IoU table
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert len(metrics["IoU"]) == 6 and metrics["aAcc"] > 0
    assert (tmp_path / "ev" / "predictions.png").exists()

    # the training output directory itself is accepted as --head
    res = runner.invoke(cli, ["eval", "--head", str(out), "--val-size", "4", "--max-images", "1"])
    assert res.exit_code == 0, res.output


def test_eval_errors_are_clean(tmp_path):
    res = CliRunner().invoke(cli, ["eval", "--head", str(tmp_path / "missing")])
    assert res.exit_code == 2
    assert "head checkpoint not found" in res.output and "Traceback" not in res.output


def test_an_existing_run_is_refused_resumed_or_replaced_never_lost(tmp_path):
    """`train --out` over a run refuses without --overwrite (its head may have been exported from);
    --overwrite replaces only a run folder of ours; a failed --resume leaves no folder behind."""
    runner = CliRunner()
    small = ["--iters", "2", "--train-size", "8", "--val-size", "2", "--no-progress"]
    out = tmp_path / "run"
    assert runner.invoke(cli, ["train", "--out", str(out), *small]).exit_code == 0
    head_bytes = (out / "head" / "head.safetensors").read_bytes()
    res = runner.invoke(cli, ["train", "--out", str(out), "--seed", "3", *small])
    assert res.exit_code == 2 and "--overwrite" in res.output and "--resume" in res.output
    assert (out / "head" / "head.safetensors").read_bytes() == head_bytes
    (out / "notes.txt").write_text("mine")
    res = runner.invoke(cli, ["train", "--out", str(out), "--seed", "3", "--overwrite", *small])
    assert res.exit_code == 2 and "notes.txt" in res.output
    assert (out / "head" / "head.safetensors").read_bytes() == head_bytes
    (out / "notes.txt").unlink()
    res = runner.invoke(cli, ["train", "--out", str(out), "--seed", "3", "--overwrite", *small])
    assert res.exit_code == 0, res.output
    assert (out / "head" / "head.safetensors").read_bytes() != head_bytes

    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    res = runner.invoke(cli, ["train", "--out", str(user), "--overwrite", *small])
    assert res.exit_code == 2 and "thesis.tex" in res.output and (user / "thesis.tex").exists()

    res = runner.invoke(cli, ["train", "--out", str(tmp_path / "nothing"), "--resume", *small])
    assert res.exit_code == 2 and "cannot resume" in res.output
    assert not (tmp_path / "nothing").exists()
