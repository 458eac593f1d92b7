"""Mask2Former targets from the seg datasets' class maps, and the synthetic data as M2F training data."""

import numpy as np
import pytest
import torch
from PIL import Image

from dinov3_deploy.reference.protocol.synthetic import make_sample
from dinov3_deploy.reference.training.datasets import ade20k, open_dataset
from dinov3_deploy.reference.training.m2f_targets import batch_targets, semantic_to_targets


def test_one_binary_mask_per_present_class_ignore_in_none():
    sem = torch.tensor([[0, 0, 3, 255],
                        [5, 3, 3, 255],
                        [5, 5, 0, 0]], dtype=torch.uint8)  # classes 1, 2, 4 absent
    t = semantic_to_targets(sem, n_classes=6)
    assert t["labels"].dtype == torch.int64 and t["labels"].tolist() == [0, 3, 5]
    assert t["masks"].dtype == torch.bool and t["masks"].shape == (3, 3, 4)
    assert t["masks"][1].nonzero().tolist() == [[0, 2], [1, 1], [1, 2]]  # class 3's pixels, and only those
    assert t["masks"][2].nonzero().tolist() == [[1, 0], [2, 0], [2, 1]]
    coverage = t["masks"].sum(0)
    assert (coverage[sem == 255] == 0).all()  # ignored pixels belong to no mask
    assert (coverage[sem != 255] == 1).all()  # every other pixel to exactly one


def test_all_ignore_image_has_no_targets_and_bad_classes_are_errors():
    empty = semantic_to_targets(torch.full((4, 5), 255, dtype=torch.uint8), n_classes=3)
    assert empty["labels"].shape == (0,) and empty["masks"].shape == (0, 4, 5)
    with pytest.raises(ValueError, match="class 3 in a mask of a 3-class dataset"):
        semantic_to_targets(torch.tensor([[0, 3]]), n_classes=3)
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        semantic_to_targets(torch.zeros(1, 2, 2), n_classes=3)
    batch = batch_targets(torch.tensor([[[0, 1]], [[255, 255]]]), n_classes=2)
    assert [t["labels"].tolist() for t in batch] == [[0, 1], []]


def test_ade20k_targets_after_reduce_zero_label(tmp_path):
    """ADE20K's 0 ("other") is ignored and k becomes class k - 1 by the dataset, before the targets."""
    root = tmp_path / "ADEChallengeData2016"
    for sub, arr in (("images", np.full((2, 3, 3), 90, np.uint8)),
                     ("annotations", np.array([[0, 1, 1], [150, 0, 1]], np.uint8))):
        path = root / sub / "validation" / f"ADE_val_00000001.{'jpg' if sub == 'images' else 'png'}"
        path.parent.mkdir(parents=True)
        Image.fromarray(arr).save(path)
    _, mask = ade20k(root, "val")[0]
    t = semantic_to_targets(torch.from_numpy(mask), n_classes=150)
    assert t["labels"].tolist() == [0, 149]
    assert t["masks"][0].tolist() == [[False, True, True], [False, False, True]]
    assert t["masks"][1].tolist() == [[False, False, False], [True, False, False]]


def test_folder_layout_targets(tmp_path):
    (tmp_path / "classes.txt").write_text("road\nsky\ncar\n")
    for sub, arr in (("images", np.zeros((2, 4, 3), np.uint8)),
                     ("masks", np.array([[2, 2, 255, 0], [2, 0, 0, 255]], np.uint8))):
        (tmp_path / sub).mkdir()
        Image.fromarray(arr).save(tmp_path / sub / "a.png")
    ds = open_dataset(f"folder:{tmp_path}", "val")
    t = semantic_to_targets(torch.from_numpy(ds[0][1]), n_classes=ds.n_classes)
    assert t["labels"].tolist() == [0, 2]  # no label shifting; class 1 (sky) absent
    assert t["masks"].sum((1, 2)).tolist() == [3, 3]


def test_synthetic_seg_data_has_several_classes_and_objects_per_image():
    """A mask head needs several (class, mask) targets per image to learn matching: the training split
    of `synthetic` (6 classes, 160x160) gives 2-6 classes and several separate regions per image."""
    from scipy import ndimage

    classes, regions = [], []
    for seed in range(50):
        _, mask = make_sample(seed, 160, 160)
        present = np.unique(mask)
        classes.append(len(present))
        # connected regions of at least 64 pixels (a 2x2 patch of a 16-pixel-patch backbone's feature map)
        regions.append(sum(int((np.bincount(ndimage.label(mask == c)[0].ravel())[1:] >= 64).sum()) for c in present))
    assert min(classes) >= 2 and np.mean(classes) >= 3.5
    assert np.mean(regions) >= 5 and np.mean(np.array(regions) > np.array(classes)) >= 0.5
