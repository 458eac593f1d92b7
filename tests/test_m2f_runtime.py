"""Mask2Former artifacts at run time: `bench --e2e` times them like the linear head's (the release's
windows, labels against the reference path). One fp32 export of the tiny segmentor is shared by the
module (about 3 minutes under load on the 2-core VM), so these cells are slow."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from m2f_helpers import export_m2f, tiny_m2f_head

from dinov3_deploy.cli import cli


@pytest.fixture(scope="module")
def m2f_head(tmp_path_factory):
    return tiny_m2f_head(tmp_path_factory.mktemp("m2f"))


@pytest.fixture(scope="module")
def m2f_artifact(m2f_head, tmp_path_factory):
    return export_m2f(m2f_head, tmp_path_factory.mktemp("m2f_art") / "art")


@pytest.mark.slow
def test_bench_e2e_times_an_m2f_artifact(m2f_artifact, tmp_path):
    from dinov3_deploy.bench.e2e import synthetic_images
    from dinov3_deploy.bench.report import validate

    synthetic_images(tmp_path / "imgs", 2, 70, 100)
    res = CliRunner().invoke(cli, ["bench", str(m2f_artifact), "--e2e", str(tmp_path / "imgs"), "--backend",
                                   "onnxruntime", "--window", "64", "--batch-windows", "2", "--warmup", "0",
                                   "--iters", "1", "--no-plot", "--out", str(tmp_path), "--name", "r"])
    assert res.exit_code == 0, res.output
    report = validate(json.loads((tmp_path / "r.json").read_text()))
    (row,) = report["rows"]
    assert row["status"] == "ok" and row["images_per_s"] > 0, row
    # 70x100 -> the 64x91 view; the release's stride 596/896 of 64 is 43: 2 windows an image
    assert row["windows_per_pass"] == 2 * 2
    assert [p["label_agreement"] for p in row["parity"]] == [1.0, 1.0]  # the reference: torch fp32, summed scores
    assert 0 < row["stitch_share"] < 1
    from dinov3_deploy.artifact import load_artifact
    from dinov3_deploy.runtime.predictor import Predictor

    # the CPU's torch backend: the plain deformable-attention core, and its name says so
    assert Predictor(load_artifact(m2f_artifact), "torch").name == "torch-fp32-sdpa-deform-plain"
    # the linear head's Triton stitch is refused for M2F, in one line
    res = CliRunner().invoke(cli, ["bench", str(m2f_artifact), "--e2e", str(tmp_path / "imgs"), "--backend",
                                   "onnxruntime", "--stitch", "triton", "--window", "64", "--warmup", "0",
                                   "--iters", "1", "--no-plot", "--out", str(tmp_path), "--name", "t"])
    assert res.exit_code == 2 and "--stitch triton is the linear head's kernel" in res.output


SEG = "model.segmentor.segmentation_model"


@pytest.mark.slow
def test_per_block_covers_backbone_adapter_pixel_decoder_and_decoder(m2f_artifact):
    from dinov3_deploy.artifact import load_artifact
    from dinov3_deploy.runtime.runners import artifact_backends
    from dinov3_deploy.verification.per_block import per_block_report

    art = load_artifact(m2f_artifact)
    report = per_block_report(art, artifact_backends(art))
    assert report["family"] == "m2f" and report["first_failing_block"] is None
    names = [r["name"] for r in report["blocks"]]
    assert names == ([f"backbone {i}" for i in range(4)] + [f"adapter {i}" for i in range(4)]
                     + [f"pixel decoder {i}" for i in range(6)] + ["mask features"]
                     + [f"decoder {i}" for i in range(9)])
    assert [r["block"] for r in report["blocks"]] == list(range(len(names)))
    assert all(r["passed"] and r["rel_fro"] < 1e-5 for r in report["blocks"])
    shapes = {r["name"]: r["shape"] for r in report["blocks"]}  # 2x64x64: hidden 32, 100 queries
    assert shapes["mask features"] == [2, 32, 16, 16] and shapes["decoder 8"] == [2, 100, 32]


@pytest.mark.slow
@pytest.mark.parametrize("scope,name", [
    (f"{SEG}.0.interactions.1.extractor.ffn.fc2", "adapter 1"),
    (f"{SEG}.1.pixel_decoder.encoder.encoder.layers.2.linear2", "pixel decoder 2"),
    (f"{SEG}.1.predictor.transformer_ffn_layers.4.linear2", "decoder 4"),
])
def test_a_fault_planted_in_one_m2f_block_is_named_by_per_block(m2f_artifact, tmp_path, scope, name):
    from per_block_helpers import tamper_weight
    from rich.console import Console

    from dinov3_deploy.runtime.runners import artifact_backends
    from dinov3_deploy.verification.per_block import per_block_report, render_per_block

    art = tamper_weight(m2f_artifact, tmp_path / "tampered", scope)
    report = per_block_report(art, artifact_backends(art))
    rows = report["blocks"]
    first = report["first_failing_block"]
    assert report["first_failing"] == name and rows[first]["name"] == name
    assert all(r["passed"] and r["rel_fro"] < 1e-5 for r in rows[:first])
    assert not all(o["passed"] for o in report["outputs"])
    console = Console(record=True, width=200)
    render_per_block(report, console)
    assert f"first block over threshold: {name}" in console.export_text()


def test_torch_backend_runs_the_deform_kernel_on_cuda_and_the_plain_core_on_cpu(m2f_head, monkeypatch):
    """This machine has no GPU: only torch.cuda.is_available is mocked, to see the device the Predictor's
    torch backend picks and the deformable-attention core it then builds the segmentor with (the model is
    not moved to the device; the kernel itself is tested in test_kernel_ms_deform_attn.py)."""
    from dinov3_deploy.model_source import ModelSource
    from dinov3_deploy.reference.models.ms_deform_attn import MSDeformAttn
    from dinov3_deploy.runtime.device_backends import torch_backend_name, torch_model
    from dinov3_deploy.runtime.predictor import predictor_device

    source = ModelSource.resolve("seg", None, head=str(m2f_head))
    for gpu, core in ((True, "triton"), (False, "plain")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda gpu=gpu: gpu)
        device = predictor_device(None)
        assert device.type == ("cuda" if gpu else "cpu")
        model, deform = torch_model(source, device, "sdpa")
        cores = {m.impl for m in model.modules() if isinstance(m, MSDeformAttn)}
        assert deform == core and cores == {core}
        assert torch_backend_name("fp32", "sdpa", deform) == f"torch-fp32-sdpa-deform-{core}"
    assert predictor_device("cpu").type == "cpu"  # an explicit device wins (no kernel on the CPU then)


@pytest.mark.slow
@pytest.mark.parametrize("tta", [False, True])
def test_chunked_stitch_gives_the_reference_protocol_labels(m2f_artifact, m2f_head, tta):
    """infer's default M2F stitch (chunked, from the class and mask logits) against the reference `eval`
    protocol on the segmentor itself, and against the graph's scores summed by slide_inference."""
    from dinov3_deploy.artifact import load_artifact
    from dinov3_deploy.reference import create_segmentor
    from dinov3_deploy.reference.protocol.m2f import TTA_RATIOS, tta_probabilities, tta_short_sides
    from dinov3_deploy.reference.protocol.synthetic import make_sample
    from dinov3_deploy.reference.training.m2f_eval import m2f_views
    from dinov3_deploy.runtime.m2f_prediction import m2f_probabilities
    from dinov3_deploy.runtime.predictor import Predictor

    image = make_sample(5, 80, 120)[0]
    predictor = Predictor(load_artifact(m2f_artifact), "onnxruntime")
    chunked = m2f_probabilities(predictor, image, 64, None, 2, tta, "chunked")
    summed = m2f_probabilities(predictor, image, 64, None, 2, tta, "torch")
    torch.testing.assert_close(chunked, summed, rtol=0, atol=1e-5)

    seg = create_segmentor("vit_tiny_test", head_weights=str(m2f_head))
    views = m2f_views(image, tta_short_sides(64, TTA_RATIOS if tta else (1.0,)))
    with torch.no_grad():
        want = tta_probabilities(seg.predict, views, 5, image.shape[:2], crop=64, stride=43, flip=tta)
    n_views = len(views) * (2 if tta else 1)
    torch.testing.assert_close(chunked / n_views, want, rtol=0, atol=1e-5)
    assert torch.equal(chunked.argmax(1), want.argmax(1))
