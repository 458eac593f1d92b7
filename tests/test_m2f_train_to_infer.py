"""A Mask2Former head from our trainer, through the whole CLI: train -> export -> verify -> infer, on
a tiny configuration. What it pins that the random-head export tests do not: the artifact is built
from what the trainer wrote (its backbone record, hidden width, class count, normalisation), and the
labels `infer` draws equal the trained segmentor's own on the same image."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dinov3_deploy.cli import cli

pytestmark = pytest.mark.slow  # torch.export of the segmentor: minutes on 2 cores


def test_trained_m2f_head_exports_verifies_and_infers_its_own_labels(tmp_path):
    from PIL import Image

    from dinov3_deploy.reference import create_segmentor
    from dinov3_deploy.reference.protocol.m2f import tta_probabilities, tta_short_sides
    from dinov3_deploy.reference.protocol.synthetic import make_sample
    from dinov3_deploy.reference.training.m2f_eval import m2f_views

    runner = CliRunner()
    run = tmp_path / "run"
    res = runner.invoke(cli, ["train", "--task", "seg", "--head-type", "m2f", "--hidden-dim", "32", "--lr", "1e-3",
                              "--iters", "6", "--batch-size", "4", "--crop", "64", "--base-size", "64",
                              "--train-size", "8", "--val-size", "2", "--no-progress", "--out", str(run)])
    assert res.exit_code == 0, res.output
    head = run / "head"
    config = json.loads((head / "config.json").read_text())

    art = tmp_path / "art"
    res = runner.invoke(cli, ["export", "--task", "seg", "--head", str(head), "--batch", "1:1:2",
                              "--height", "64:64:96", "--width", "64:64:128", "--out", str(art)])
    assert res.exit_code == 0, res.output
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["head"]["head_type"] == "m2f"
    assert manifest["head"]["n_classes"] == config["num_classes"]
    assert manifest["backbone"]["name"] == config["backbone"]
    assert json.loads((art / "parity.json").read_text())["passed"]

    res = runner.invoke(cli, ["verify", str(art), "--backend", "onnxruntime"])
    assert res.exit_code == 0, res.output

    image = make_sample(11, 70, 100)[0]
    Image.fromarray(image).save(tmp_path / "img.png")
    res = runner.invoke(cli, ["infer", str(art), str(tmp_path / "img.png"), "-o", str(tmp_path / "out"),
                              "--backend", "onnxruntime", "--window", "64"])
    assert res.exit_code == 0, res.output
    got = np.asarray(Image.open(tmp_path / "out" / "img.png_labels.png"))

    # the trained segmentor, rebuilt from the head directory alone (its recorded backbone), through the
    # reference protocol: one view, windows of 64 at the release's stride ratio
    seg = create_segmentor(config["backbone"], head_weights=str(head))
    views = m2f_views(image, tta_short_sides(64, (1.0,)))
    with torch.no_grad():
        probs = tta_probabilities(seg.predict, views, config["num_classes"], image.shape[:2], crop=64,
                                  stride=round(64 * 596 / 896), flip=False)
    want = probs.argmax(1)[0].numpy()
    assert got.shape == want.shape
    assert (got == want).all()
