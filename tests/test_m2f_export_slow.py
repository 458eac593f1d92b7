"""Mask2Former artifacts end to end (minutes on 2 cores: torch.export of the segmentor alone takes
several): export with parity at two shapes, TensorRT-RTX, and `infer` labels equal to the reference
`eval` protocol with and without --tta. Shares one fp32 export across the module. fp16 / bf16:
tests/test_m2f_precision_slow.py."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from m2f_helpers import SHAPE, tiny_m2f_head

from dinov3_deploy.cli import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    return tiny_m2f_head(tmp_path_factory.mktemp("m2f"))


@pytest.fixture(scope="module")
def fp32_artifact(head, tmp_path_factory):
    """Exported with verification: the default cases are 2x64x64 and 3x96x128 (dynamic batch and H/W)."""
    out = tmp_path_factory.mktemp("m2f_art") / "art"
    res = CliRunner().invoke(cli, ["export", "--task", "seg", "--head", str(head), *SHAPE, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_fp32_export_within_the_fp32_gates_at_two_shapes(fp32_artifact):
    report = json.loads((fp32_artifact / "parity.json").read_text())
    assert report["passed"]
    sizes = {(c["height"], c["width"]) for c in report["cases"]}
    assert {(64, 64), (96, 128)} <= sizes
    ort = next(b for b in report["backends"] if b["name"].startswith("onnxruntime") and b["status"] == "passed")
    rows = {o["output"]: o for o in ort["outputs"]}
    assert set(rows) == {"class_logits", "mask_logits", "scores"}
    assert all(o["rel_fro"] <= 1e-4 for o in ort["outputs"])
    assert all(o["label_agreement"] == 1.0 for o in ort["outputs"] if o["output"] == "scores")
    manifest = json.loads((fp32_artifact / "manifest.json").read_text())
    assert {o["name"]: o.get("stride") for o in manifest["outputs"]} == {
        "class_logits": None, "mask_logits": 4, "scores": 1}
    assert manifest["head"]["head_type"] == "m2f" and manifest["source"]["head_type"] == "m2f"
    ops = manifest["onnx"]["graph"]["op_counts"]
    assert ops.get("GridSample") and not {"If", "Tile", "Loop", "NonZero", "ScatterND"} & set(ops)


@pytest.mark.parametrize("tta", [False, True])
def test_infer_labels_equal_the_reference_eval_protocol(fp32_artifact, head, tmp_path, tta):
    from PIL import Image

    from dinov3_deploy.reference import create_segmentor
    from dinov3_deploy.reference.protocol.m2f import TTA_RATIOS, tta_probabilities, tta_short_sides
    from dinov3_deploy.reference.protocol.synthetic import make_sample
    from dinov3_deploy.reference.training.m2f_eval import m2f_views

    image = make_sample(3, 70, 100)[0]
    Image.fromarray(image).save(tmp_path / "img.png")
    args = ["infer", str(fp32_artifact), str(tmp_path / "img.png"), "-o", str(tmp_path / "out"),
            "--backend", "onnxruntime", "--window", "64"] + (["--tta"] if tta else [])
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    got = np.asarray(Image.open(tmp_path / "out" / "img.png_labels.png"))

    seg = create_segmentor("vit_tiny_test", head_weights=str(head))
    views = m2f_views(image, tta_short_sides(64, TTA_RATIOS if tta else (1.0,)))
    with torch.no_grad():
        want = tta_probabilities(seg.predict, views, 5, image.shape[:2], crop=64, stride=round(64 * 596 / 896),
                                 flip=tta)
    want, probs = want.argmax(1)[0].numpy(), want
    assert got.shape == want.shape and (got == want).all()
    # the tiny random head may favour one class everywhere: the probabilities themselves must agree too
    from dinov3_deploy.artifact import load_artifact
    from dinov3_deploy.runtime.m2f_prediction import m2f_probabilities
    from dinov3_deploy.runtime.predictor import Predictor

    predictor = Predictor(load_artifact(fp32_artifact), "onnxruntime")
    n_views = len(views) * (2 if tta else 1)
    ours = m2f_probabilities(predictor, image, 64, None, 2, tta) / n_views
    torch.testing.assert_close(ours.cpu(), probs, rtol=0, atol=1e-5)


def test_tensorrt_rtx_build_records_engine_facts(head, tmp_path):
    pytest.importorskip("tensorrt_rtx")
    out = tmp_path / "trt"
    res = CliRunner().invoke(cli, ["export", "--task", "seg", "--head", str(head), "--format", "trt",
                                   "--trt-flavor", "tensorrt-rtx", "--batch", "1", "--static", "64x64",
                                   "--no-verify", "--out", str(out)])
    assert res.exit_code == 0, res.output
    trt = json.loads((out / "manifest.json").read_text())["tensorrt"]
    assert trt["flavor"] == "tensorrt-rtx" and (out / trt["file"]).stat().st_size > 0
