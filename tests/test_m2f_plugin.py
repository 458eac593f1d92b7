"""`--deform-attn plugin`: each deformable-attention core of the Mask2Former becomes one
`dinov3_deploy.ms_deform_attn` node for the TensorRT plugin of that id (engines/plugins.py), exported
through the kernel's torch.library op; here the node is run by ONNX's reference evaluator with the
plain PyTorch core (engines/plugin_reference.py), so such a graph is judged on a CPU.

Fast cells share one small export (one MSDeformAttn over two non-square levels, dynamic batch/H/W);
the whole segmentor through the CLI is `slow` (the export takes minutes on 2 cores)."""

import json
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from dinov3_deploy.cli import cli
from dinov3_deploy.engines.plugins import (
    MS_DEFORM_ATTN_PLUGIN,
    PLUGIN_NODE_ATTRS,
    ms_deform_attn_onnx_schema,
    ms_deform_attn_translation_table,
)
from dinov3_deploy.reference.models.ms_deform_attn import MSDeformAttn, reference_points


class TwoLevels(torch.nn.Module):
    """One deformable attention over the input map and its 2x average pool: level sizes from H, W."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = MSDeformAttn(16, n_levels=2, n_heads=2, n_points=3)
        with torch.no_grad():  # offsets of several pixels: points fall off the maps (zero padding)
            self.attn.sampling_offsets.bias.normal_(0, 4)
            self.attn.attention_weights.weight.normal_(0, 0.5)

    def forward(self, x):
        _, _, h, w = x.shape
        coarse = torch.nn.functional.avg_pool2d(x, 2)
        value = torch.cat([x.flatten(2).transpose(1, 2), coarse.flatten(2).transpose(1, 2)], 1)
        query = x.flatten(2).transpose(1, 2)
        return self.attn(query, reference_points([(h, w)]), value, [(h, w), (h // 2, w // 2)])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from torch.export import Dim

    model = TwoLevels().eval()
    model.attn.impl = "triton"
    half_h, half_w = Dim("half_h", min=2, max=16), Dim("half_w", min=2, max=16)
    program = torch.onnx.export(
        model, (torch.randn(2, 16, 8, 12),), dynamo=True, report=False,
        dynamic_shapes={"x": {0: Dim("batch", min=1, max=4), 2: 2 * half_h, 3: 2 * half_w}},
        custom_translation_table=ms_deform_attn_translation_table())
    path = tmp_path_factory.mktemp("msda") / "msda.onnx"
    program.save(str(path))
    model.attn.impl = "plain"
    return model, path


def _plugin_nodes(graph):
    return [n for n in graph.node if n.domain == "dinov3_deploy"]


def test_node_names_the_registered_plugin_for_trt_onnx_parser(exported):
    """TensorRT's parser maps a node without importer to the plugin `plugin_namespace::op_type`; `aot`
    selects the ahead-of-time PTX (the only implementation registered)."""
    g = onnx.load(str(exported[1]))
    (node,) = _plugin_nodes(g.graph)
    namespace, name = MS_DEFORM_ATTN_PLUGIN.split("::")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert (node.op_type, attrs["plugin_namespace"].decode()) == (name, namespace)
    assert attrs["plugin_version"] == b"1" and attrs["aot"] == 1 and PLUGIN_NODE_ATTRS["aot"] == 1
    assert [i.name for i in ms_deform_attn_onnx_schema().inputs] == ["value", "level_shapes", "locations", "weights"]
    assert not [n for n in g.graph.node if n.op_type == "GridSample"]  # the core is the node, not standard ops
    onnx.checker.check_model(g)


def test_level_shapes_input_is_int32_pairs_computed_from_the_image(exported):
    """The plugin reads an int32 [L, 2] (h, w) input, computed in the graph from H and W (one engine for
    every size of its profile)."""
    g = onnx.shape_inference.infer_shapes(onnx.load(str(exported[1])))
    (node,) = _plugin_nodes(g.graph)
    producers = {o: n for n in g.graph.node for o in n.output}
    cast = producers[node.input[1]]
    assert cast.op_type == "Cast" and onnx.helper.get_attribute_value(cast.attribute[0]) == onnx.TensorProto.INT32
    assert node.input[1] not in {i.name for i in g.graph.initializer}  # not baked for the example size


@pytest.mark.parametrize("shape", [(2, 16, 8, 12), (3, 16, 12, 6), (1, 16, 4, 20)])
def test_reference_evaluator_runs_the_plugin_graph_as_the_model(exported, shape):
    """At sizes other than the traced one (non-square levels, points off the maps): the node's level
    sizes, layouts and output order are the model's."""
    from onnx.reference import ReferenceEvaluator

    from dinov3_deploy.engines.plugin_reference import plugin_ops

    model, path = exported
    g = onnx.load(str(path))
    x = torch.randn(*shape)
    got = ReferenceEvaluator(g, new_ops=plugin_ops()).run(None, {g.graph.input[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == want.shape
    assert np.linalg.norm(got - want) / np.linalg.norm(want) <= 1e-6


def test_reference_node_keeps_the_float_type_and_sums_in_fp32():
    """An fp16 node: fp16 out, equal to the core summed in fp32 on the fp16 inputs, rounded once."""
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    from dinov3_deploy.engines.plugin_reference import plugin_ops
    from dinov3_deploy.reference.models.ms_deform_attn import ms_deform_attn_core

    value = torch.randn(1, 4 * 6 + 2 * 3, 2, 8).half()
    loc, w = (torch.rand(1, 5, 2, 2, 3, 2) * 1.4 - 0.2).half(), torch.rand(1, 5, 2, 2, 3).half()
    f16 = TensorProto.FLOAT16
    node = helper.make_node("ms_deform_attn", ["v", "s", "l", "w"], ["o"], domain="dinov3_deploy",
                            **PLUGIN_NODE_ATTRS)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("v", f16, list(value.shape)),
                                        helper.make_tensor_value_info("s", TensorProto.INT32, [2, 2]),
                                        helper.make_tensor_value_info("l", f16, list(loc.shape)),
                                        helper.make_tensor_value_info("w", f16, list(w.shape))],
                          [helper.make_tensor_value_info("o", f16, [1, 5, 16])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("dinov3_deploy", 1)])
    feeds = {"v": value.numpy(), "s": np.array([[4, 6], [2, 3]], dtype=np.int32), "l": loc.numpy(), "w": w.numpy()}
    (out,) = ReferenceEvaluator(model, new_ops=plugin_ops()).run(None, feeds)
    want = ms_deform_attn_core(value.float(), [(4, 6), (2, 3)], loc.float(), w.float()).half()
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, want.numpy())
    # the level sizes are read from the input: swapping h and w of a level changes the result
    feeds["s"] = np.array([[6, 4], [2, 3]], dtype=np.int32)
    assert not np.array_equal(ReferenceEvaluator(model, new_ops=plugin_ops()).run(None, feeds)[0], out)


def _stub_artifact(plugins, precision="fp32"):
    manifest = SimpleNamespace(onnx=SimpleNamespace(plugins=plugins), tensorrt=None)
    return SimpleNamespace(manifest=manifest, precision=precision, onnx_path=__import__("pathlib").Path("/nonexistent"))


def test_backends_skip_onnxruntime_and_run_the_evaluator_for_plugin_graphs():
    from dinov3_deploy.runtime.runners import artifact_backends

    backends = {b.name: b for b in artifact_backends(_stub_artifact([MS_DEFORM_ATTN_PLUGIN]), ("cpu",),
                                                     reference="low-precision")}
    assert backends["onnxruntime-cpu"].runner is None
    assert "plugin" in backends["onnxruntime-cpu"].skip_reason and MS_DEFORM_ATTN_PLUGIN in \
        backends["onnxruntime-cpu"].skip_reason
    assert backends["onnx-reference"].runner is not None and backends["onnx-reference"].skip_reason == ""
    # a plugin the evaluator has no implementation of (the attention plugin): skipped, saying which
    ref = artifact_backends(_stub_artifact(["dinov3_deploy::attention"], "fp16"), ("cpu",), reference="always")[-1]
    assert ref.runner is None and "dinov3_deploy::attention" in ref.skip_reason
    # a standard-op fp32 graph keeps ONNX Runtime and no evaluator
    plain = [b.name for b in artifact_backends(_stub_artifact([]), ("cpu",), reference="low-precision")]
    assert plain == ["onnxruntime-cpu"]


# -- the segmentor through the CLI -------------------------------------------------------------------------
SHAPE = ["--batch", "1:1:2", "--height", "64:64:96", "--width", "64:64:128"]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    from dinov3_deploy.reference import create_segmentor
    from dinov3_deploy.reference.formats.m2f_checkpoint import save_m2f_head

    seg = create_segmentor("vit_tiny_test", hidden_dim=32, num_classes=5, seed=0)
    return save_m2f_head(tmp_path_factory.mktemp("m2f") / "head", seg, backbone="vit_tiny_test", backbone_seed=0)


@pytest.mark.parametrize("extra,needle", [
    (["--format", "trt", "--trt-flavor", "tensorrt-rtx"], "no tensorrt.plugin"),
    (["--format", "triton-repo"], "needs --format trt"),
])
def test_plugin_refuses_what_cannot_carry_it_in_one_line(head, tmp_path, extra, needle):
    if "tensorrt-rtx" in extra:
        pytest.importorskip("tensorrt_rtx")
    res = CliRunner().invoke(cli, ["export", "--task", "seg", "--head", str(head), "--deform-attn", "plugin",
                                   *SHAPE, "--out", str(tmp_path / "a"), *extra])
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_segmentor_plugin_export_passes_fp32_parity_on_the_reference_evaluator(head, tmp_path):
    """The whole segmentor with one plugin node per deformable-attention core: the export's own parity
    runs it on onnx-reference (ONNX Runtime reported skipped, with why) within the fp32 gate."""
    from dinov3_deploy.reference import create_segmentor
    from dinov3_deploy.reference.models.ms_deform_attn import MSDeformAttn as Core

    out = tmp_path / "art"
    res = CliRunner().invoke(cli, ["export", "--task", "seg", "--head", str(head), "--deform-attn", "plugin",
                                   *SHAPE, "--out", str(out)])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["onnx"]["plugins"] == [MS_DEFORM_ATTN_PLUGIN]
    ops = manifest["onnx"]["graph"]["op_counts"]
    seg = create_segmentor("vit_tiny_test", hidden_dim=32, num_classes=5)
    n_cores = sum(isinstance(m, Core) for m in seg.modules())
    assert ops.get("ms_deform_attn") == n_cores and not ops.get("GridSample")
    report = json.loads((out / "parity.json").read_text())
    backends = {b["name"]: b for b in report["backends"]}
    assert report["passed"] and backends["onnx-reference"]["status"] == "passed"
    assert "plugin" in backends["onnxruntime-cpu"]["reason"]
    rows = {o["output"]: o for o in backends["onnx-reference"]["outputs"]}
    assert set(rows) == {"class_logits", "mask_logits", "scores"}
    assert all(o["rel_fro"] <= 1e-4 for o in rows.values())
    assert rows["scores"]["label_agreement"] == 1.0
    # `verify` on the written artifact picks the evaluator by itself
    res = CliRunner().invoke(cli, ["verify", str(out)])
    assert res.exit_code == 0, res.output
    assert "PASSED on onnx-reference" in res.output and "only TensorRT runs" in res.output
