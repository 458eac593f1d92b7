"""Slow cells of `train --head-type m2f`: two processes under torchrun, and the CPU demo's figure."""

import json
import os
import subprocess
import sys

import pytest
from test_train_m2f import _m2f

from dinov3_deploy.reference.training.trainer import TrainConfig, train


@pytest.mark.slow
def test_two_process_m2f_matches_one_process_closely(tmp_path):
    """DDP: the mask terms are normalised by the masks of the whole batch (the criterion averages the
    count over processes); the class term and the adapter's BatchNorm statistics are per process
    (Mask2Former's own behaviour), so two processes match one closely, not bit for bit."""
    args = ["--task", "seg", "--head-type", "m2f", "--hidden-dim", "32", "--lr", "1e-3", "--iters", "2",
            "--batch-size", "4", "--crop", "64", "--base-size", "64", "--train-size", "8", "--val-size", "2",
            "--no-progress"]
    single = train(_m2f(tmp_path / "single", iters=2))
    script = tmp_path / "cli.py"
    script.write_text("from dinov3_deploy.cli import main\nmain()\n")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(script), "train", "--out", str(tmp_path / "ddp"), *args],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["world_size"] == 2
    one = [json.loads(x) for x in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    first = [r["loss"] for r in rows if r["event"] == "train"][0]
    first_one = [r["loss"] for r in one if r["event"] == "train"][0]
    # same weights and batch; the adapter's BatchNorm normalises with 2 images' statistics per process
    # instead of 4 (at a 64 crop its stride-32 level has 4 positions), and the points differ: measured
    # 92.6 vs 103.2 on the first step
    assert first == pytest.approx(first_one, rel=0.2)
    config = json.loads((tmp_path / "ddp" / "head" / "config.json").read_text())
    assert config["format"] == "dinov3-deploy-m2f-head" and config["extra"]["train"]["batch_size"] == 4
    assert "mIoU" in proc.stdout and single["step"] == 2


@pytest.mark.slow
def test_m2f_demo_beats_the_linear_and_the_untrained_head(tmp_path):
    """The CPU demo (`train --task seg --head-type m2f --lr 1e-3`: the linear demo's data, random tiny
    ViT, 200 steps of 8, crop 128). Measured on the 2-core VM: untrained 6.65 mIoU, trained 94.83
    (every class above 92 IoU); the linear head on the same backbone and data: 68.04."""
    untrained = train(TrainConfig(out=str(tmp_path / "untrained"), head_type="m2f", lr=1e-3, iters=0, progress=False,
                                  n_figure=0))
    result = train(TrainConfig(out=str(tmp_path / "demo"), head_type="m2f", lr=1e-3, progress=False))
    linear = train(TrainConfig(out=str(tmp_path / "linear"), progress=False, n_figure=0))
    assert untrained["mIoU"] < 15
    assert result["mIoU"] > 85, result
    assert result["mIoU"] > linear["mIoU"] + 10, (result["mIoU"], linear["mIoU"])
    assert min(result["IoU"]) > 75  # every class is found, not a few dominant ones
    assert (tmp_path / "demo" / "predictions.png").stat().st_size > 10_000
