"""The sliding window on the predictor's device: `--stitch triton` (the Triton kernel, here under
TRITON_INTERPRET=1) gives the same labels as `--stitch torch` (the reference stitch) on odd image
sizes, and the windows of one image never leave the device before the labels do (GPU test)."""

import json

import numpy as np
import pytest
import torch
from cli_helpers import export_tiny as _export
from click.testing import CliRunner
from PIL import Image

from dinov3_deploy.artifact import load_artifact
from dinov3_deploy.cli import cli
from dinov3_deploy.reference.training.sliding_window import window_geometry
from dinov3_deploy.reference.training.synthetic import make_sample
from dinov3_deploy.runtime.inference import resolve_stitch, stitch_labels, window_logits
from dinov3_deploy.runtime.predictor import Predictor

# smaller than the window, not a multiple of the stride, very wide
SIZES = {"small.png": (24, 30), "odd.png": (40, 90), "wide.png": (16, 160)}


@pytest.fixture(scope="module")
def seg_artifact(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("seg"), "seg")


def test_triton_stitch_gives_the_reference_labels_on_odd_sizes(seg_artifact, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for seed, (name, (h, w)) in enumerate(SIZES.items()):
        Image.fromarray(make_sample(seed, h, w)[0]).save(imgs / name)
    labels = {}
    for stitch in ("triton", "torch"):
        out = tmp_path / stitch
        res = CliRunner().invoke(cli, ["infer", str(seg_artifact), str(imgs), "-o", str(out), "--window", "32",
                                       "--stride", "24", "--batch-windows", "3", "--stitch", stitch])
        assert res.exit_code == 0, res.output
        summary = json.loads((out / "predictions.json").read_text())["summary"]
        assert summary["stitch"] == stitch and summary["images_ok"] == 3
        labels[stitch] = {n: np.asarray(Image.open(out / f"{n}_labels.png")) for n in SIZES}
    for name, (h, w) in SIZES.items():
        assert labels["triton"][name].shape == (h, w)
        assert len(np.unique(labels["torch"][name])) > 1  # a real map, not a constant that matches trivially
        np.testing.assert_array_equal(labels["triton"][name], labels["torch"][name], err_msg=name)


def test_stitches_agree_on_the_same_window_logits(seg_artifact):
    """Below the CLI: the window batching does not change the logits, and both stitches read them alike."""
    art = load_artifact(seg_artifact)
    predictor = Predictor(art, "onnxruntime")
    pixels = torch.from_numpy(make_sample(5, 64, 230)[0]).permute(2, 0, 1)[None].float()
    g = window_geometry(64, 230, 64, 48)
    one, three = window_logits(predictor, pixels, g, 1), window_logits(predictor, pixels, g, 3)
    assert one.shape[0] == len(g) == 5 and predictor.windows == 2 * len(g)
    torch.testing.assert_close(one, three, atol=1e-4, rtol=1e-4)
    a = stitch_labels(one, pixels, g, (20, 72), "triton")
    b = stitch_labels(one, pixels, g, (20, 72), "torch")
    assert a.shape == (20, 72) and torch.equal(a, b)


def test_stitch_choice():
    assert resolve_stitch("auto", torch.device("cpu")) == "torch"
    assert resolve_stitch("auto", torch.device("cuda")) == "triton"
    assert resolve_stitch("triton", torch.device("cpu")) == "triton"  # the tests run the interpreter


@pytest.mark.gpu
def test_no_host_copies_between_windows(seg_artifact):
    """Windows cut, run (CUDA graph) and stitched by the kernel: no device-to-host copy until the labels."""
    from torch.profiler import ProfilerActivity, profile

    art = load_artifact(seg_artifact)
    predictor = Predictor(art, "torch", precision="fp32", attn_impl="sdpa")
    pixels = torch.from_numpy(make_sample(5, 64, 230)[0]).permute(2, 0, 1)[None].float().cuda()
    g = window_geometry(64, 230, 64, 48)
    window_logits(predictor, pixels, g, 2)  # capture the graphs outside the profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        labels = stitch_labels(window_logits(predictor, pixels, g, 2), pixels, g, (64, 230), "triton")
        torch.cuda.synchronize()
    names = [e.name for e in prof.events()]
    assert not [n for n in names if "DtoH" in n or "Device -> Host" in n], names
    assert labels.is_cuda
