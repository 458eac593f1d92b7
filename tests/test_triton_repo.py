"""The Triton model repository: config.pbtxt parses (a small protobuf-text parser below) and says
what Triton needs: backend, max batch, dynamic batching, tensors without the batch dim."""

from __future__ import annotations

import re

import pytest

from dinov3_deploy.export.triton_repo import triton_config, write_triton_repo
from dinov3_deploy.manifest import GraphInfo, TensorInfo
from dinov3_deploy.shapes import DimRange, ShapeSpec

_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([{}\[\]:,])|([A-Za-z0-9_.+-]+))')


def parse_pbtxt(text: str) -> dict:
    """Protobuf text format -> dict (repeated fields -> lists). Raises on malformed input."""
    tokens = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"bad token at {pos}: {text[pos:pos + 20]!r}")
        pos = m.end()
        if m.group(1):
            continue
        tokens.append(m.group(2) or m.group(3) or m.group(4))

    def value(i):
        t = tokens[i]
        if t == "{":
            return message(i + 1, "}")
        if t == "[":
            items, i = [], i + 1
            while tokens[i] != "]":
                v, i = value(i)
                items.append(v)
                if tokens[i] == ",":
                    i += 1
            return items, i + 1
        if t.startswith('"'):
            return t[1:-1], i + 1
        if re.fullmatch(r"-?\d+", t):
            return int(t), i + 1
        return t, i + 1

    def message(i, end):
        out: dict = {}
        while i < len(tokens) and tokens[i] != end:
            key = tokens[i]
            if not re.fullmatch(r"[A-Za-z_]\w*", key):
                raise ValueError(f"bad field name {key!r}")
            i += 1
            if tokens[i] == ":":
                i += 1
            v, i = value(i)
            if key in out:
                out[key] = out[key] if isinstance(out[key], list) else [out[key]]
                out[key].append(v)
            else:
                out[key] = v
        if end == "}" and (i >= len(tokens) or tokens[i] != "}"):
            raise ValueError("unbalanced braces")
        return out, i + 1

    result, _ = message(0, None)
    return result


INPUTS = [TensorInfo(name="pixel_values", dtype="float32", shape=["batch", 3, "h", "w"])]
OUTPUTS = [TensorInfo(name="logits", dtype="float32", shape=["batch", 6, "grid_h", "grid_w"]),
           TensorInfo(name="labels", dtype="int32", shape=["batch", "h", "w"])]


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
def test_config_pbtxt_parses_and_batches_dynamically(backend):
    cfg = parse_pbtxt(triton_config("m", backend, INPUTS, OUTPUTS, max_batch=16, opt_batch=4))
    assert cfg["name"] == "m" and cfg["backend"] == backend and cfg["max_batch_size"] == 16
    (inp,) = cfg["input"]
    assert inp == {"name": "pixel_values", "data_type": "TYPE_FP32", "dims": [3, -1, -1]}  # no batch dim
    assert [o["name"] for o in cfg["output"]] == ["logits", "labels"]
    assert cfg["output"][0]["dims"] == [6, -1, -1] and cfg["output"][1]["data_type"] == "TYPE_INT32"
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [4, 16]
    assert cfg["instance_group"][0]["kind"] == "KIND_GPU"


def test_parser_rejects_malformed_text():
    with pytest.raises((ValueError, IndexError)):
        parse_pbtxt('name: "m"\ninput [ { name: "x" ')


def test_repository_layout_per_engine_flavour(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "model.engine").write_bytes(b"plan")
    graph = GraphInfo(opset=18, inputs=INPUTS, outputs=OUTPUTS[:1], nodes=1, op_counts={"Relu": 1}, fp32_islands={},
                      compute_dtypes={})
    shapes = ShapeSpec(DimRange(1, 1, 8), DimRange(32, 64, 64), DimRange(32, 64, 64), 16)
    entry = write_triton_repo(tmp_path, "dino", graph, shapes, ["model.onnx"], engine_file="model.engine",
                              engine_flavor="tensorrt")
    assert [m.backend for m in entry.models] == ["onnxruntime", "tensorrt"]
    assert (tmp_path / "triton/dino_onnx/1/model.onnx").read_bytes() == b"onnx"
    assert (tmp_path / "triton/dino_trt/1/model.plan").read_bytes() == b"plan"
    cfg = parse_pbtxt((tmp_path / "triton/dino_trt/config.pbtxt").read_text())
    assert cfg["backend"] == "tensorrt" and cfg["dynamic_batching"]["preferred_batch_size"] == [8]

    rtx = tmp_path / "rtx"
    rtx.mkdir()
    (rtx / "model.onnx").write_bytes(b"onnx")
    entry = write_triton_repo(rtx, "dino", graph, shapes, ["model.onnx"], engine_file="model.engine",
                              engine_flavor="tensorrt-rtx")
    assert [m.backend for m in entry.models] == ["onnxruntime"]
    assert "TensorRT-RTX" in entry.notes[0] and not (rtx / "triton/dino_trt").exists()
