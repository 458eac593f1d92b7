"""The built-in procedural dataset: deterministic, varied, and not a trivial pattern."""

import numpy as np
import pytest

from dinov3_deploy.reference.protocol.synthetic import MAX_CLASSES, class_names, make_sample, palette


def test_deterministic_by_seed():
    a, ma = make_sample(7, 48, 64)
    b, mb = make_sample(7, 48, 64)
    c, mc = make_sample(8, 48, 64)
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    assert not np.array_equal(a, c)
    assert a.shape == (48, 64, 3) and a.dtype == np.uint8
    assert ma.shape == (48, 64) and ma.dtype == np.uint8


def test_classes_and_looks():
    n = 6
    counts = np.zeros(n)
    colour_sum = np.zeros((n, 3))
    for seed in range(24):
        img, mask = make_sample(seed, 64, 64, n)
        assert mask.max() < n
        assert len(np.unique(mask)) >= 2  # ground plus at least one shape
        assert img.std() > 15  # textured, not flat
        for k in range(n):
            sel = mask == k
            counts[k] += sel.sum()
            colour_sum[k] += img[sel].astype(float).sum(0)
    assert (counts > 0).all()  # every class shows up
    means = colour_sum / counts[:, None]
    d = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert d[~np.eye(n, dtype=bool)].min() > 20  # classes have distinct colour families


def test_names_and_palette():
    assert len(class_names(4)) == 4 and len(set(class_names(MAX_CLASSES))) == MAX_CLASSES
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in palette(MAX_CLASSES))
    with pytest.raises(ValueError):
        make_sample(0, 16, 16, n_classes=MAX_CLASSES + 1)
