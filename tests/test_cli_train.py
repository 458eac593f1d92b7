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


def test_train_then_eval_depth_and_cls(tmp_path):
    runner = CliRunner()
    small = ["--iters", "8", "--train-size", "8", "--val-size", "3", "--crop", "64", "--base-size", "64",
             "--no-progress"]
    out = tmp_path / "depth"
    res = runner.invoke(cli, ["train", "--task", "depth", "--out", str(out), *small])
    assert res.exit_code == 0, res.output
    absrel = float(re.search(r"AbsRel (\d+\.\d+)", res.output).group(1))
    for label in ("RMSE", "log10", "δ1 < 1.25", "δ3 < 1.25³"):
        assert label in res.output
    cfg = json.loads((out / "head" / "config.json").read_text())
    assert cfg["spec"]["task"] == "depth" and cfg["backbone_seed"] == 0
    assert abs(cfg["extra"]["AbsRel"] - absrel) < 1e-4 and (out / "predictions.png").exists()
    res = runner.invoke(cli, ["eval", "--task", "depth", "--head", str(out), "--val-size", "3",
                              "--out", str(tmp_path / "ev_depth")])
    assert res.exit_code == 0, res.output
    assert f"AbsRel {absrel:.4f}" in res.output  # the same number: same images, same random backbone
    metrics = json.loads((tmp_path / "ev_depth" / "metrics.json").read_text())
    assert metrics["images"] == 3 and metrics["delta1"] >= 0 and (tmp_path / "ev_depth" / "predictions.png").exists()

    out = tmp_path / "cls"
    res = runner.invoke(cli, ["train", "--task", "cls", "--out", str(out), *small])
    assert res.exit_code == 0, res.output
    top1 = float(re.search(r"top-1 (\d+\.\d+)", res.output).group(1))
    res = runner.invoke(cli, ["eval", "--head", str(out), "--val-size", "3", "--out", str(tmp_path / "ev_cls")])
    assert res.exit_code == 0, res.output  # --task defaults to the head's
    assert f"top-1 {top1:.2f}" in res.output and "top-5" in res.output
    assert json.loads((tmp_path / "ev_cls" / "metrics.json").read_text())["images"] == 3

    # a head of another task is refused
    res = runner.invoke(cli, ["eval", "--task", "seg", "--head", str(out)])
    assert res.exit_code == 2 and "'cls' head" in res.output


def test_train_options_fail_at_the_option(tmp_path):
    runner = CliRunner()
    cases = [
        (["--task", "depth", "--data", f"ade20k:{tmp_path}"], "--data", "not a depth dataset"),
        (["--task", "seg", "--data", f"nyu:{tmp_path}"], "--data", "not a seg dataset"),
        (["--task", "cls", "--data", "imagefolder:/does/not/exist"], "--data", "not found"),
        (["--task", "seg", "--head-type", "dpt"], "--head-type", "depth head"),
        (["--task", "depth", "--head-type", "dpt", "--layers", "last"], "--layers", "four layers"),
        (["--task", "depth", "--min-depth", "5", "--max-depth", "2"], "--min-depth", "not below"),
    ]
    for args, option, message in cases:
        res = runner.invoke(cli, ["train", "--out", str(tmp_path / "never"), *args])
        assert res.exit_code == 2, (args, res.output)
        assert option in res.output and message in res.output, res.output
    assert not (tmp_path / "never").exists()
