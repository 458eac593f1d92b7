"""The Triton model repository of a Mask2Former artifact: the M2F outputs (class logits, stride-4 mask
logits, semantic scores, and the --seg-output ones) in every config, and for a graph with the
deformable-attention plugin nodes no onnxruntime model (ONNX Runtime cannot run them), only the
TensorRT engine, which carries the plugins' ahead-of-time PTX. The CLI export with a repository is in
tests/test_m2f_trt.py (slow)."""

from __future__ import annotations

import pytest
from test_triton_repo import parse_pbtxt

from dinov3_deploy.engines.plugins import MS_DEFORM_ATTN_PLUGIN
from dinov3_deploy.export.triton_repo import write_triton_repo
from dinov3_deploy.head_outputs import graph_output_names
from dinov3_deploy.manifest import GraphInfo, TensorInfo
from dinov3_deploy.shapes import DimRange, ShapeSpec

Q, C = 100, 5
SHAPES = ShapeSpec(DimRange(1, 1, 2), DimRange(64, 64, 96), DimRange(64, 64, 128), 32)
# the M2F graph's output shapes as torch.export names them (grid_h/grid_w: the stride-4 mask grid)
M2F_SHAPES = {"class_logits": ["batch", Q, C + 1], "mask_logits": ["batch", Q, "grid_h", "grid_w"],
              "scores": ["batch", C, "height", "width"], "labels": ["batch", "height", "width"]}


def _graph() -> GraphInfo:
    names = graph_output_names(["seg"], "vit", "labels", {"seg": "m2f"})
    outputs = [TensorInfo(name=n, dtype="int32" if n == "labels" else "float32", shape=M2F_SHAPES[n]) for n in names]
    return GraphInfo(opset=18, inputs=[TensorInfo(name="pixel_values", dtype="float32",
                                                  shape=["batch", 3, "height", "width"])],
                     outputs=outputs, nodes=1, op_counts={}, fp32_islands={}, compute_dtypes={})


def _files(root):
    (root / "model.onnx").write_bytes(b"onnx")
    (root / "model.engine").write_bytes(b"plan")


def test_configs_carry_the_m2f_outputs(tmp_path):
    _files(tmp_path)
    entry = write_triton_repo(tmp_path, "m2f", _graph(), SHAPES, ["model.onnx"], engine_file="model.engine",
                              engine_flavor="tensorrt")
    assert [m.backend for m in entry.models] == ["onnxruntime", "tensorrt"]
    for model in ("m2f_onnx", "m2f_trt"):
        cfg = parse_pbtxt((tmp_path / "triton" / model / "config.pbtxt").read_text())
        outs = {o["name"]: o for o in cfg["output"]}
        assert list(outs) == ["class_logits", "mask_logits", "scores", "labels"]
        assert outs["class_logits"]["dims"] == [Q, C + 1]  # the batch dim is Triton's
        assert outs["mask_logits"]["dims"] == [Q, -1, -1] and outs["scores"]["dims"] == [C, -1, -1]
        assert outs["labels"]["data_type"] == "TYPE_INT32" and cfg["max_batch_size"] == 2


@pytest.mark.parametrize("flavor", ["tensorrt", None])
def test_plugin_graph_gets_no_onnxruntime_model(tmp_path, flavor):
    _files(tmp_path)
    entry = write_triton_repo(tmp_path, "m2f", _graph(), SHAPES, ["model.onnx"],
                              engine_file="model.engine" if flavor else None, engine_flavor=flavor,
                              plugins=[MS_DEFORM_ATTN_PLUGIN])
    assert not (tmp_path / "triton" / "m2f_onnx").exists()
    assert any(MS_DEFORM_ATTN_PLUGIN in n and "onnxruntime" in n for n in entry.notes)
    if flavor:
        assert [m.backend for m in entry.models] == ["tensorrt"]
        assert (tmp_path / "triton/m2f_trt/1/model.plan").read_bytes() == b"plan"
    else:
        assert entry.models == []
