"""`dinov3-deploy export | verify | inspect` end to end through click, on a tiny ViT: a real
ONNX export, a real TensorRT-RTX engine build, a Triton repository, parity, and the error cases
a user can cause (bad shape, missing optional dependency, tampered artifact)."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from dinov3_deploy.artifact import load_artifact
from dinov3_deploy.cli import cli


def invoke(*args):
    result = CliRunner().invoke(cli, list(args), env={"COLUMNS": "200"})
    return result


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    pytest.importorskip("tensorrt_rtx")  # the engine build (its tests need nothing else)
    out = tmp_path_factory.mktemp("cli") / "seg-art"
    r = invoke("export", "--task", "seg", "--model", "vit_tiny_test", "--batch", "1:2:4", "--height", "32:64:96",
               "--seg-output", "labels", "--format", "onnx,trt,triton-repo", "--trt-targets", "SM86,SM89",
               "--out", str(out))
    assert r.exit_code == 0, r.output + repr(r.exception)
    return out, r.output


def test_export_writes_a_verified_complete_artifact(artifact):
    out, output = artifact
    assert "parity PASSED on onnxruntime-cpu" in output and "RANDOM WEIGHTS" in output
    assert "skipped tensorrt-rtx-engine: no CUDA GPU" in output
    art = load_artifact(out)  # schema + every hash
    m = art.manifest
    assert set(m.files) >= {"model.onnx", "model.engine", "parity.json",
                            "triton/dinov3_vit_tiny_test_seg_onnx/config.pbtxt",
                            "triton/dinov3_vit_tiny_test_seg_onnx/1/model.onnx"}
    assert m.task == "seg" and m.precision == "fp32"
    assert m.input.name == "pixel_values" and m.input.layout == "NCHW"
    raw = json.loads((out / "manifest.json").read_text())  # what a C++ reader sees
    assert raw["input"]["shapes"] == {"batch": [1, 2, 4], "height": [32, 64, 96], "width": [32, 64, 96],
                                      "multiple": 16}
    assert raw["schema_version"] == 3 and raw["outputs_config"] == {"seg_output": "labels", "feature_layers": 0}
    assert m.backbone.random_weights and m.head.random_weights
    assert len(m.classes.names) == 6 and len(m.classes.palette) == 6
    assert [o.name for o in m.outputs] == ["logits", "labels"]
    assert m.onnx.opset >= 18 and "If" not in m.onnx.graph.op_counts
    trt = m.tensorrt
    assert trt.flavor == "tensorrt-rtx" and trt.targets == ["SM86", "SM89"]
    assert trt.engine_bytes == (out / "model.engine").stat().st_size > 0
    assert raw["tensorrt"]["profiles"][0] == {"input": "pixel_values", "min": [1, 3, 32, 32], "opt": [2, 3, 64, 64],
                                              "max": [4, 3, 96, 96]}
    assert {t.name for t in trt.io} == {"pixel_values", "logits", "labels"} and trt.build_log
    assert m.toolchain["torch"] and m.toolchain["onnx"]
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["verified_backends"] == ["onnxruntime-cpu"]
    assert {o["output"] for b in parity["backends"] for o in b["outputs"]} == {"logits", "labels"}
    assert len(parity["cases"]) == 2  # the opt shape and a different batch/resolution


def test_verify_and_inspect(artifact, tmp_path):
    out, _ = artifact
    copy = tmp_path / "a"
    shutil.copytree(out, copy)
    r = invoke("verify", str(copy))
    assert r.exit_code == 0, r.output
    assert "rel fro" in r.output and "parity PASSED" in r.output and "thresholds (fp32)" in r.output
    load_artifact(copy)  # parity.json rewritten, its hash updated: still a valid artifact
    r = invoke("inspect", str(copy))
    assert r.exit_code == 0, r.output
    assert "tensorrt-rtx" in r.output and "random weights" in r.output and "pixel_values" in r.output
    assert "worst rel fro" in r.output and "labels 100.000%" in r.output
    r = invoke("inspect", "--json", str(copy))
    assert json.loads(r.output)["task"] == "seg"


def test_verify_fails_with_exit_1_when_parity_breaks(artifact, tmp_path, monkeypatch):
    from dinov3_deploy.verification import parity

    out, _ = artifact
    copy = tmp_path / "a"
    shutil.copytree(out, copy)
    monkeypatch.setitem(parity.THRESHOLDS, "fp32", parity.Thresholds(0.0, 1.1, 1.0))
    r = invoke("verify", str(copy))
    assert r.exit_code == 1 and "parity failed" in r.output


def test_tampered_artifact_is_refused_without_traceback(artifact, tmp_path):
    out, _ = artifact
    copy = tmp_path / "t"
    shutil.copytree(out, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    for cmd in ("inspect", "verify"):
        r = invoke(cmd, str(copy))
        assert r.exit_code == 2 and "model.onnx does not match its sha256" in r.output
        assert "Traceback" not in r.output


def test_user_errors_exit_2_with_a_message(tmp_path):
    r = invoke("export", "--model", "vit_tiny_test", "--height", "250:512:1024", "--out", str(tmp_path / "x"))
    assert r.exit_code == 2 and "not a multiple of 16" in r.output and not (tmp_path / "x").exists()
    r = invoke("export", "--model", "convnext_tiny_test", "--static", "48x64", "--out", str(tmp_path / "x"))
    assert r.exit_code == 2 and "multiple of 32" in r.output
    r = invoke("export", "--model", "vit_tiny_tset", "--out", str(tmp_path / "x"))
    assert r.exit_code == 2 and "unknown backbone" in r.output
    r = invoke("inspect", str(tmp_path))
    assert r.exit_code == 2 and "no manifest.json" in r.output
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        r = invoke("export", "--model", "vit_tiny_test", "--format", "onnx,trt", "--trt-flavor", "tensorrt",
                   "--out", str(tmp_path / "x"))
        assert r.exit_code == 2 and "pip install 'dinov3-deploy[trt]'" in r.output
    assert not (tmp_path / "x").exists()


def test_trt_targets_are_checked_at_the_option_before_any_work(tmp_path, monkeypatch):
    from dinov3_deploy.export import pipeline

    def no_export(*a, **k):
        raise AssertionError("the export started before --trt-targets was checked")

    monkeypatch.setattr(pipeline, "export_artifact", no_export)
    base = ("export", "--model", "vit_tiny_test", "--format", "onnx,trt", "--out", str(tmp_path / "x"))
    r = invoke(*base, "--trt-targets", "SM86,SM90")
    assert r.exit_code == 2 and "Hopper" in r.output and "--trt-flavor tensorrt" in r.output
    assert "Traceback" not in r.output
    r = invoke(*base, "--trt-targets", "SM42")
    assert r.exit_code == 2 and "unknown TensorRT-RTX target(s) SM42" in r.output and "SM86" in r.output
    r = invoke("export", "--help")
    assert r.exit_code == 0 and "SM80,SM86,SM89,SM120" in r.output
    assert not (tmp_path / "x").exists()


def test_export_from_a_head_checkpoint_with_uint8_input(tmp_path):
    """--head: backbone and classes come from the trainer's checkpoint; verify rebuilds the same
    reference later and refuses when the checkpoint changed under it."""
    import torch

    from dinov3_deploy.reference.factory import build_task_model, random_backbone
    from dinov3_deploy.reference.head_checkpoint import save_head_checkpoint

    torch.manual_seed(5)
    tm = build_task_model("seg", random_backbone("vit_tiny_test", 5), n_classes=3, class_names=["sky", "road", "car"],
                          palette=[[0, 0, 255], [128, 128, 128], [255, 0, 0]])
    head = save_head_checkpoint(tmp_path / "head", tm, backbone_seed=5)
    out = tmp_path / "art"
    r = invoke("export", "--head", str(head), "--precision", "fp16", "--uint8-input", "--static", "32x48",
               "--batch", "1:2", "--out", str(out))
    assert r.exit_code == 0, r.output + repr(r.exception)
    m = load_artifact(out).manifest
    assert m.backbone.name == "vit_tiny_test" and m.backbone.random_weights
    assert not m.head.random_weights and m.classes.names == ["sky", "road", "car"]
    assert (m.input.name, m.input.dtype, m.input.layout) == ("image", "uint8", "NHWC") and m.io.uint8_input
    assert m.input.normalize.in_graph and "parity PASSED" in r.output
    assert invoke("verify", str(out)).exit_code == 0
    with torch.no_grad():
        tm.head.conv.bias.add_(1.0)
    save_head_checkpoint(head, tm, backbone_seed=5)
    r = invoke("verify", str(out))
    assert r.exit_code == 2 and "differs from the one the artifact was exported from" in r.output


def test_export_that_fails_parity_leaves_no_artifact(tmp_path, monkeypatch):
    from dinov3_deploy.verification import parity

    monkeypatch.setitem(parity.THRESHOLDS, "fp32", parity.Thresholds(0.0, 1.1, 1.0))
    r = invoke("export", "--task", "cls", "--model", "vit_tiny_test", "--static", "32x32", "--batch", "1",
               "--out", str(tmp_path / "art"))
    assert r.exit_code == 2 and "parity failed" in r.output and "no artifact was written" in r.output
    assert "rel fro" in r.output  # the table is shown before the error
    assert list(tmp_path.iterdir()) == []  # neither the artifact nor its temporary directory
    # below the CLI: a typed error that carries the report the table was drawn from
    from dinov3_deploy.export.pipeline import ExportOptions, ExportParityError, export_artifact

    with pytest.raises(ExportParityError) as exc:
        export_artifact(ExportOptions(out=tmp_path / "art", task="cls", model="vit_tiny_test", static="32x32",
                                      batch="1"))
    assert isinstance(exc.value, parity.ParityError) and exc.value.report["passed"] is False
    assert exc.value.report["backends"] and not (tmp_path / "art").exists()


def test_satellite_weights_get_their_normalisation(tmp_path):
    """Release file names say which pre-processing the weights need (SAT-493M: its own mean/std)."""
    from dinov3_deploy.reference import create_backbone
    from dinov3_deploy.reference.formats.checkpoints import save_state_dict

    weights = tmp_path / "dinov3_vit_tiny_test_pretrain_sat493m-eadcf0ff.safetensors"
    save_state_dict(create_backbone("vit_tiny_test").state_dict(), weights)
    out = tmp_path / "sat"
    res = CliRunner().invoke(cli, ["export", "--task", "features", "--model", "vit_tiny_test", "--weights",
                                   str(weights), "--static", "32x32", "--batch", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    norm = json.loads((out / "manifest.json").read_text())["input"]["normalize"]
    assert norm["mean"] == [0.430, 0.411, 0.296] and norm["std"] == [0.213, 0.156, 0.143]


def test_attention_plugin_export_emits_plugin_nodes_and_says_where_it_runs(tmp_path):
    """--attention plugin: one dinov3_deploy.attention node per block for TensorRT's plugin; nothing on
    this machine can run it, and every command says so instead of pretending."""
    import onnx

    out = tmp_path / "plug"
    base = ["export", "--task", "seg", "--model", "vit_tiny_test", "--height", "32:64:128", "--attention", "plugin",
            "--precision", "fp16"]
    res = CliRunner().invoke(cli, [*base, "--out", str(out)])
    assert res.exit_code == 2 and "--no-verify" in res.output and not out.exists()
    res = CliRunner().invoke(cli, [*base, "--format", "onnx,trt", "--trt-flavor", "tensorrt-rtx", "--no-verify",
                                   "--out", str(out)])
    assert res.exit_code == 2 and "full TensorRT" in res.output and not out.exists()
    res = CliRunner().invoke(cli, [*base, "--no-verify", "--out", str(out)])
    assert res.exit_code == 0, res.output
    graph = onnx.load(str(out / "model.onnx")).graph
    nodes = [n for n in graph.node if n.domain == "dinov3_deploy"]
    assert [n.op_type for n in nodes] == ["attention"] * 4  # vit_tiny_test has 4 blocks
    assert load_artifact(out).manifest.onnx.plugins == ["dinov3_deploy::attention"]
    assert "TensorRT plugin nodes" in CliRunner().invoke(cli, ["inspect", str(out)]).output
    res = CliRunner().invoke(cli, ["verify", str(out)])
    assert res.exit_code != 0 and "plugin nodes (dinov3_deploy::attention) that only TensorRT runs" in res.output
    res = CliRunner().invoke(cli, [*base[:4], "convnext_tiny_test", *base[5:], "--no-verify", "--out",
                                   str(tmp_path / "c")])
    assert res.exit_code == 2 and "ConvNeXt has no attention" in res.output


def test_attention_plugin_at_fp32_is_refused_up_front(tmp_path):
    """The dinov3_deploy::attention plugin declares only fp16/bf16 inputs: an fp32 plugin graph
    could never build, so export refuses before any work."""
    out = tmp_path / "plug32"
    res = CliRunner().invoke(cli, ["export", "--task", "seg", "--model", "vit_tiny_test", "--attention", "plugin",
                                   "--precision", "fp32", "--no-verify", "--out", str(out)])
    assert res.exit_code == 2 and not out.exists() and list(tmp_path.iterdir()) == []
    (line,) = res.output.strip().splitlines()
    assert "--attention plugin needs --precision fp16 or bf16" in line and "Traceback" not in res.output
