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
from dinov3_deploy.errors import DeployError
from dinov3_deploy.reference.protocol.sliding_window import window_geometry
from dinov3_deploy.reference.protocol.synthetic import make_sample
from dinov3_deploy.runtime.inference import resolve_stitch, stitch_labels, window_logits
from dinov3_deploy.runtime.predictor import Predictor

# On a GPU machine the interpreter is off (conftest sets it only without CUDA), so the Triton
# stitch needs CUDA tensors there: the tests below give it the GPU where there is one.
ON_GPU = torch.cuda.is_available()

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
        gpu = ["--backend", "torch"] if ON_GPU else []  # the torch backend computes on the GPU there
        res = CliRunner().invoke(cli, ["infer", str(seg_artifact), str(imgs), "-o", str(out), "--window", "32",
                                       "--stride", "24", "--batch-windows", "3", "--stitch", stitch, *gpu])
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
    a = stitch_labels(one.cuda() if ON_GPU else one, pixels, g, (20, 72), "triton").cpu()
    b = stitch_labels(one, pixels, g, (20, 72), "torch")
    assert a.shape == (20, 72) and torch.equal(a, b)


def test_stitch_choice():
    assert resolve_stitch("auto", torch.device("cpu")) == "torch"
    assert resolve_stitch("auto", torch.device("cuda")) == "triton"
    if ON_GPU:  # no interpreter there: triton on a CPU backend is refused in one line
        with pytest.raises(DeployError, match="--stitch triton"):
            resolve_stitch("triton", torch.device("cpu"))
    else:
        assert resolve_stitch("triton", torch.device("cpu")) == "triton"  # the tests run the interpreter


def test_window_loop_batches_at_most_batch_windows_and_matches_the_reference_stitch(seg_artifact):
    """predict_image's window loop calls the predictor with at most --batch-windows windows (a full batch
    and a remainder), and its labels equal the reference slide_inference running the same model one
    window at a time (the Triton stitch's equality with the reference is the tests above)."""
    from dinov3_deploy.reference.protocol.sliding_window import slide_inference
    from dinov3_deploy.runtime.inference import predict_image, resize_short_side

    art = load_artifact(seg_artifact)
    predictor = Predictor(art, "onnxruntime")
    calls = []
    run = predictor._impl.__call__

    class Recording:  # the predictor's backend, recording each call's batch
        def __call__(self, x):
            calls.append(int(x.shape[0]))
            return run(x)

    predictor._impl = Recording()
    image = make_sample(7, 40, 150)[0]  # resized to 32 x 120: 1 x 5 windows of 32 at stride 24
    pixels = resize_short_side(torch.from_numpy(image).permute(2, 0, 1)[None].float(), 32)
    g = window_geometry(*pixels.shape[-2:], 32, 24)
    assert len(g) == 5

    def one_window(crops):
        assert crops.shape[0] == 1
        return predictor(predictor.to_input(crops))["logits"]

    ref = slide_inference(one_window, pixels, art.manifest.head.n_classes, 32, 24, out_size=(40, 150)).argmax(1)[0]
    assert len(ref.unique()) > 1
    assert calls == [1] * 5
    del calls[:]
    pred = predict_image(predictor, "x", image, crop=32, stride=24, batch_windows=3, stitch="torch")
    assert calls == [3, 2]
    np.testing.assert_array_equal(pred.labels, ref.numpy())


@pytest.mark.gpu
def test_no_synchronisation_between_windows(seg_artifact):
    """Once the graphs of the window shapes are captured, cutting, running and stitching an image's
    windows never waits for the device: torch raises on any synchronising call (a copy to the host,
    .item(), a blocking stream wait) under set_sync_debug_mode("error"); the labels' copy comes after."""
    from dinov3_deploy.runtime.inference import predict_image

    art = load_artifact(seg_artifact)
    image = make_sample(5, 64, 230)[0]
    for graphs in (True, False):
        predictor = Predictor(art, "torch", precision="fp32", attn_impl="sdpa", cuda_graphs=graphs)
        pixels = torch.from_numpy(image).cuda().permute(2, 0, 1)[None].float()
        g = window_geometry(64, 230, 64, 48)
        expected = predict_image(predictor, "x", image, crop=64, stride=48, batch_windows=2, stitch="triton").labels
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            labels = stitch_labels(window_logits(predictor, pixels, g, 2), pixels, g, (64, 230), "triton")
        finally:
            torch.cuda.set_sync_debug_mode("default")
        np.testing.assert_array_equal(labels.to(torch.uint8).cpu().numpy(), expected)


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


def _one_image(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(make_sample(1, 40, 56)[0]).save(imgs / "a.png")
    return imgs


def test_attn_and_compile_reach_the_torch_predictor(seg_artifact, tmp_path, monkeypatch):
    from dinov3_deploy.runtime import predictor as predictor_module

    seen = []

    class Recording(predictor_module.Predictor):
        def __init__(self, artifact, backend="auto", **kw):
            seen.append((backend, dict(kw)))
            super().__init__(artifact, backend, **{**kw, "compile_mode": None})  # torch.compile is minutes here

    monkeypatch.setattr(predictor_module, "Predictor", Recording)
    res = CliRunner().invoke(cli, ["infer", str(seg_artifact), str(_one_image(tmp_path)), "-o", str(tmp_path / "o"),
                                   "--backend", "torch", "--attn", "sdpa", "--compile", "max-autotune",
                                   "--no-cuda-graphs"])
    assert res.exit_code == 0, res.output
    assert seen == [("torch", {"attn_impl": "sdpa", "compile_mode": "max-autotune", "cuda_graphs": False})]
    assert json.loads((tmp_path / "o" / "predictions.json").read_text())["backend"] == "torch-fp32-sdpa"


def test_attn_triton_runs_under_the_interpreter_and_gives_the_sdpa_labels(seg_artifact, tmp_path):
    imgs = _one_image(tmp_path)
    labels = {}
    for attn in ("triton", "sdpa"):
        res = CliRunner().invoke(cli, ["infer", str(seg_artifact), str(imgs), "-o", str(tmp_path / attn),
                                       "--backend", "torch", "--attn", attn, "--window", "32"])
        assert res.exit_code == 0, res.output
        assert json.loads((tmp_path / attn / "predictions.json").read_text())["backend"] == f"torch-fp32-{attn}"
        labels[attn] = np.asarray(Image.open(tmp_path / attn / "a.png_labels.png"))
    assert len(np.unique(labels["sdpa"])) > 1
    np.testing.assert_array_equal(labels["triton"], labels["sdpa"])


@pytest.mark.skipif(ON_GPU, reason="on a GPU machine --attn triton runs: the refusal is for machines without one")
def test_attn_triton_without_a_gpu_or_the_interpreter_is_one_line(seg_artifact, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    imgs = _one_image(tmp_path)
    for args in (["infer", str(seg_artifact), str(imgs), "-o", str(tmp_path / "o"), "--backend", "torch"],
                 ["bench", str(seg_artifact), "--e2e", str(imgs), "--backend", "torch", "--out", str(tmp_path / "b")]):
        res = CliRunner().invoke(cli, [*args, "--attn", "triton"])
        assert res.exit_code == 2, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and "--attn triton" in lines[0] and "CUDA GPU" in lines[0], res.output
    assert not (tmp_path / "o").exists() and not (tmp_path / "b").exists()


def test_attn_on_another_backend_is_refused(seg_artifact, tmp_path):
    res = CliRunner().invoke(cli, ["infer", str(seg_artifact), str(_one_image(tmp_path)), "-o", str(tmp_path / "o"),
                                   "--backend", "onnxruntime", "--attn", "sdpa"])
    assert res.exit_code == 2 and "--attn apply to the torch backend only" in res.output, res.output


def test_a_failed_export_fixture_says_why():
    """The GPU machine's fixture errors printed only the progress lines: CliRunner swallows the
    exception. The helper's message must carry it, with where it was raised."""
    import click
    from cli_helpers import export_failure

    @click.command()
    def broken():
        click.echo("checking the graph")
        raise ModuleNotFoundError("No module named 'somewhere'")

    res = CliRunner().invoke(broken, [])
    msg = export_failure(res)
    assert "checking the graph" in msg and "ModuleNotFoundError: No module named 'somewhere'" in msg
    assert "Traceback" in msg
