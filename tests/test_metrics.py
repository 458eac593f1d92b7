"""mIoU / aAcc against hand-worked examples (official dataset-level semantics)."""

import math

import pytest
import torch

from dinov3_deploy.reference.training.metrics import SegMetrics, area_stats, mean_iou


def test_hand_example_with_absent_and_ignored_classes():
    # 4 classes. Class 3 appears nowhere (excluded from the mean); class 2 is predicted once but
    # never labelled (IoU 0, *included*); 255 pixels are ignored whatever is predicted there.
    target = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 2, 3]])
    inter, union, area_pred, area_label = area_stats(pred, target, 4)
    assert inter.tolist() == [3, 2, 0, 0]
    assert area_label.tolist() == [4, 3, 0, 0]
    assert area_pred.tolist() == [3, 3, 1, 0]  # the 3 under the ignore label does not count
    assert union.tolist() == [4, 4, 1, 0]
    r = mean_iou([pred], [target], 4)
    assert r["IoU"][:3] == pytest.approx([75.0, 50.0, 0.0])
    assert math.isnan(r["IoU"][3])
    assert r["mIoU"] == pytest.approx((75 + 50 + 0) / 3)
    assert r["aAcc"] == pytest.approx(5 / 7 * 100)


def test_sums_over_the_dataset_not_mean_of_images():
    # image A: class 0 perfect (1 px); image B: class 0 IoU 1/3 (3 px union).
    a_t, a_p = torch.tensor([0, 1, 1, 1]), torch.tensor([0, 1, 1, 1])
    b_t, b_p = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 0])
    r = mean_iou([a_p, b_p], [a_t, b_t], 2)
    # dataset sums: class 0 inter 2, union 1 + 3 = 4 -> 50; class 1 inter 4, union 3 + 3 = 6
    assert r["IoU"] == pytest.approx([50.0, 4 / 6 * 100])
    per_image_mean = (100 + 100 + (1 / 3) * 100 + (1 / 3) * 100) / 4
    assert r["mIoU"] != pytest.approx(per_image_mean)


def test_accumulate_equals_one_shot_and_shape_check():
    torch.manual_seed(0)
    t = torch.randint(0, 5, (3, 17, 19))
    t[0, :3] = 255
    p = torch.randint(0, 5, (3, 17, 19))
    m = SegMetrics(5)
    for i in range(3):
        m.update(p[i], t[i])
    a, b = m.compute(), mean_iou([p], [t], 5)
    assert a["IoU"] == pytest.approx(b["IoU"]) and a["mIoU"] == pytest.approx(b["mIoU"])
    assert a["aAcc"] == pytest.approx(b["aAcc"])
    assert a["aAcc"] == pytest.approx(float((p == t).sum() / (t != 255).sum() * 100))
    with pytest.raises(ValueError):
        m.update(p[0], t[0, :4])
