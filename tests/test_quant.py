"""int8 / fp8 quantization (export/quantize.py, sensitivity.py, smooth.py) on the tiny test ViT."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from dinov3_deploy.deploy_module import DeployModule
from dinov3_deploy.export.calibration import calibration_images
from dinov3_deploy.export.onnx_graph import check_graph, export_onnx, graph_facts
from dinov3_deploy.export.quant_step import split_feeds
from dinov3_deploy.export.quantize import (
    calibrate,
    insert_qdq,
    quantizable_layers,
    quantized_layers,
)
from dinov3_deploy.export.sensitivity import QuantModel, rank, refine_methods
from dinov3_deploy.export.smooth import smooth_
from dinov3_deploy.model_source import ModelSource
from dinov3_deploy.reference.models.fold import fold_all
from dinov3_deploy.shapes import DimRange, ShapeSpec

SIZE = 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(folded tiny seg model, its fp32 ONNX at opset 19, calibration images)."""
    torch.manual_seed(0)
    model = ModelSource.resolve("seg", "vit_tiny_test").build(attn_impl="math")
    folded, _ = fold_all(model)
    x = calibration_images(None, SIZE, SIZE, model.spec.mean, model.spec.std, n=2)
    return folded, _export(folded, tmp_path_factory.mktemp("quant") / "fp32.onnx"), x


def _export(model, path) -> onnx.ModelProto:
    """Dynamic H x W (SIZE .. SIZE + 16): the search may judge more than one size."""
    shapes = ShapeSpec(DimRange(1, 1, 1), DimRange(SIZE, SIZE, SIZE + 16), DimRange(SIZE, SIZE, SIZE + 16), 16)
    export_onnx(DeployModule(model, "fp32", opset=19), path, shapes)
    return onnx.load(path)


def _feeds(model: onnx.ModelProto, x: torch.Tensor) -> list[dict[str, np.ndarray]]:
    return [{model.graph.input[0].name: x[i:i + 1].numpy()} for i in range(len(x))]


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_qdq_graph_is_clean_with_finite_positive_scales(tiny, tmp_path, precision):
    _, graph, x = tiny
    layers = quantizable_layers(graph)
    qdq = insert_qdq(graph, layers, calibrate(graph, _feeds(graph, x), "minmax"), precision)
    path = tmp_path / "q.onnx"
    onnx.save(qdq, path)
    onnx.checker.check_model(str(path))
    facts = graph_facts(path)
    assert check_graph(facts, precision) == []
    assert facts.compute_dtypes.get("float32", 0) == 0  # every MatMul / Conv takes quantized inputs
    inits = {i.name: i for i in qdq.graph.initializer}
    scales = [numpy_helper.to_array(inits[n.input[1]]) for n in qdq.graph.node
              if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert scales and all(np.isfinite(s).all() and (s > 0).all() for s in scales)
    # the attention's activation matmuls are quantized too (the FLOP share counts them)
    names = {layer.name for layer in layers}
    assert "backbone.blocks.0.attn.scores" in names and "backbone.blocks.0.attn.weighted_v" in names


def test_kept_layer_stays_float(tiny):
    _, graph, x = tiny
    layers = quantizable_layers(graph)
    kept = next(layer for layer in layers if layer.name == "backbone.blocks.1.mlp.fc2")
    qdq = insert_qdq(graph, layers, calibrate(graph, _feeds(graph, x), "minmax"), "int8", keep={kept.name})
    node = next(n for n in qdq.graph.node if n.name == kept.node)
    weight = next(i for i in qdq.graph.initializer if i.name == node.input[1])
    assert weight.data_type == onnx.TensorProto.FLOAT
    producers = {o: n.op_type for n in qdq.graph.node for o in n.output}
    assert producers.get(node.input[0]) != "DequantizeLinear"
    assert kept.node not in quantized_layers(qdq)
    assert len(quantized_layers(qdq)) == len(layers) - 1


def test_fp8_on_onnxruntime_matches_the_reference_evaluator(tiny):
    """Sensitivity scores fp8 graphs on ONNX Runtime's CPU provider; verify judges them with the ONNX
    reference evaluator. Both must compute the same fp8 rounding."""
    from onnx.reference import ReferenceEvaluator

    _, graph, x = tiny
    feeds = _feeds(graph, x[:1])
    qm = QuantModel(graph, feeds, "fp8", "seg")
    qdq = qm.build()
    ort_out = qm.run(qdq)[0][qm.output_names[0]]
    ref_out = ReferenceEvaluator(qdq).run(None, feeds[0])[0]
    fp32 = qm.reference[0][qm.output_names[0]]
    assert np.abs(ort_out - fp32).max() > 1e-4  # the rounding is there...
    np.testing.assert_allclose(ort_out, ref_out, rtol=1e-4, atol=1e-4)  # ...and the same in both


def plant_outlier(block) -> None:
    """Input channel 0 of the block's fc1 made 300x larger, its weight column 300x smaller: the same
    function, and the massive-channel shape of trained DINOv3 activations."""
    with torch.no_grad():
        block.norm2.weight[0] *= 300
        block.norm2.bias[0] *= 300
        block.mlp.fc1.weight[:, 0] /= 300


def test_sensitivity_ranks_a_planted_outlier_first(tiny, tmp_path):
    """One input channel of block 1's fc1 made 300x larger (its weight column 300x smaller: the same
    function): one per-tensor int8 scale then wipes out that linear's other channels."""
    folded, _, x = tiny
    model = copy.deepcopy(folded)
    plant_outlier(model.backbone.blocks[1])
    graph = _export(model, tmp_path / "planted.onnx")
    sens = rank(QuantModel(graph, _feeds(graph, x), "int8", "seg"))
    assert next(iter(sens)) == "backbone.blocks.1.mlp.fc1"


def test_smoothing_keeps_the_function_and_shrinks_the_outlier(tiny):
    folded, _, x = tiny
    model = copy.deepcopy(folded)
    block = model.backbone.blocks[1]
    plant_outlier(block)
    with torch.no_grad():
        before = model(x)[0] if isinstance(model(x), tuple) else model(x)
    from dinov3_deploy.export.smooth import input_channel_absmax

    fc1 = {"fc1": block.mlp.fc1}
    peak = input_channel_absmax(model, x, fc1)["fc1"]
    migrations = smooth_(model, x)
    with torch.no_grad():
        after = model(x)[0] if isinstance(model(x), tuple) else model(x)
    peak_after = input_channel_absmax(model, x, fc1)["fc1"]
    assert len(migrations) == 3 * len(model.backbone.blocks)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    # the planted channel no longer sets the tensor's range alone
    assert (peak.max() / peak.median()) > 50 * (peak_after.max() / peak_after.median())


def _act_scales(qdq: onnx.ModelProto, node: str) -> list[float]:
    """The activation scales in front of a node (its QuantizeLinear inputs)."""
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    return [float(inits[n.input[1]]) for n in qdq.graph.node
            if n.op_type == "QuantizeLinear" and n.name.startswith(f"{node}_in")]


def test_a_layer_calibrated_otherwise_gets_its_own_scale(tiny):
    _, graph, x = tiny
    layers = quantizable_layers(graph)
    feeds = _feeds(graph, x)
    minmax, pct = calibrate(graph, feeds, "minmax"), calibrate(graph, feeds, "percentile")
    fc1, fc2 = (next(ly for ly in layers if ly.name == f"backbone.blocks.1.mlp.{n}") for n in ("fc1", "fc2"))
    assert minmax[fc1.activations[0]] != pct[fc1.activations[0]]
    qdq = insert_qdq(graph, layers, minmax, "int8", layer_ranges={fc1.name: pct})
    assert _act_scales(qdq, fc1.node) == pytest.approx([pct[fc1.activations[0]] / 127], rel=1e-6)
    assert _act_scales(qdq, fc2.node) == pytest.approx([minmax[fc2.activations[0]] / 127], rel=1e-6)


def test_refined_methods_lower_what_they_were_measured_to_lower(tiny):
    """refine_methods keeps another method for a layer only where that layer alone measured a lower
    error with it; the ranking is redone with those errors."""
    _, graph, x = tiny
    qm = QuantModel(graph, _feeds(graph, x), "int8", "seg", method="minmax")
    sens = rank(qm)
    methods, refined = refine_methods(qm, sens, floor=0.0)
    assert set(methods.values()) <= {"percentile", "entropy"} and methods  # percentile clips: some layer gains
    assert all(refined[n] <= sens[n] for n in sens) and list(refined.values()) == sorted(refined.values())[::-1]
    again = rank(qm, names=list(methods), methods=methods)
    assert all(again[n] == pytest.approx(refined[n]) for n in methods)


def test_quantized_exports_are_judged_at_every_size_verify_runs():
    from dinov3_deploy.verification.verify import case_sizes

    shapes = ShapeSpec(DimRange(1, 1, 1), DimRange(224, 224, 512), DimRange(224, 224, 512), 16)
    assert case_sizes(shapes) == [(224, 224), (240, 256)]  # the size a vits16 int8 export failed at
    static = ShapeSpec(DimRange(1, 1, 1), DimRange(64, 64, 64), DimRange(64, 64, 64), 16)
    assert case_sizes(static) == [(64, 64)]


def test_the_search_scores_the_worst_of_its_sizes(tiny):
    """Images at two sizes: each size is calibrated on and judged, and the score is the worse size's."""
    folded, graph, x = tiny
    name = graph.graph.input[0].name
    big = calibration_images(None, SIZE + 16, SIZE, folded.spec.mean, folded.spec.std, n=2).numpy()
    feeds, split = split_feeds(name, [x.numpy(), big])
    assert [f[name].shape[2:] for f in feeds] == [(SIZE, SIZE), (SIZE + 16, SIZE)] * 2 and split == 2
    both = QuantModel(graph, feeds, "int8", "seg", split=split)
    # the same calibration images (so the same ranges), judged at one size each
    small_only = QuantModel(graph, feeds[:3], "int8", "seg", split=2)
    big_only = QuantModel(graph, feeds[:2] + feeds[3:], "int8", "seg", split=2)
    qdq = both.build()
    s, a, b = both.score(qdq), small_only.score(qdq), big_only.score(qdq)
    assert a.rel_fro != b.rel_fro
    assert s.rel_fro == pytest.approx(max(a.rel_fro, b.rel_fro))
    assert s.min_token_cos == pytest.approx(min(a.min_token_cos, b.min_token_cos))
    # every method calibrates over both sizes (ONNX Runtime's histogram collectors stack what one call sees)
    for method in ("percentile", "entropy"):
        ranges = calibrate(graph, feeds, method)
        assert ranges and all(np.isfinite(v) and v > 0 for v in ranges.values())
