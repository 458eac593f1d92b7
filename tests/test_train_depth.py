"""Depth heads: SILog and the depth metrics on hand-worked numbers, exact synthetic geometry, the
NYU folder layout, and training (it learns; resume equals an uninterrupted run; DPT trains)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from train_helpers import small_config

from dinov3_deploy.errors import DeployError
from dinov3_deploy.reference.head_checkpoint import load_task_model
from dinov3_deploy.reference.training.datasets import nyu, open_dataset
from dinov3_deploy.reference.training.depth_metrics import DepthMetrics, depth_errors, silog_loss
from dinov3_deploy.reference.training.synthetic_depth import GROUND, WALL, ground_depth, make_depth_scene
from dinov3_deploy.reference.training.trainer import TrainConfig, train


def _small(out, **kw) -> TrainConfig:
    return small_config(out, **{"task": "depth", **kw})


def test_depth_metrics_hand_example():
    # 4 pixels, one without ground truth (0): it is ignored whatever is predicted there.
    gt = torch.tensor([[1.0, 2.0], [4.0, 0.0]])
    pred = torch.tensor([[1.0, 3.0], [2.0, 99.0]])
    e = depth_errors(pred, gt)
    assert e["AbsRel"] == pytest.approx((0 + 0.5 + 0.5) / 3)
    assert e["RMSE"] == pytest.approx(math.sqrt((0 + 1 + 4) / 3))
    assert e["log10"] == pytest.approx((0 + math.log10(1.5) + math.log10(2)) / 3)
    # ratios max(p/g, g/p): 1, 1.5, 2 -> below 1.25: 1 of 3; below 1.5625: 2 (1.5); below 1.953: still 2
    assert e["delta1"] == pytest.approx(100 / 3) and e["delta2"] == pytest.approx(200 / 3)
    assert e["delta3"] == pytest.approx(200 / 3)
    assert depth_errors(pred, torch.zeros(2, 2)) is None
    # dataset metrics are the mean of the per-image metrics, images without ground truth skipped
    m = DepthMetrics()
    m.update(pred, gt)
    m.update(torch.full((2, 2), 2.0), torch.full((2, 2), 2.0))
    m.update(pred, torch.zeros(2, 2))
    r = m.compute()
    assert r["images"] == 2 and r["AbsRel"] == pytest.approx(e["AbsRel"] / 2) and r["delta1"] == pytest.approx(
        (100 / 3 + 100) / 2)


def test_silog_hand_example_and_scale_sensitivity():
    gt = torch.tensor([[[1.0, 2.0, 4.0, 0.0]]])
    # a uniform scale error s: g = log s everywhere, SILog = sqrt(log(s)^2 (1 - 0.85)) = |log s| sqrt(0.15)
    loss, n = silog_loss(gt * 2, gt)
    assert n == 1 and float(loss) == pytest.approx(math.log(2) * math.sqrt(0.15), rel=1e-5)
    # g = (0, log 2, -log 2): mean 0, mean square (2/3) log(2)^2
    loss, _ = silog_loss(torch.tensor([[[1.0, 4.0, 2.0, 7.0]]]), gt)
    assert float(loss) == pytest.approx(math.sqrt(2 / 3) * math.log(2), rel=1e-5)
    # a batch sums its images; an image without ground truth adds nothing
    loss, n = silog_loss(torch.cat([gt * 2, gt]), torch.cat([gt, torch.zeros_like(gt)]))
    assert n == 1 and float(loss) == pytest.approx(math.log(2) * math.sqrt(0.15), rel=1e-5)


def test_synthetic_depth_is_exact_and_deterministic():
    scene = make_depth_scene(5, 96, 128)
    cam = scene.camera
    v, u = np.nonzero(scene.surface == GROUND)
    assert len(v) > 100
    # the ground plane seen by a level pinhole camera H metres above it: Z = H f / (v + 0.5 - cy)
    expected = cam.height * cam.focal / (v + 0.5 - cam.cy)
    np.testing.assert_allclose(scene.depth[v, u], expected, rtol=1e-6)
    np.testing.assert_allclose(ground_depth(v + 0.5, cam), expected)
    assert np.all(scene.depth[scene.surface == WALL] == np.float32(scene.wall_depth))
    for k, box in enumerate(scene.boxes):  # fronto-parallel faces have one depth
        assert np.all(scene.depth[scene.surface == 2 + 2 * k] == np.float32(box.z0))
    assert scene.depth.min() > 0 and scene.depth.max() <= 7.0
    again = make_depth_scene(5, 96, 128)
    assert np.array_equal(again.image, scene.image) and np.array_equal(again.depth, scene.depth)
    assert not np.array_equal(make_depth_scene(6, 96, 128).depth, scene.depth)
    ds = open_dataset("synthetic:3", "train", task="depth")
    image, depth = ds[1]
    assert image.shape[:2] == depth.shape and depth.dtype == np.float32


def test_nyu_layout_reads_millimetres(tmp_path):
    for split in ("train", "test"):
        d = tmp_path / split / "kitchen_0001"
        d.mkdir(parents=True)
        Image.fromarray(np.full((4, 6, 3), 80, np.uint8)).save(d / "00001_rgb.png")
        Image.fromarray(np.array([[0, 1000, 2500, 65535, 1, 10]] * 4, dtype=np.uint16)).save(d / "00001_depth.png")
    ds = open_dataset(f"nyu:{tmp_path}", "val", task="depth")  # val reads test/
    image, depth = ds[0]
    assert image.shape == (4, 6, 3) and depth.dtype == np.float32
    np.testing.assert_allclose(depth[0], [0, 1.0, 2.5, 65.535, 0.001, 0.01], rtol=1e-6)
    assert len(nyu(tmp_path, "train")) == 1
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "train" / "kitchen_0001" / "00001_depth.png")
    with pytest.raises(DeployError, match="16-bit"):
        nyu(tmp_path, "train")[0]
    (tmp_path / "train" / "kitchen_0001" / "00001_depth.png").unlink()
    with pytest.raises(DeployError, match="no depth map"):
        nyu(tmp_path, "train")
    with pytest.raises(DeployError, match="not a depth dataset"):
        open_dataset(f"ade20k:{tmp_path}", task="depth")


def test_depth_training_at_least_halves_the_untrained_abs_rel(tmp_path):
    cfg = dict(crop=128, base_size=128, train_size=64, val_size=8, warmup=10, log_every=20)
    untrained = train(_small(tmp_path / "untrained", iters=0, **cfg))
    result = train(_small(tmp_path / "run", iters=80, batch_size=8, n_figure=2, **cfg))
    assert result["AbsRel"] < 0.5 * untrained["AbsRel"], (untrained, result)
    assert result["delta1"] > untrained["delta1"] + 10
    model = load_task_model(result["checkpoint"])
    assert model.spec.task == "depth" and model.spec.head_type == "linear" and model.spec.max_depth == 10.0
    x = torch.randn(1, 3, 64, 64)
    assert model.predict(x).shape == (1, 1, 64, 64)
    assert (tmp_path / "run" / "predictions.png").stat().st_size > 10_000


def test_dpt_head_trains_and_reloads(tmp_path):
    result = train(_small(tmp_path / "dpt", head_type="dpt", layers="four_even", dpt_features=16, n_bins=32, iters=3))
    model = load_task_model(result["checkpoint"])
    assert model.spec.head_type == "dpt" and model.spec.dpt_features == 16 and model.spec.n_bins == 32
    assert math.isfinite(result["AbsRel"])
    with pytest.raises(DeployError, match="four layers"):
        train(_small(tmp_path / "bad", head_type="dpt", layers="last"))
