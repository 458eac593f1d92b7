"""Classification heads: top-1/top-5 on hand-worked logits, the synthetic classes and the
ImageNet-style folder layout, and training (it learns; resume equals an uninterrupted run)."""


import numpy as np
import pytest
import torch
from PIL import Image
from train_helpers import small_config

from dinov3_deploy.errors import DeployError
from dinov3_deploy.reference.head_checkpoint import load_task_model
from dinov3_deploy.reference.protocol.synthetic import make_cls_sample
from dinov3_deploy.reference.training.datasets import image_folder, open_dataset
from dinov3_deploy.reference.training.metrics import ClsMetrics
from dinov3_deploy.reference.training.trainer import TrainConfig, train


def _small(out, **kw) -> TrainConfig:
    return small_config(out, **{"task": "cls", "val_size": 6, **kw})


def test_top1_top5_hand_example():
    m = ClsMetrics(7)
    logits = torch.tensor([
        [9.0, 8, 7, 6, 5, 4, 3],  # true 0: top-1 hit
        [9.0, 8, 7, 6, 5, 4, 3],  # true 4: 5th best -> top-5 hit only
        [9.0, 8, 7, 6, 5, 4, 3],  # true 6: last -> neither
    ])  # fmt: skip
    pred = m.update(logits, torch.tensor([0, 4, 6]))
    assert pred.tolist() == [0, 0, 0]
    r = m.compute()
    assert r["top1"] == pytest.approx(100 / 3) and r["top5"] == pytest.approx(200 / 3) and r["images"] == 3
    assert r["acc"][0] == 100 and r["acc"][4] == 0 and np.isnan(r["acc"][1])
    assert ClsMetrics(3).update(torch.eye(3), torch.tensor([0, 1, 2])).tolist() == [0, 1, 2]
    with pytest.raises(ValueError):
        m.update(torch.zeros(2, 5), torch.tensor([0, 1]))


def test_synthetic_classes_are_balanced_and_deterministic():
    labels = [make_cls_sample(s, 32, 32, n_classes=4)[1] for s in range(8)]
    assert labels == [0, 1, 2, 3, 0, 1, 2, 3]
    a, b = make_cls_sample(5, 48, 40), make_cls_sample(5, 48, 40)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1] and a[0].shape == (48, 40, 3)
    assert not np.array_equal(make_cls_sample(11, 48, 40)[0], a[0])  # same class, another picture
    ds = open_dataset("synthetic:6", "train", task="cls", n_classes=3)
    assert ds.n_classes == 3 and [ds[i][1] for i in range(6)] == [0, 1, 2, 0, 1, 2]


def test_image_folder_layouts(tmp_path):
    def img(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(path)

    img(tmp_path / "flat" / "zebra" / "a.jpg")
    img(tmp_path / "flat" / "cat" / "b.png")
    img(tmp_path / "flat" / "cat" / "c.jpg")
    ds = image_folder(tmp_path / "flat", "val")  # no split folders: every split reads the same files
    assert ds.class_names == ["cat", "zebra"] and sorted(label for _, label in ds.items) == [0, 0, 1]
    img(tmp_path / "split" / "train" / "cat" / "a.jpg")
    img(tmp_path / "split" / "train" / "dog" / "a.jpg")
    img(tmp_path / "split" / "val" / "dog" / "b.jpg")
    val = open_dataset(f"imagefolder:{tmp_path / 'split'}", "val", task="cls")
    assert val.class_names == ["cat", "dog"] and len(val) == 1 and val[0][1] == 1  # numbered as in train/
    img(tmp_path / "split" / "val" / "eel" / "c.jpg")
    with pytest.raises(DeployError, match="not among the training classes"):
        image_folder(tmp_path / "split", "val")
    with pytest.raises(DeployError, match="not a cls dataset"):
        open_dataset(f"nyu:{tmp_path}", task="cls")


def test_cls_training_beats_chance_by_far(tmp_path):
    cfg = dict(crop=128, base_size=128, train_size=64, val_size=24, warmup=10, log_every=20)
    result = train(_small(tmp_path / "run", iters=60, batch_size=8, n_figure=8, **cfg))
    chance = 100 / 6
    assert result["top1"] > 2.5 * chance, result
    model = load_task_model(result["checkpoint"])
    assert model.spec.task == "cls" and model.spec.class_names == result["class_names"]
    assert model(torch.randn(2, 3, 64, 64))["logits"].shape == (2, 6)
    assert (tmp_path / "run" / "predictions.png").stat().st_size > 10_000
