"""The reference trainer: it learns, resume equals an uninterrupted run, two processes equal one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import small_config

from dinov3_deploy.errors import CheckpointError
from dinov3_deploy.reference.head_checkpoint import load_task_model
from dinov3_deploy.reference.training import tasks as tasks_mod
from dinov3_deploy.reference.training.trainer import lr_factor, sample_indices, train

_small = small_config


def _head_tensors(d):
    from safetensors.torch import load_file

    return load_file(str(Path(d) / "head" / "head.safetensors"))


def test_lr_schedule_warmup_then_cosine():
    total, warmup = 100, 10
    f = [lr_factor(s, total, warmup) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warmup
    assert f[10] == pytest.approx(1.0) and f[55] == pytest.approx(0.5)  # cosine midpoint
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert lr_factor(total, total, warmup) == pytest.approx(0.0)


def test_sample_indices_are_seeded_epoch_permutations():
    n, b = 10, 4
    stream = [i for s in range(5) for i in sample_indices(s, b, n, seed=3)]  # 20 = two epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert stream[:10] != stream[10:]
    assert sample_indices(2, b, n, seed=3) == sample_indices(2, b, n, seed=3)
    assert sample_indices(2, b, n, seed=4) != sample_indices(2, b, n, seed=3)


def test_learns_synthetic_segmentation_well_above_chance(tmp_path):
    # Random frozen tiny ViT + linear head. Chance level is the untrained head on the same data.
    cfg = dict(crop=128, base_size=128, train_size=64, val_size=12, warmup=10, log_every=20)
    untrained = train(_small(tmp_path / "untrained", iters=0, **cfg))
    result = train(_small(tmp_path / "run", iters=80, n_figure=2, eval_every=40, **cfg))
    assert untrained["mIoU"] < 20
    assert result["mIoU"] > 40, result
    assert result["mIoU"] > 3 * untrained["mIoU"]
    assert sum(iou > 10 for iou in result["IoU"]) >= 5  # not one dominant class
    # the run's artifacts: a checkpoint that reloads to the same numbers, metrics, a figure
    model = load_task_model(result["checkpoint"])
    assert model.spec.class_names == result["class_names"] and model.spec.input_size == 128
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["event"] == "config" and rows[-1]["event"] == "eval"
    assert [r["step"] for r in rows if r["event"] == "eval"] == [40, 80]  # periodic + final evaluation
    losses = [r["loss"] for r in rows if r["event"] == "train"]
    assert losses[-1] < losses[0]
    assert (tmp_path / "run" / "predictions.png").stat().st_size > 10_000


@pytest.mark.parametrize("task, metrics", [("depth", ("AbsRel", "RMSE")), ("cls", ("top1", "top5"))])
def test_depth_and_cls_resume_bit_identically(tmp_path, task, metrics):
    """The one training loop resumes every task exactly (seg: the test below, with its state)."""
    small = dict(task=task, val_size=6 if task == "cls" else 2)
    full = train(_small(tmp_path / "full", **small))
    part = train(_small(tmp_path / "part", **small), stop_after=4)
    assert part["step"] == 4 and "checkpoint" not in part
    resumed = train(_small(tmp_path / "part", **small), resume=True)
    a, b = _head_tensors(tmp_path / "full"), _head_tensors(tmp_path / "part")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [resumed[m] for m in metrics] == [full[m] for m in metrics]


def test_resume_equals_uninterrupted(tmp_path):
    full = train(_small(tmp_path / "full"))
    part = train(_small(tmp_path / "part"), stop_after=3)
    assert part["step"] == 3 and "checkpoint" not in part
    resumed = train(_small(tmp_path / "part"), resume=True)
    a, b = _head_tensors(tmp_path / "full"), _head_tensors(tmp_path / "part")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["mIoU"] == full["mIoU"]
    sa = torch.load(tmp_path / "full" / "train_state.pt", weights_only=True)
    sb = torch.load(tmp_path / "part" / "train_state.pt", weights_only=True)
    assert sa["scheduler"] == sb["scheduler"]
    for ka, kb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert torch.equal(ka["exp_avg_sq"], kb["exp_avg_sq"])
    steps = [json.loads(x).get("step") for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps if s is not None][:6] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_a_different_run(tmp_path):
    train(_small(tmp_path / "r"), stop_after=2)
    with pytest.raises(CheckpointError, match="batch_size"):
        train(_small(tmp_path / "r", batch_size=8), resume=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        train(_small(tmp_path / "other"), resume=True)


def test_cached_features_run_the_backbone_once_per_image(tmp_path, monkeypatch):
    rows, finite = [], []
    real, real_logits = tasks_mod.backbone_maps, tasks_mod.seg_logits_fn

    def counting(model, x, bf16):
        rows.append(x.shape[0])
        maps = real(model, x, bf16)
        finite.extend(bool(torch.isfinite(m).all()) for m in maps)
        return maps

    def checked_logits(model, bf16=False):
        fn = real_logits(model, bf16)

        def wrapped(x):
            logits = fn(x)
            finite.append(bool(torch.isfinite(logits).all()))
            return logits

        return wrapped

    monkeypatch.setattr(tasks_mod, "backbone_maps", counting)
    monkeypatch.setattr(tasks_mod, "seg_logits_fn", checked_logits)
    # 6 steps x 4 samples over 8 images: every image is drawn, each goes through the backbone once
    train(_small(tmp_path / "c", train_size=8, cache_features=True, bf16=True))
    assert sum(rows) == 8
    # the bf16 path gives finite cached features and finite evaluation logits (a NaN logit would
    # still give a finite mIoU: argmax of NaN is a label too)
    assert len(finite) > len(rows) and all(finite)


def test_two_process_gloo_ddp_equals_one_process(tmp_path):
    args = ["--iters", "4", "--batch-size", "4", "--crop", "64", "--base-size", "64", "--train-size", "12",
            "--val-size", "3", "--warmup", "2", "--no-progress"]
    single = train(_small(tmp_path / "single", iters=4, val_size=3, n_figure=4))
    # the CLI entry point as a script, so the test does not depend on where console scripts live
    script = tmp_path / "cli.py"
    script.write_text("from dinov3_deploy.cli import main\nmain()\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(script), "train", "--out", str(tmp_path / "ddp"), *args],
        capture_output=True, text=True, env=env, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    a, b = _head_tensors(tmp_path / "single"), _head_tensors(tmp_path / "ddp")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    cfg = json.loads((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()[0])
    assert cfg["world_size"] == 2
    assert f"mIoU {single['mIoU']:.2f}" in proc.stdout
