"""Export options and graph hygiene: uint8 NHWC input with in-graph normalisation, in-graph seg
probabilities / labels, bf16 graphs, external data for large models, shape rules, and a hygiene
checker that really rejects bad graphs."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import onnx
import pytest
import torch
from test_export_matrix import images, stressed_backbone

from dinov3_deploy.deploy_module import DeployModule
from dinov3_deploy.errors import DeployError, InputShapeError
from dinov3_deploy.export.onnx_graph import (
    GraphFacts,
    check_graph,
    ensure_clean,
    export_onnx,
    graph_facts,
    needs_external_data,
)
from dinov3_deploy.reference.configs import get_config
from dinov3_deploy.reference.factory import build_backbone, build_task_model
from dinov3_deploy.reference.protocol.synthetic import make_sample
from dinov3_deploy.runtime.runners import OrtRunner, TorchRunner
from dinov3_deploy.shapes import DimRange, ShapeSpec, parse_static
from dinov3_deploy.verification.parity import compare


def seg_model(backbone: str):
    torch.manual_seed(0)
    bb = stressed_backbone(backbone)
    bb.set_attn_impl("math")
    return build_task_model("seg", bb, n_classes=4)


def reference_of(model, **kw):
    ref = copy.deepcopy(model)
    ref.backbone.set_attn_impl("sdpa")
    return TorchRunner(DeployModule(ref, "fp32", **kw))


def test_uint8_nhwc_input_and_labels_in_graph_fp16(tmp_path):
    model = seg_model("vit_tiny_test")
    ref = reference_of(model, seg_output="labels", uint8_input=True)
    module = DeployModule(model, "fp16", seg_output="labels", uint8_input=True)
    shapes = ShapeSpec(DimRange(1, 2, 4), DimRange(32, 48, 96), DimRange(32, 48, 96), 16)
    result = export_onnx(module, tmp_path / "m.onnx", shapes)
    facts = ensure_clean(result.path, "fp16", shapes)
    (inp,) = facts.inputs
    assert inp["name"] == "image" and inp["dtype"] == "uint8"
    assert inp["shape"][0] == "batch" and inp["shape"][3] == 3  # NHWC, H/W symbolic
    assert all(isinstance(d, str) for d in inp["shape"][1:3])
    assert [(o["name"], o["dtype"]) for o in facts.outputs] == [("logits", "float32"), ("labels", "int32")]
    assert "Resize" in facts.op_counts  # bilinear upsampling to the input size, in the graph

    u8 = np.stack([make_sample(3 + i, 64, 80)[0] for i in range(3)])  # not the example shape
    out = OrtRunner(result.path).run(u8)
    assert out["labels"].shape == (3, 64, 80)
    rows = compare(ref.run(u8), out, "u8", "seg", "fp16")
    assert all(r.passed for r in rows), [r.failures for r in rows]
    labels = next(r for r in rows if r.output == "labels")
    assert labels.label_agreement >= 0.995


def test_probs_output_static_resolution_convnext(tmp_path):
    model = seg_model("convnext_tiny_test")
    ref = reference_of(model, seg_output="probs")
    module = DeployModule(model, "fp32", seg_output="probs")
    h, w = parse_static("64x96")
    shapes = ShapeSpec(DimRange(1, 1, 2), DimRange(h, h, h), DimRange(w, w, w), 32)
    result = export_onnx(module, tmp_path / "m.onnx", shapes)
    facts = ensure_clean(result.path, "fp32", shapes)
    assert facts.inputs[0]["shape"][2:] == [64, 96]  # static H/W as asked
    assert facts.inputs[0]["shape"][0] == "batch"  # batch stays dynamic
    x = images(2, 64, 96)
    out = OrtRunner(result.path).run(x)
    np.testing.assert_allclose(out["probs"].sum(axis=1), 1.0, atol=1e-5)
    rows = compare(ref.run(x), out, "static", "seg", "fp32")
    assert all(r.passed for r in rows), [r.failures for r in rows]


def test_bf16_graph_is_strongly_typed_with_fp32_islands(tmp_path):
    torch.manual_seed(0)
    bb = build_backbone(dataclasses.replace(get_config("vit_tiny_swiglu_test"), depth=2)).eval()
    bb.set_attn_impl("math")
    model = build_task_model("features", bb)
    module = DeployModule(model, "bf16", feature_layers=2)
    shapes = ShapeSpec(DimRange(1, 1, 2), DimRange(32, 32, 32), DimRange(48, 48, 48), 16)
    result = export_onnx(module, tmp_path / "m.onnx", shapes)
    facts = ensure_clean(result.path, "bf16", shapes)
    assert facts.opset == 18  # the patch embedding is a MatMul: no bf16 Conv (opset 22) needed
    assert set(facts.compute_dtypes) == {"bfloat16"}
    for op in ("LayerNormalization", "Softmax"):
        assert set(facts.fp32_islands[op]) == {"float32"}, op
    # a static resolution bakes the RoPE tables (fp32 constants) instead of computing them
    assert "Sin" not in facts.op_counts and "Range" not in facts.op_counts
    assert [(o["name"], o["dtype"]) for o in facts.outputs] == [
        ("cls", "float32"), ("storage", "float32"), ("patch", "float32"), ("patch_block0", "float32")]


def test_feature_layers_come_from_one_backbone_pass():
    torch.manual_seed(0)
    model = build_task_model("features", "vit_tiny_test")
    x = torch.from_numpy(images(2, 32, 48))
    module = DeployModule(copy.deepcopy(model), "fp32", feature_layers=3)
    assert module.output_names == ["cls", "storage", "patch", "patch_block1", "patch_block2"]
    outs = dict(zip(module.output_names, module(x)))
    with torch.no_grad():
        plain = model(x)
        inter = model.backbone.get_intermediate_layers(x, n=[1, 2], norm=True)
    for name in ("cls", "storage", "patch"):
        torch.testing.assert_close(outs[name], plain[name], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs["patch_block1"], inter[0])
    torch.testing.assert_close(outs["patch_block2"], inter[1])
    assert ops_graph_count(module) == 4  # one pass: 4 blocks, not 4 + 3
    with pytest.raises(DeployError, match="--feature-layers"):
        DeployModule(build_task_model("seg", "vit_tiny_test", n_classes=2), "fp32", feature_layers=1)


@pytest.mark.parametrize("precision,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_low_precision_module_leaves_the_callers_model_fp32(precision, dtype):
    """Export keeps the model it built as the fp32 reference of verification: a DeployModule at
    fp16/bf16 computes with its own cast tensors, never the caller's."""
    torch.manual_seed(0)
    model = build_task_model("seg", "vit_tiny_test", n_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    module = DeployModule(model, precision)
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert {p.dtype for p in module.model.parameters()} == {dtype}
    x = torch.from_numpy(images(1, 32, 32))
    with torch.no_grad():
        (low,) = module(x)
        ref = model(x)["logits"]  # still runs in fp32
    assert ref.dtype == torch.float32 and 0 < (low - ref).abs().max() < 0.1 * ref.abs().max()
    assert DeployModule(model, "fp32").model is model  # nothing to cast: nothing copied


def ops_graph_count(module) -> int:
    """How many transformer blocks run in one forward."""
    calls = []
    hooks = [b.register_forward_hook(lambda *_: calls.append(1)) for b in module.model.backbone.blocks]
    with torch.no_grad():
        module(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    return len(calls)


def test_external_data_for_large_models(tmp_path):
    # size logic on the meta device: 7B does not fit a protobuf, vits16 does
    big = build_backbone(get_config("vit7b16"), device="meta")
    small = build_backbone(get_config("vits16"), device="meta")
    assert needs_external_data(big, "fp16") and needs_external_data(big, "bf16")
    assert not needs_external_data(small, "fp32")
    # the external-data path itself, forced on a tiny model
    model = seg_model("vit_tiny_test")
    ref = reference_of(model)
    module = DeployModule(model, "fp32")
    shapes = ShapeSpec(DimRange(1, 1, 2), DimRange(32, 32, 32), DimRange(32, 32, 32), 16)
    result = export_onnx(module, tmp_path / "model.onnx", shapes, external_data=True)
    assert result.files == ["model.onnx", "model.onnx.data"]
    assert (tmp_path / "model.onnx.data").stat().st_size > (tmp_path / "model.onnx").stat().st_size
    proto = onnx.load(str(result.path), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    ensure_clean(result.path, "fp32", shapes)
    x = images(1, 32, 32)
    rows = compare(ref.run(x), OrtRunner(result.path).run(x), "ext", "seg", "fp32")
    assert all(r.passed for r in rows)


def test_shape_rules_are_enforced_with_clear_errors():
    with pytest.raises(InputShapeError, match="multiple of 16"):
        ShapeSpec(DimRange(1, 1, 1), DimRange(250, 512, 1024), DimRange(256, 256, 256), 16)
    with pytest.raises(InputShapeError, match="multiple of 32"):
        ShapeSpec(DimRange(1, 1, 1), DimRange(48, 48, 48), DimRange(64, 64, 64), 32)  # ConvNeXt
    with pytest.raises(InputShapeError, match="min <= opt <= max"):
        DimRange.parse("8:4:16", "--batch")
    with pytest.raises(InputShapeError, match="--static"):
        parse_static("512by512")
    s = ShapeSpec(DimRange(1, 2, 4), DimRange(32, 64, 128), DimRange(32, 64, 128), 16)
    s.check(4, 128, 32)
    with pytest.raises(InputShapeError, match="multiples of 16"):
        s.check(1, 40, 64)
    with pytest.raises(InputShapeError, match="batch 5 outside"):
        s.check(5, 64, 64)
    assert DimRange.parse("1:8:32").to_list() == [1, 8, 32] and DimRange.parse("4").static


def test_hygiene_checker_rejects_bad_graphs():
    clean = GraphFacts(
        opset=18, inputs=[{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, "h", "w"]}],
        outputs=[], op_counts={"MatMul": 2, "LayerNormalization": 1},
        fp32_islands={"LayerNormalization": {"float32": 1}}, compute_dtypes={"float16": 2},
    )
    shapes = ShapeSpec(DimRange(1, 1, 8), DimRange(32, 64, 128), DimRange(32, 64, 128), 16)
    assert check_graph(clean, "fp16", shapes) == []
    bad = copy.deepcopy(clean)
    bad.inputs.append({"name": "masks", "dtype": "bool", "shape": ["batch", 16]})
    bad.op_counts.update(If=1, Tile=2)
    bad.opset = 17
    bad.fp32_islands["Softmax"] = {"float16": 3}
    bad.compute_dtypes = {"float32": 2}
    bad.inputs[0]["shape"] = ["batch", 3, 512, "w"]
    problems = " | ".join(check_graph(bad, "fp16", shapes))
    for needle in ("exactly one input", "opset 17", "If", "Tile", "Softmax fed", "not fp16", "height axis came out"):
        assert needle in problems, needle


def test_graph_facts_reads_real_cast_islands(tmp_path):
    """A graph whose LayerNorm runs in fp16 (no fp32 island) is caught on a real ONNX file."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["b", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["b", 8])
    scale = helper.make_tensor("s", TensorProto.FLOAT16, [8], np.ones(8, np.float16).tobytes(), raw=True)
    node = helper.make_node("LayerNormalization", ["x", "s"], ["y"], axis=-1)
    g = helper.make_graph([node], "g", [x], [y], initializer=[scale])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "ln.onnx")
    facts = graph_facts(tmp_path / "ln.onnx")
    assert facts.fp32_islands == {"LayerNormalization": {"float16": 1}}
    assert any("LayerNormalization fed" in p for p in check_graph(facts, "fp16"))
