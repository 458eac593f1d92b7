"""Dataset readers (ADE20K layout, folder layout, synthetic) and the official train transforms."""

import numpy as np
import pytest
import torch
from PIL import Image

from dinov3_deploy.errors import DeployError
from dinov3_deploy.reference.protocol.images import read_rgb
from dinov3_deploy.reference.training.datasets import ADE20K_CLASSES, ade20k, folder, open_dataset
from dinov3_deploy.reference.training.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegEvalTransform,
    SegTrainTransform,
    photometric_distortion,
    random_crop,
    rescale_size,
)


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _png_rgb16(path, array):
    """A 16-bit-per-sample RGB PNG, written by hand: PIL cannot save one."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, _ = array.shape
    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))  # filter 0 per row
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # bit depth 16, colour type 2 (RGB)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def test_read_rgb_honours_exif_orientation(tmp_path):
    # Orientation 6: the stored pixels must be turned 90 degrees clockwise to be upright, as a
    # phone held in portrait writes them. A mask drawn on the upright picture has the turned shape.
    stored = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 9
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "phone.png", exif=exif)
    image = read_rgb(tmp_path / "phone.png")
    assert image.shape == (3, 2, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, np.rot90(stored, k=-1))
    Image.fromarray(stored).save(tmp_path / "plain.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "plain.png"), stored)


def test_read_rgb_scales_16_bit_grey_instead_of_clipping(tmp_path):
    grey = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "depthlike.png")
    assert Image.open(tmp_path / "depthlike.png").mode == "I;16"  # what the test is about
    image = read_rgb(tmp_path / "depthlike.png")
    assert image.dtype == np.uint8 and image.shape == (1, 3, 3)
    assert image[..., 0].tolist() == [[0, 100, 255]]  # convert("RGB") alone gives [0, 255, 255]
    assert (image == image[..., :1]).all()


def test_read_rgb_16_bit_colour_keeps_the_high_byte(tmp_path):
    samples = np.array([[[0x1234, 0xABCD, 0xFFFF], [0x00FF, 0x8000, 0x0100]]], dtype=np.uint16)
    _png_rgb16(tmp_path / "rgb16.png", samples)
    image = read_rgb(tmp_path / "rgb16.png")
    assert image.dtype == np.uint8
    assert image.tolist() == [[[0x12, 0xAB, 0xFF], [0x00, 0x80, 0x01]]]


def test_read_rgb_grey_palette_and_alpha_become_rgb(tmp_path):
    grey = np.array([[0, 7, 200]], dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "l.png")
    assert read_rgb(tmp_path / "l.png").tolist() == [[[0] * 3, [7] * 3, [200] * 3]]
    Image.fromarray(grey > 100).save(tmp_path / "bits.png")  # mode "1"
    assert read_rgb(tmp_path / "bits.png")[..., 0].tolist() == [[0, 0, 255]]
    # Alpha is dropped, not composited: a fully transparent pixel keeps its stored colour.
    rgba = np.array([[[10, 20, 30, 0], [40, 50, 60, 128], [70, 80, 90, 255]]], dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert read_rgb(tmp_path / "rgba.png").tolist() == rgba[..., :3].tolist()
    Image.fromarray(np.stack([grey, grey * 0], -1), mode="LA").save(tmp_path / "la.png")
    assert read_rgb(tmp_path / "la.png")[..., 2].tolist() == [[0, 7, 200]]
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255])
    pal.putdata([1, 0])
    pal.save(tmp_path / "p.png")
    assert read_rgb(tmp_path / "p.png").tolist() == [[[0, 0, 255], [255, 0, 0]]]


def test_read_rgb_unreadable_files_name_the_file_and_reason(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DeployError, match=r"cannot read image .*text\.png: cannot identify image file"):
        read_rgb(tmp_path / "text.png")
    Image.fromarray(np.full((64, 64, 3), 9, np.uint8)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DeployError, match=r"cut\.png: .*(truncated|broken)"):
        read_rgb(tmp_path / "cut.png")
    with pytest.raises(DeployError, match=r"missing\.jpg: .*No such file"):
        read_rgb(tmp_path / "missing.jpg")
    Image.fromarray(np.ones((2, 2), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(DeployError, match=r"float\.tif: pixel mode F"):
        read_rgb(tmp_path / "float.tif")


def test_ade20k_layout_reduce_zero_label_and_list_file(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    ann = np.array([[0, 1, 2], [150, 0, 7]], dtype=np.uint8)
    for name in ("ADE_val_00000001", "ADE_val_00000002"):
        _write(root / "images" / "validation" / f"{name}.jpg", np.full((2, 3, 3), 100, np.uint8))
        _write(root / "annotations" / "validation" / f"{name}.png", ann)
    ds = ade20k(tmp_path, "val")  # the parent of ADEChallengeData2016 works too
    assert len(ds) == 2 and ds.n_classes == 150 == len(ADE20K_CLASSES) == len(set(ADE20K_CLASSES))
    image, mask = ds[0]
    assert image.shape == (2, 3, 3)
    # reduce-zero-label: 0 ("other") -> 255 ignore, k -> k - 1
    assert mask.tolist() == [[255, 0, 1], [149, 255, 6]]
    (root / "validation.txt").write_text("ADE_val_00000002\n")
    assert len(ade20k(root, "val")) == 1
    with pytest.raises(DeployError, match="ADEChallengeData2016 layout"):
        ade20k(root, "train")


def test_folder_layout_with_classes_file(tmp_path):
    (tmp_path / "classes.txt").write_text("road 128 64 128\nsky 70 130 180\ncar 0 0 142\n")
    _write(tmp_path / "images" / "a.png", np.zeros((4, 5, 3), np.uint8))
    _write(tmp_path / "masks" / "a.png", np.array([[0, 1, 2, 255, 1]] * 4, np.uint8))
    ds = open_dataset(f"folder:{tmp_path}", "val")
    assert ds.class_names == ["road", "sky", "car"] and ds.palette[1] == [70, 130, 180]
    image, mask = ds[0]
    assert mask[0].tolist() == [0, 1, 2, 255, 1]  # no label shifting
    _write(tmp_path / "images" / "b.jpg", np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(DeployError, match="no mask"):
        folder(tmp_path)
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(DeployError, match="classes.txt"):
        folder(tmp_path)


def test_open_dataset_specs():
    ds = open_dataset("synthetic:10", "train", n_classes=4)
    assert len(ds) == 10 and ds.n_classes == 4
    val = open_dataset("synthetic", "val", synthetic_size=3, n_classes=4)
    assert len(val) == 3 and len(open_dataset("synthetic:5", "val")) == 5
    assert len(open_dataset("synthetic", "val")) == 24
    assert not np.array_equal(ds[0][0][:32, :32], val[0][0][:32, :32])  # disjoint seeds
    with pytest.raises(DeployError, match="unknown dataset"):
        open_dataset("imagenet:/x")


def test_rescale_size_short_side_with_long_side_cap():
    assert rescale_size(100, 200, 50, 400) == (50, 100)
    assert rescale_size(100, 1000, 50, 200) == (20, 200)  # long side caps first


def test_category_ratio_check_rejects_one_class_crops():
    # A mostly-background mask with one small object: unconstrained crops are usually all
    # background; the check re-draws them (up to 10 times).
    mask = np.zeros((100, 100), np.uint8)
    mask[10:40, 10:40] = 1
    image = np.zeros((100, 100, 3), np.uint8)

    def ok_fraction(ratio):
        good = 0
        for seed in range(200):
            _, m = random_crop(image, mask, np.random.default_rng(seed), 40, cat_max_ratio=ratio)
            _, counts = np.unique(m, return_counts=True)
            good += len(counts) > 1 and counts.max() / counts.sum() < 0.75
        return good / 200

    assert ok_fraction(0.75) > 0.9
    assert ok_fraction(1.0) < 0.3


def test_train_transform_geometry_pads_with_ignore_and_is_seeded():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 4, (40, 60)).astype(np.uint8)
    # image channel 0 carries the label, so image and mask must stay aligned through crop and flip
    image = np.stack([mask * 50, np.zeros_like(mask), np.zeros_like(mask)], -1).astype(np.uint8)
    tf = SegTrainTransform(crop=64, base_size=40, ratio=(1.0, 1.0), photometric=False, cat_max_ratio=1.0)
    x, m = tf(image, mask, np.random.default_rng(5))
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and m.dtype == torch.int64
    assert (m[40:] == 255).all() and (m[:, 60:] == 255).all()  # padded bottom/right with ignore
    assert (x[:, 40:] == 0).all()  # padding is zero in the normalised image
    red = x[0, :40, :60] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    torch.testing.assert_close((red * 255 / 50).round().long(), m[:40, :60])
    flips = {bool(torch.equal(tf(image, mask, np.random.default_rng(s))[1][:40, :60],
                              torch.from_numpy(mask).long())) for s in range(12)}
    assert flips == {True, False}  # some seeds flip, some do not
    x2, m2 = tf(image, mask, np.random.default_rng(5))
    assert torch.equal(x, x2) and torch.equal(m, m2)


def test_train_transform_scales_and_crops():
    from dinov3_deploy.reference.protocol.synthetic import make_sample

    image, mask = make_sample(1, 120, 160)
    tf = SegTrainTransform(crop=96, base_size=120)
    sizes = set()
    for s in range(10):
        x, m = tf(image, mask, np.random.default_rng(s))
        assert x.shape == (3, 96, 96) and m.shape == (96, 96)
        sizes.add(int((m != 255).sum()))
        assert set(m.unique().tolist()) <= set(range(6)) | {255}
    assert len(sizes) > 1 and 96 * 96 in sizes  # small scales pad, large ones fill the crop


def test_photometric_distortion_changes_colours_not_shape():
    from dinov3_deploy.reference.protocol.synthetic import make_sample

    image, _ = make_sample(2, 32, 32)
    outs = [photometric_distortion(image, np.random.default_rng(s)) for s in range(8)]
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outs)
    assert sum(not np.array_equal(o, image) for o in outs) >= 6


def test_eval_transform_resizes_image_keeps_label():
    image, mask = np.zeros((100, 150, 3), np.uint8), np.zeros((100, 150), np.uint8)
    x, m = SegEvalTransform(64)(image, mask)
    assert x.shape == (3, 64, 96) and m.shape == (100, 150)
