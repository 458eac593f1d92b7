"""The CLI on Mask2Former heads: `eval` picks the M2F protocol from the head (synthetic data with a
random head in our format; an ADE20K folder with a head file in Meta's layout and its backbone),
`models` lists the segmentor configurations, `inspect` describes a head."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from dinov3_deploy.cli import cli
from dinov3_deploy.reference import create_segmentor
from dinov3_deploy.reference.formats.m2f_checkpoint import save_m2f_head

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def random_head(tmp_path_factory):
    """A random vits16 / hidden-256 segmentor head for the synthetic data's 6 classes, on the random
    backbone of seed 0 (recorded)."""
    path = tmp_path_factory.mktemp("m2f") / "head"
    model = create_segmentor("vits16", hidden_dim=256, num_classes=6, seed=0)
    save_m2f_head(path, model, backbone="vits16", backbone_seed=0)
    return path


def test_eval_runs_the_m2f_protocol_on_synthetic_data(random_head, tmp_path):
    out = tmp_path / "out"
    r = invoke("eval", "--head", random_head, "--data", "synthetic:1", "--short-side", 32, "--crop", 32,
               "--stride", 21, "--threads", 1, "--out", out)
    assert r.exit_code == 0, r.output
    assert "Mask2Former" in r.output and "TTA 5 scales x flip" in r.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == {"short_side": 32, "crop": 32, "stride": 21, "ratios": [0.9, 0.95, 1.0, 1.05, 1.1],
                                   "flip": True}
    assert 0 <= metrics["mIoU"] <= 100 and len(metrics["IoU"]) == 6
    assert (out / "predictions.png").stat().st_size > 0


def test_eval_of_a_meta_layout_head_on_an_ade20k_folder(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    (root / "images" / "validation").mkdir(parents=True)
    (root / "annotations" / "validation").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(root / "images/validation/a.jpg")
    Image.fromarray(rng.integers(0, 151, (48, 80), dtype=np.uint8)).save(root / "annotations/validation/a.png")
    model = create_segmentor("vits16", hidden_dim=256, seed=1)  # 150 classes
    torch.save(model.head_state_dict(), tmp_path / "m2f_head.pth")
    torch.save(model.backbone.state_dict(), tmp_path / "backbone.pth")
    r = invoke("eval", "--head", tmp_path / "m2f_head.pth", "--backbone", "vits16", "--data", f"ade20k:{tmp_path}",
               "--short-side", 64, "--crop", 64, "--no-tta", "--threads", 1)
    assert r.exit_code == 2 and "--weights" in r.output  # Meta's head file alone: its backbone is needed
    r = invoke("eval", "--head", tmp_path / "m2f_head.pth", "--weights", tmp_path / "backbone.pth",
               "--backbone", "vits16", "--data", f"ade20k:{tmp_path}", "--short-side", 64, "--crop", 64,
               "--no-tta", "--threads", 1)
    assert r.exit_code == 0, r.output
    assert "vits16 Mask2Former segmentor" in r.output and "no TTA" in r.output and "mIoU" in r.output


def test_eval_refuses_another_task_for_an_m2f_head(random_head):
    r = invoke("eval", "--head", random_head, "--task", "depth", "--data", "synthetic:1")
    assert r.exit_code == 2 and "Mask2Former segmentation head" in r.output


def test_models_lists_the_segmentor_configurations():
    r = invoke("models", "--json")
    assert r.exit_code == 0, r.output
    rows = {row["name"]: row for row in json.loads(r.output) if row["family"] == "m2f-segmentor"}
    assert (rows["vit7b16_m2f"]["params_m"], rows["vit7b16_m2f"]["head_m"]) == (7643.5, 927.4)
    assert (rows["vitl16_m2f"]["params_m"], rows["vitl16_m2f"]["head_m"]) == (995.0, 691.8)
    assert rows["vit7b16_m2f"]["layers"] == [9, 19, 29, 39]


def test_inspect_describes_m2f_heads(random_head, tmp_path):
    r = invoke("inspect", random_head)
    assert r.exit_code == 0, r.output
    assert "vits16" in r.output and "hidden 256, 6 classes" in r.output and "seed 0" in r.output
    layout = create_segmentor("vits16", hidden_dim=256, num_classes=6, device="meta").head_state_dict()
    torch.save({k: torch.zeros(v.shape, dtype=v.dtype) for k, v in layout.items()}, tmp_path / "meta_layout.pth")
    r = invoke("inspect", "--json", tmp_path / "meta_layout.pth")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["format"] == "Meta's segmentor head file" and summary["tensors"] == 479
    assert summary["backbone"] == "a ViT of width 384"  # vits16 and vits16plus share it
