"""`train --head-type m2f`: the Mask2Former head on the one training loop learns, resumes bit for
bit, writes an M2F head that `eval` reads back, and runs through the CLI."""

import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from train_helpers import small_config

from dinov3_deploy.cli import cli
from dinov3_deploy.reference.training.trainer import poly_factor, train

# tiny and quick: 64 x 64 crops, hidden width 32 (FFN 64), 256 loss points per mask
_M2F = dict(head_type="m2f", hidden_dim=32, lr=1e-3, iters=4, init="outliers", train_size=8, batch_size=4, crop=64,
            base_size=64, val_size=2, warmup=None)


def _m2f(out, **kw):
    return small_config(out, **{**_M2F, **kw})


def _tensors(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "head" / "head.safetensors"))


def _losses(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["event"] == "train"]


def test_poly_schedule_is_mask2formers():
    assert poly_factor(0, 100, 0) == 1.0
    assert poly_factor(50, 100, 0) == pytest.approx(0.5**0.9)
    assert poly_factor(100, 100, 0) == 0.0
    assert poly_factor(4, 100, 10) == pytest.approx(0.5)  # warmup still linear


def test_m2f_learns_resumes_bit_identically_and_writes_a_head(tmp_path):
    full = train(_m2f(tmp_path / "full", n_figure=1))
    losses = _losses(tmp_path / "full")
    assert len(losses) == 4 and losses[-1] < 0.9 * losses[0], losses  # the matched losses fall quickly at first

    part = train(_m2f(tmp_path / "part"), stop_after=2)
    assert part["step"] == 2 and "checkpoint" not in part
    resumed = train(_m2f(tmp_path / "part"), resume=True)
    a, b = _tensors(tmp_path / "full"), _tensors(tmp_path / "part")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # adapter BN statistics included
    assert resumed["mIoU"] == full["mIoU"] and _losses(tmp_path / "part") == losses

    # the run folder: an M2F head recording its backbone, metrics, a figure, the state for --resume
    run = tmp_path / "full"
    assert {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()} == {
        "metrics.jsonl", "train_state.pt", "predictions.png", "head/config.json", "head/head.safetensors"}
    config = json.loads((run / "head" / "config.json").read_text())
    assert config["format"] == "dinov3-deploy-m2f-head" and config["backbone"] == "vit_tiny_test"
    assert config["backbone_seed"] == 0 and config["backbone_init"] == "outliers"
    assert config["hidden_dim"] == 32 and config["num_classes"] == 6
    assert config["extra"]["train"]["weight_decay"] == 0.05 and config["extra"]["train"]["grad_clip"] == 0.01
    assert not any(k.startswith("segmentation_model.0.backbone.") for k in a)

    # the head alone rebuilds the segmentor it was trained as (backbone from seed and init) and
    # gives the training run's figure with the same protocol
    from dinov3_deploy.reference import create_segmentor
    from dinov3_deploy.reference.factory import random_backbone
    from dinov3_deploy.reference.training.datasets import open_dataset
    from dinov3_deploy.reference.training.m2f_eval import evaluate_m2f

    seg = create_segmentor("vit_tiny_test", head_weights=run / "head")
    want = random_backbone("vit_tiny_test", 0, init="outliers").state_dict()
    assert all(torch.equal(v, want[k]) for k, v in seg.backbone.state_dict().items())
    val = open_dataset("synthetic", "val", synthetic_size=2, n_classes=6, task="seg")
    metrics, _ = evaluate_m2f(seg, val, short_side=64, crop=64, stride=42, ratios=(1.0,), flip=False)
    assert metrics["mIoU"] == full["mIoU"]


def test_m2f_refuses_cached_features(tmp_path):
    from dinov3_deploy.errors import DeployError

    with pytest.raises(DeployError, match="cached features"):
        train(_m2f(tmp_path / "c", cache_features=True))


def test_cli_train_m2f_then_eval(tmp_path):
    out = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(cli, ["train", "--task", "seg", "--head-type", "m2f", "--hidden-dim", "32", "--out", str(out),
                              "--iters", "2", "--batch-size", "2", "--crop", "64", "--base-size", "64",
                              "--train-size", "4", "--val-size", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "Mask2Former head" in res.output
    miou = float(re.search(r"mIoU (\d+\.\d+)", res.output).group(1))
    config = json.loads((out / "head" / "config.json").read_text())
    assert config["extra"]["train"]["lr"] is None and config["extra"]["train"]["points"] == 256
    # eval reads the head, rebuilds its backbone, and with the training evaluation's protocol
    # (one scale, no flip, the crop and stride) reproduces the training run's figure
    res = runner.invoke(cli, ["eval", "--task", "seg", "--head", str(out / "head"), "--data", "synthetic",
                              "--val-size", "2", "--no-tta", "--short-side", "64", "--crop", "64", "--stride", "42"])
    assert res.exit_code == 0, res.output
    assert f"mIoU {miou:.2f}" in res.output


@pytest.mark.parametrize("args, message", [
    (["--task", "depth", "--head-type", "m2f"], "segmentation head"),
    (["--head-type", "m2f", "--hidden-dim", "48"], "multiple of 32"),
    (["--head-type", "m2f", "--cache-features"], "nothing to cache"),
    (["--head-type", "m2f", "--layers", "last"], "four evenly spaced"),
    (["--head-type", "m2f", "--crop", "112"], "multiple of 32"),
])
def test_cli_train_m2f_refuses_bad_options(tmp_path, args, message):
    res = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "x"), *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x").exists()
