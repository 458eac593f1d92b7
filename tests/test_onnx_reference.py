"""The onnx-reference backend (bf16 graphs on the CPU, small shapes) and `verify --backend`."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from dinov3_deploy.artifact import load_artifact
from dinov3_deploy.cli import cli
from dinov3_deploy.errors import DeployError
from dinov3_deploy.runtime.runners import (
    BACKEND_NAMES,
    SMALL_PIXELS,
    Backend,
    OnnxReferenceRunner,
    parse_backend_names,
    select_backends,
)
from dinov3_deploy.shapes import DimRange, ShapeSpec
from dinov3_deploy.verification.verify import backend_cases, default_cases, verify_artifact


def _bf16_matmul_graph(w: np.ndarray) -> onnx.ModelProto:
    """x fp32 -> Cast bf16 -> MatMul(bf16 weight) -> Cast fp32; plus the bf16 product as an output."""
    wt = numpy_helper.from_array(w.astype(np.float32), "w32")
    nodes = [helper.make_node("Cast", ["x"], ["xb"], to=TensorProto.BFLOAT16),
             helper.make_node("Cast", ["w32"], ["wb"], to=TensorProto.BFLOAT16),
             helper.make_node("MatMul", ["xb", "wb"], ["yb"]),
             helper.make_node("Cast", ["yb"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4]),
                               helper.make_tensor_value_info("yb", TensorProto.BFLOAT16, [None, 4])], [wt])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_reference_runner_computes_in_bf16():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((3, 8)).astype(np.float32), rng.standard_normal((8, 4)).astype(np.float32)
    out = OnnxReferenceRunner(_bf16_matmul_graph(w)).run(x)
    bf = lambda a: a.astype(ml_dtypes.bfloat16).astype(np.float32)
    exact = x @ w
    assert out["y"].dtype == np.float32 and out["yb"].dtype == np.float32  # bf16 outputs widened
    # it rounded the operands to bf16 (not fp32 silently): far closer to the bf16 product than to fp32's
    np.testing.assert_allclose(out["y"], (bf(x) @ bf(w)), rtol=1e-2, atol=1e-2)
    assert 1e-4 < np.linalg.norm(out["y"] - exact) / np.linalg.norm(exact) < 2e-2


def test_large_shapes_run_at_the_smallest_allowed_input():
    big = ShapeSpec(DimRange(1, 4, 8), DimRange(256, 512, 1024), DimRange(256, 512, 1024), 16)
    be = Backend("onnx-reference", None, max_pixels=SMALL_PIXELS)
    cases, note = backend_cases(be, default_cases(big), big)
    assert [(c.batch, c.height, c.width) for c in cases] == [(1, 256, 256)]
    assert "smallest allowed input 1x256x256" in note
    small = ShapeSpec(DimRange(1, 1, 2), DimRange(32, 64, 64), DimRange(32, 64, 64), 16)
    assert backend_cases(be, default_cases(small), small) == (default_cases(small), "")
    assert backend_cases(Backend("onnxruntime-cpu", None), default_cases(big), big)[1] == ""


def test_backend_names_and_families():
    assert parse_backend_names("auto") is None and parse_backend_names(None) is None
    assert parse_backend_names("onnx-reference,onnxruntime-cpu") == ["onnx-reference", "onnxruntime-cpu"]
    assert parse_backend_names("onnxruntime") == ["onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt"]
    assert parse_backend_names("tensorrt") == ["tensorrt-engine", "tensorrt-rtx-engine"]
    assert parse_backend_names("torch,onnxruntime-cpu") == ["pytorch", "onnxruntime-cpu"]
    with pytest.raises(DeployError) as exc:
        parse_backend_names("onnxruntime-cpu,ort")
    msg = str(exc.value)
    assert msg.startswith("--backend: unknown backend 'ort'") and all(n in msg for n in BACKEND_NAMES)


def test_unknown_backend_is_a_one_line_cli_error(tmp_path):
    res = CliRunner().invoke(cli, ["verify", str(tmp_path / "nowhere"), "--backend", "tensorrt-gpu"])
    assert res.exit_code == 2 and "--backend: unknown backend 'tensorrt-gpu'" in res.output
    assert "Traceback" not in res.output


@pytest.fixture(scope="module")
def vit_bf16(tmp_path_factory):
    art = tmp_path_factory.mktemp("ref") / "vit-features-bf16"
    res = CliRunner().invoke(cli, ["export", "--task", "features", "--model", "vit_tiny_test", "--precision", "bf16",
                                   "--batch", "1:1:2", "--height", "32:64:64", "--no-verify", "--out", str(art)])
    assert res.exit_code == 0, res.output
    return load_artifact(art)


def test_verify_runs_bf16_artifacts_on_the_reference_evaluator(vit_bf16):
    report = verify_artifact(vit_bf16)  # auto: ONNX Runtime's CPU provider is skipped, onnx-reference runs
    by_name = {b["name"]: b for b in report["backends"]}
    assert by_name["onnxruntime-cpu"]["status"] == "skipped"
    ref = by_name["onnx-reference"]
    assert ref["status"] in ("passed", "failed") and ref["outputs"], ref
    for o in ref["outputs"]:
        # really bf16 (an fp32 run would be ~1e-6 off), finite, near the bf16 bound (see the report)
        assert 1e-3 < o["rel_fro"] < 5e-2 and o["min_token_cos"] > 0.99
        assert not any("non-finite" in f for f in o["failures"])


def test_named_backends_only_run_those_named(vit_bf16):
    chosen = select_backends(vit_bf16, "onnxruntime-cpu,tensorrt-engine,torch")
    assert [b.name for b in chosen] == ["onnxruntime-cpu", "tensorrt-engine", "pytorch"]
    assert chosen[0].runner is None and "bfloat16" in chosen[0].skip_reason
    assert chosen[1].runner is None and "no engine" in chosen[1].skip_reason
    report = verify_artifact(vit_bf16, backends=chosen)
    torch_row = next(b for b in report["backends"] if b["name"] == "pytorch")
    # PyTorch in bf16 on the CPU against fp32: a real bf16 error, within the bound on this tiny model
    assert torch_row["status"] == "passed" and all(1e-3 < o["rel_fro"] < 2e-2 for o in torch_row["outputs"])


def test_per_block_runs_bf16_graphs_on_the_reference_evaluator(vit_bf16):
    from dinov3_deploy.verification.per_block import per_block_report

    report = per_block_report(vit_bf16, select_backends(vit_bf16, "auto"))
    assert report["backend"] == "onnx-reference" and report["precision"] == "bf16"
    errs = [r["rel_fro"] for r in report["blocks"]]
    # a real bf16 error at every block (bf16 block tensors widened, not an fp32 rerun), within the bound
    assert len(errs) == 4 and all(1e-3 < e < 2e-2 for e in errs) and errs[-1] > errs[0]


def test_fp16_overflow_that_onnxruntime_cpu_hides_fails_verify_on_the_reference_evaluator(tmp_path):
    """The unfolded stress model in fp16 overflows (PyTorch: non-finite). ONNX Runtime's CPU provider
    computes its fp16 nodes through fp32 casts and returns finite logits, so a CPU verify that ran it
    alone would pass a graph that gives NaN on a GPU; onnx-reference computes the graph as written,
    and verify's automatic backends for an fp16 artifact include it."""
    import torch

    from dinov3_deploy.deploy_module import DeployModule
    from dinov3_deploy.export.calibration import calibration_images
    from dinov3_deploy.export.onnx_graph import export_onnx
    from dinov3_deploy.model_source import ModelSource
    from dinov3_deploy.runtime.runners import OrtRunner

    model = ModelSource("seg", "vit_tiny_test", init="outliers").build()
    naive = DeployModule(model, "fp16")  # no folds: raw branch outputs past 65504
    shapes = ShapeSpec(DimRange(1, 1, 1), DimRange(64, 64, 64), DimRange(64, 64, 64), 16)
    export_onnx(naive, tmp_path / "naive.onnx", shapes)
    x = calibration_images(None, 64, 64, model.spec.mean, model.spec.std)[:1]
    with torch.no_grad():
        assert not torch.isfinite(naive(x)[0]).all()
    assert np.isfinite(OrtRunner(tmp_path / "naive.onnx", "cpu", "ort").run(x.numpy())["logits"]).all()
    assert not np.isfinite(OnnxReferenceRunner(tmp_path / "naive.onnx").run(x.numpy())["logits"]).all()


def test_verify_runs_fp16_artifacts_on_the_reference_evaluator_too(tmp_path):
    art = tmp_path / "seg-fp16"
    res = CliRunner().invoke(cli, ["export", "--model", "vit_tiny_test", "--precision", "fp16", "--static", "32x32",
                                   "--batch", "1", "--random-init", "outliers", "--out", str(art)])
    assert res.exit_code == 0, res.output
    assert "onnx-reference" in res.output and "parity PASSED on onnxruntime-cpu, onnx-reference" in res.output
    report = verify_artifact(load_artifact(art))
    ref = next(b for b in report["backends"] if b["name"] == "onnx-reference")
    # fp16 as written (an fp32 run would be ~1e-6 off); the folds keep the stress model finite and in bounds
    assert ref["status"] == "passed" and all(1e-4 < o["rel_fro"] < 2e-2 for o in ref["outputs"])


def test_automatic_verify_skips_the_reference_evaluator_for_large_fp16_graphs(vit_bf16, tmp_path, monkeypatch):
    """numpy runs low-precision matmuls without BLAS: past AUTO_REFERENCE_BYTES of weights the automatic
    backends of an fp16 artifact (which ONNX Runtime's CPU provider verifies too) skip it and say how
    to run it; named, it runs whatever the size; for bf16 it is the only CPU backend and always runs."""
    import dinov3_deploy.runtime.runners as runners

    art = tmp_path / "fp16"
    res = CliRunner().invoke(cli, ["export", "--model", "vit_tiny_test", "--precision", "fp16", "--static", "32x32",
                                   "--batch", "1", "--no-verify", "--out", str(art)])
    assert res.exit_code == 0, res.output
    fp16 = load_artifact(art)
    monkeypatch.setattr(runners, "AUTO_REFERENCE_BYTES", runners.onnx_bytes(fp16) - 1)
    auto = {b.name: b for b in select_backends(fp16, "auto")}
    assert auto["onnx-reference"].runner is None and auto["onnxruntime-cpu"].runner is not None
    assert "verify --backend onnx-reference runs it anyway" in auto["onnx-reference"].skip_reason
    (named,) = select_backends(fp16, "onnx-reference")
    assert named.runner is not None and not named.skip_reason
    monkeypatch.setattr(runners, "AUTO_REFERENCE_BYTES", runners.onnx_bytes(fp16))
    assert {b.name: b for b in select_backends(fp16, "auto")}["onnx-reference"].runner is not None
    monkeypatch.setattr(runners, "AUTO_REFERENCE_BYTES", 0)
    assert {b.name: b for b in select_backends(vit_bf16, "auto")}["onnx-reference"].runner is not None
