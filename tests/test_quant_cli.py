"""`export --precision int8|fp8` through the CLI: refusals in one line, and a tiny int8 artifact whose
manifest and `inspect` say what was quantized and what was kept."""

from __future__ import annotations

import json

import onnx
import pytest
from click.testing import CliRunner

from dinov3_deploy.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, list(args), env={"COLUMNS": "400"})


@pytest.mark.parametrize("argv, expected", [
    (["--precision", "int8", "--attention", "plugin", "--no-verify"], "--attention plugin"),
    (["--precision", "fp8", "--attention", "plugin", "--no-verify"], "--attention plugin"),
    (["--precision", "int8", "--model", "convnext_tiny_test"], "ViT backbones only"),
    (["--precision", "int8", "--task", "seg,depth"], "one head"),
    (["--precision", "int8", "--uint8-input"], "--uint8-input"),
    (["--precision", "fp8", "--opset", "18"], "--opset 19"),
])
def test_what_cannot_be_quantized_is_refused_in_one_line(tmp_path, argv, expected):
    args = ["export", "--model", "vit_tiny_test", "--static", "32x32", "--batch", "1", "--out", str(tmp_path / "a")]
    res = invoke(*args, *argv)
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1 and expected in errors[0], res.output
    assert not (tmp_path / "a").exists()


def test_int8_export_records_and_prints_what_it_kept(tmp_path):
    out = tmp_path / "int8"
    # a dynamic range: the search calibrates and judges at both sizes verify runs (64x64, 80x96)
    res = invoke("export", "--task", "seg", "--model", "vit_tiny_test", "--precision", "int8", "--height", "64:64:96",
                 "--batch", "1", "--out", str(out))
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    q = manifest["quantization"]
    assert manifest["precision"] == "int8" and q["calibration_method"] in q["method_scores"]
    assert len(q["calibration_hash"]) == 64 and 0 < q["quantized_flop_share"] <= 1
    assert q["calibration_images"] == 16 and q["calibration_shape"] == [3, 64, 64]  # 8 per size
    assert all(k["sensitivity"] is not None for k in q["kept_layers"])
    graph = onnx.load(out / "model.onnx")
    dq = {n.output[0] for n in graph.graph.node if n.op_type == "DequantizeLinear"}
    quantized = [n for n in graph.graph.node if n.op_type in ("MatMul", "Conv") and any(i in dq for i in n.input)]
    assert len(quantized) == q["quantized_layers"] > 0
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["thresholds"]["min_label_agreement"] == 0.99
    shown = invoke("inspect", str(out)).output
    assert "quantization" in shown and q["calibration_hash"][:16] in shown
    for k in q["kept_layers"]:
        assert k["layer"] in shown
    # manifests written before the field existed still load (as not quantized)
    from dinov3_deploy.manifest import Manifest

    older = {k: v for k, v in manifest.items() if k != "quantization"}
    assert Manifest.from_dict(older).quantization is None
    assert [k.layer for k in Manifest.from_dict(manifest).quantization.kept_layers] == [
        k["layer"] for k in q["kept_layers"]]
