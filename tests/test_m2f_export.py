"""Mask2Former export: the checks that need no export (graph hygiene per forbidden op, GridSample's
opset, option refusals before any model is built, the manifest's output table). The exports
themselves take minutes on 2 cores: tests/test_m2f_export_slow.py."""

import copy

import pytest
import torch
from click.testing import CliRunner

from dinov3_deploy.cli import cli
from dinov3_deploy.errors import DeployError
from dinov3_deploy.export.onnx_graph import FORBIDDEN_OPS, GraphFacts, check_graph, graph_facts
from dinov3_deploy.export.pipeline import ExportOptions, plan_export
from dinov3_deploy.head_outputs import graph_output_names, output_stride
from dinov3_deploy.shapes import DimRange, ShapeSpec

CLEAN = GraphFacts(opset=18, inputs=[{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, "h", "w"]}],
                   outputs=[], op_counts={"MatMul": 2, "GridSample": 4})
SHAPES = ShapeSpec(DimRange(1, 1, 2), DimRange(64, 64, 96), DimRange(64, 64, 128), 32)


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """A tiny M2F head in our format (records its random backbone) and the same tensors as Meta's file."""
    from dinov3_deploy.reference import create_segmentor
    from dinov3_deploy.reference.formats.m2f_checkpoint import save_m2f_head

    root = tmp_path_factory.mktemp("m2f_heads")
    seg = create_segmentor("vit_tiny_test", hidden_dim=32, num_classes=5, seed=0)
    ours = save_m2f_head(root / "ours", seg, backbone="vit_tiny_test", backbone_seed=0)
    meta = root / "dinov3_vit_tiny_test_ade20k_m2f_head-0000.pth"
    torch.save(seg.head_state_dict(), meta)
    return ours, meta


@pytest.mark.parametrize("op", ["If", "Tile", "Loop", "NonZero", "ScatterND"])
def test_graph_check_rejects_each_forbidden_op(op):
    assert op in FORBIDDEN_OPS
    assert check_graph(CLEAN, "fp32", SHAPES) == []
    bad = copy.deepcopy(CLEAN)
    bad.op_counts[op] = 1
    assert any(op in p and "forbidden" in p for p in check_graph(bad, "fp32", SHAPES))


@pytest.mark.parametrize("opset,ok", [(18, True), (19, True), (20, False)])
def test_gridsample_beyond_opset_19_is_rejected_on_a_real_graph(tmp_path, opset, ok):
    """Opset 20's 'linear' GridSample is parsed as nearest by onnx-tensorrt: the check refuses it."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4, 8, 8])
    grid = helper.make_tensor_value_info("grid", TensorProto.FLOAT, ["b", 5, 1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4, 5, 1])
    mode = "bilinear" if opset < 20 else "linear"
    node = helper.make_node("GridSample", ["x", "grid"], ["y"], mode=mode, padding_mode="zeros", align_corners=0)
    g = helper.make_graph([node], "g", [x, grid], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]), tmp_path / "gs.onnx")
    problems = [p for p in check_graph(graph_facts(tmp_path / "gs.onnx"), "fp32") if "GridSample" in p]
    assert (problems == []) == ok


def test_m2f_outputs_and_strides_are_declared_once():
    names = graph_output_names(["seg"], "vit", "labels", {"seg": "m2f"})
    assert names == ["class_logits", "mask_logits", "scores", "labels"]
    assert [output_stride(n, "seg", "m2f") for n in names] == [None, 4, 1, 1]
    assert graph_output_names(["seg"], "vit") == ["logits"]  # the linear head is unchanged


def _invoke(*args):
    return CliRunner().invoke(cli, ["export", "--no-verify", *map(str, args)])


@pytest.mark.parametrize("extra,needle", [
    (["--deform-attn", "plugin", "--format", "triton-repo"], "needs --format trt"),
    (["--opset", "20"], "opset <= 19"),
    (["--height", "48"], "32"),
    (["--precision", "bf16"], "bf16 backbone alone moves the semantic scores past the bf16 gate"),
])
def test_export_refuses_bad_m2f_options_in_one_line(heads, tmp_path, extra, needle):
    res = _invoke("--task", "seg", "--head", heads[0], "--out", tmp_path / "a", *extra)
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output
    assert not (tmp_path / "a").exists()


def test_meta_head_file_needs_weights_unless_random_is_asked(heads, tmp_path):
    res = _invoke("--task", "seg", "--model", "vit_tiny_test", "--head", heads[1], "--out", tmp_path / "a")
    assert res.exit_code == 2 and "--weights" in res.output and "records no backbone" in res.output
    opts = ExportOptions(out=tmp_path / "b", task="seg", model="vit_tiny_test", head=str(heads[1]),
                         random_backbone_ok=True, batch="1:1:2", height="64:64:96", width="64:64:128")
    plan = plan_export(opts)  # checks only: builds no model
    part = plan.source.parts[0]
    assert (part.head_type, part.backbone, part.random_backbone) == ("m2f", "vit_tiny_test", True)
    assert plan.shapes.multiple == 32


def test_our_m2f_head_rebuilds_from_the_manifest_source(heads):
    """What export records is what verify rebuilds: the same fp32 segmentor (same random backbone seed)."""
    from dinov3_deploy.model_source import ModelSource, source_from_manifest

    src = ModelSource.resolve("seg", None, None, str(heads[0]))
    again = source_from_manifest(src.to_manifest())
    assert again == src and src.head_type == "m2f"
    x = torch.randn(1, 3, 64, 96)
    a, b = src.build(), again.build()
    out_a, out_b = a(x), b(x)
    assert out_a["scores"].shape == (1, 5, 64, 96) and out_a["mask_logits"].shape == (1, 100, 16, 24)
    torch.testing.assert_close(out_a["scores"], out_b["scores"], rtol=0, atol=0)
    with pytest.raises(DeployError, match="seg"):
        ModelSource.resolve("depth", None, None, str(heads[0]))
