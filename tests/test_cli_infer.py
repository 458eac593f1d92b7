"""`dinov3-deploy infer` end to end: artifact + images in, files people use out, and the
segmentation equals the reference sliding-window inference of the PyTorch model."""

import json

import numpy as np
import pytest
import torch
from cli_helpers import export_tiny as _export
from click.testing import CliRunner
from PIL import Image

from dinov3_deploy.cli import cli


@pytest.fixture(scope="module")
def seg_artifact(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("seg"), "seg")


def test_infer_seg_matches_reference_sliding_window(seg_artifact, tmp_path):
    from dinov3_deploy.artifact import load_artifact
    from dinov3_deploy.model_source import ModelSource
    from dinov3_deploy.reference.protocol.sliding_window import slide_predict
    from dinov3_deploy.reference.protocol.synthetic import make_sample

    image = make_sample(7, 80, 150)[0]  # not a multiple of 16, wider than the window
    (tmp_path / "imgs").mkdir()
    Image.fromarray(image).save(tmp_path / "imgs" / "a.png")
    res = CliRunner().invoke(cli, ["infer", str(seg_artifact), str(tmp_path / "imgs"), "-o", str(tmp_path / "out"),
                                   "--window", "64", "--stride", "32"])
    assert res.exit_code == 0, res.output
    labels = np.asarray(Image.open(tmp_path / "out" / "a.png_labels.png"))
    assert labels.shape == image.shape[:2]
    assert (tmp_path / "out" / "a.png_seg.png").exists()
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert summary["backend"] == "onnxruntime-cpu"
    assert abs(sum(summary["predictions"][0]["classes"].values()) - 1) < 1e-3

    # The reference: the fp32 PyTorch model with the same window protocol on the same resized image.
    manifest = load_artifact(seg_artifact).manifest
    model = ModelSource.from_manifest(manifest.source).build(attn_impl="sdpa")
    pixels = torch.from_numpy(image.transpose(2, 0, 1)).float()[None]
    scaled = torch.nn.functional.interpolate(pixels, size=(64, 120), mode="bilinear", align_corners=False)
    mean = torch.tensor(manifest.io.mean).view(1, 3, 1, 1)
    std = torch.tensor(manifest.io.std).view(1, 3, 1, 1)
    x = (scaled.round().clamp(0, 255) / 255 - mean) / std
    ref = slide_predict(model, x, crop=64, stride=32, out_size=image.shape[:2]).argmax(1)[0].numpy()
    assert (ref == labels).mean() >= 0.999


def test_infer_features_and_depth_write_arrays(tmp_path):
    art = _export(tmp_path, "features")
    res = CliRunner().invoke(cli, ["infer", str(art), "--demo", "1", "-o", str(tmp_path / "f")])
    assert res.exit_code == 0, res.output
    tokens = np.load(tmp_path / "f" / "synthetic_0_patch_tokens.npy")
    assert tokens.shape[-1] == 64 and tokens.ndim == 3
    assert (tmp_path / "f" / "synthetic_0_pca.png").exists()

    art = _export(tmp_path, "depth")
    res = CliRunner().invoke(cli, ["infer", str(art), "--demo", "1", "-o", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    depth = np.load(tmp_path / "d" / "synthetic_0_depth.npy")
    assert depth.shape == (384, 512) and np.isfinite(depth).all() and (depth > 0).all()
    # The picture carries a colour bar in metres: wider than image | depth side by side would be.
    picture = Image.open(tmp_path / "d" / "synthetic_0_depth.png")
    assert picture.format == "PNG" and picture.width > 2 * 512 * picture.height / 384


def test_infer_errors_are_clear(seg_artifact, tmp_path):
    r = CliRunner().invoke(cli, ["infer", str(seg_artifact), "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--demo" in r.output
    r = CliRunner().invoke(cli, ["infer", str(seg_artifact), str(tmp_path / "nope"), "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no such image" in r.output
    r = CliRunner().invoke(cli, ["infer", str(seg_artifact), "--demo", "1", "--window", "48", "-o", str(tmp_path)])
    assert r.exit_code == 0, r.output  # 48 is inside 32..128 and a multiple of 16
    r = CliRunner().invoke(cli, ["infer", str(seg_artifact), "--demo", "1", "--window", "40", "-o", str(tmp_path)])
    assert r.exit_code == 2 and "multiple of 16" in r.output and "--window" in r.output
    for option in ("--window", "--stride"):
        r = CliRunner().invoke(cli, ["infer", str(seg_artifact), "--demo", "1", option, "0", "-o", str(tmp_path)])
        assert r.exit_code == 2 and option in r.output and ">=1" in r.output.replace(" ", "")
    r = CliRunner().invoke(cli, ["infer", str(seg_artifact), "--demo", "1", "--backend", "tensorrt-rtx-engine",
                                 "-o", str(tmp_path)])
    assert r.exit_code == 2 and "no engine" in r.output and "--format onnx,trt" in r.output
    r = CliRunner().invoke(cli, ["infer", str(seg_artifact), "--demo", "1", "--backend", "onnx", "-o", str(tmp_path)])
    assert r.exit_code == 2 and "unknown backend 'onnx'" in r.output and "--backend" in r.output
    r = CliRunner().invoke(cli, ["infer", str(seg_artifact), "--demo", "1", "--batch-windows", "5", "-o",
                                 str(tmp_path)])
    assert r.exit_code == 2 and "--batch-windows 5" in r.output and "1..4" in r.output
