"""Mask2Former at fp16 / bf16, the parts that need no export: the head's LayerNorms with fp32 statistics, the
measured floor behind the class / mask logit gate rows, the rows themselves, the fp32 op count of islands
(per call), and the reference evaluator's GridSample. The exports: tests/test_m2f_precision_slow.py."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dinov3_deploy.verification.parity import THRESHOLDS, compare, gate


@pytest.fixture(scope="module")
def segmentor():
    from dinov3_deploy.reference import create_segmentor

    return create_segmentor("vit_tiny_test", hidden_dim=32, num_classes=5, seed=0).eval()


def _images(segmentor, batch=2, size=64):
    """verify's opt-case images (make_batch, seeds 0..), normalised as the artifact's caller does."""
    from dinov3_deploy.verification.verify import Case, make_batch

    io = type("IO", (), {"uint8_input": False, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)})()
    return torch.from_numpy(make_batch(Case("opt", batch, size, size, 0), io))


def test_every_head_layernorm_keeps_fp32_statistics_under_fp16(segmentor, monkeypatch):
    """The adapter's and both decoders' LayerNorms are the backbone's class (fp32 statistics under fp16 /
    bf16): the graph check refuses a LayerNormalization fed fp16, which refused the fp16 M2F export (67 of them
    in the tiny segmentor); the pixel decoder's GroupNorms likewise (InstanceNormalization in the graph). The
    exported graph itself: tests/test_m2f_precision_slow.py."""
    from dinov3_deploy.reference.models.layers import GroupNorm, LayerNorm

    norms = [(n, m) for n, m in segmentor.named_modules() if isinstance(m, nn.LayerNorm) and "backbone" not in n]
    assert len(norms) > 20 and not [n for n, m in norms if type(m) is not LayerNorm]
    groups = [m for m in segmentor.modules() if isinstance(m, nn.GroupNorm)]  # the pixel decoder's, likewise
    assert groups and all(type(m) is GroupNorm for m in groups)
    norm = copy.deepcopy(norms[0][1]).half()
    captured, layer_norm = [], F.layer_norm
    monkeypatch.setattr(F, "layer_norm", lambda x, *a, **k: captured.append(x.dtype) or layer_norm(x, *a, **k))
    assert norm(torch.randn(2, 7, norm.normalized_shape[0]).half()).dtype == torch.float16
    assert captured == [torch.float32]


def test_input_rounding_alone_moves_mask_logits_past_the_generic_gate_not_past_their_row(segmentor):
    """The floor the class / mask logit rows stand on: the fp32 segmentor with only its input rounded to fp16
    (what the fp16 graph's first Cast does) already fails the generic fp16 gate on the mask logits (masked
    attention flips entries near sigmoid 0.5), stays inside their measured row, and the scores it makes keep
    the generic gate with every label."""
    from dinov3_deploy.reference.models.m2f_segmentor import semantic_scores

    x = _images(segmentor)
    with torch.no_grad():
        runs = [segmentor(im) for im in (x, x.half().float())]
    ref, out = ({"class_logits": r["pred_logits"].numpy(), "mask_logits": r["pred_masks"].numpy(),
                 "scores": semantic_scores(r["pred_logits"], r["pred_masks"], (64, 64)).numpy()} for r in runs)
    rows = {r.output: r for r in compare(ref, out, "opt", "seg", "fp16")}
    generic = THRESHOLDS["fp16"]
    mask = rows["mask_logits"]
    assert mask.rel_fro > generic.max_rel_fro or mask.min_token_cos < generic.min_token_cos
    assert mask.passed and mask.gate == "fp16 mask_logits"
    assert rows["class_logits"].passed and rows["class_logits"].gate == "fp16 class_logits"
    assert rows["scores"].passed and rows["scores"].gate == "fp16" and rows["scores"].label_agreement == 1.0


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_logit_rows_judge_only_their_outputs_and_still_fail_beyond_them(precision):
    rng = np.random.default_rng(0)
    ref = {name: rng.standard_normal((1, 10, 8, 8)).astype(np.float32) for name in ("mask_logits", "seg.mask_logits")}
    ref["scores"] = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    name, row = gate(precision, "seg.mask_logits")  # a multi-head graph's "<task>." prefix does not hide it
    assert name == f"{precision} mask_logits" and row.max_rel_fro > THRESHOLDS[precision].max_rel_fro
    assert gate(precision, "scores") == (precision, THRESHOLDS[precision])
    assert gate("fp32", "mask_logits") == ("fp32", THRESHOLDS["fp32"])  # fp32 keeps its bound everywhere
    beyond = {k: v + 2 * row.max_rel_fro * rng.standard_normal(v.shape).astype(np.float32) for k, v in ref.items()}
    assert not any(r.passed for r in compare(ref, beyond, "c", "seg", precision))
    inside = {k: v * (1 + 0.5 * row.max_rel_fro) for k, v in ref.items()}  # rel exactly half the row
    rows = {r.output: r for r in compare(ref, inside, "c", "seg", precision)}
    assert rows["mask_logits"].passed and rows["seg.mask_logits"].passed
    assert not rows["scores"].passed  # the same error on an output without a row: its precision's gate


def test_island_ops_are_counted_per_call_inside_the_islands():
    """A module called several times inside an island is as many MatMuls in the graph; projections written
    as F.linear and activation matmuls are no modules: counting Linear modules found 1 here, the graph has 5."""
    from dinov3_deploy.island_ops import count_island_compute

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)
            self.w = nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            for _ in range(3):
                x = self.proj(x)  # 3 MatMuls
            return F.linear(x, self.w) @ self.w  # 2 more

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = Head()
            self.outside = nn.Linear(4, 4)

        def forward(self, x):
            return self.outside(self.head(x))

    m = Model()
    assert count_island_compute(m, [m.head], torch.randn(2, 4)) == 5
    half = copy.deepcopy(m).half()
    assert count_island_compute(half, [half.head], torch.randn(2, 4).half()) == 0  # not an fp32 op
    assert count_island_compute(m, [], torch.randn(2, 4)) == 0


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_reference_evaluator_gridsample_equals_torch(align_corners, padding):
    """onnx-reference's GridSample (runtime/reference_ops.py) against torch's, points outside the map included,
    through the evaluator with an opset-18 node (whose "bilinear" mode onnx's own op refuses)."""
    import onnx
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    from dinov3_deploy.runtime.reference_ops import REFERENCE_OPS

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    grid = (rng.random((2, 4, 6, 2)) * 2.6 - 1.3).astype(np.float32)
    node = helper.make_node("GridSample", ["x", "g"], ["y"], mode="bilinear", padding_mode=padding,
                            align_corners=int(align_corners))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5, 7]),
                                            helper.make_tensor_value_info("g", TensorProto.FLOAT, [2, 4, 6, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4, 6])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    (got,) = ReferenceEvaluator(model, new_ops=REFERENCE_OPS).run(None, {"x": x, "g": grid})
    want = F.grid_sample(torch.from_numpy(x), torch.from_numpy(grid), mode="bilinear", padding_mode=padding,
                         align_corners=align_corners).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def m2f_model(tmp_path_factory):
    from m2f_helpers import tiny_m2f_head

    from dinov3_deploy.export.m2f_model import build_m2f_model

    return build_m2f_model("vit_tiny_test", str(tiny_m2f_head(tmp_path_factory.mktemp("m2f"))), None, 0)


def test_bf16_keeps_each_deformable_sampling_core_fp32_and_its_impl_switch(m2f_model, monkeypatch):
    """bf16: every MSDeformAttn's sampling core (GridSample: no bf16 in ONNX below opset 22 nor in TensorRT)
    computes in fp32 between casts, its projections in bf16; the module's impl switch still decides what runs
    inside (another impl there is the TensorRT plugin's way in)."""
    from dinov3_deploy.deploy_module import DeployModule, Fp32Island
    from dinov3_deploy.reference.models import ms_deform_attn
    from dinov3_deploy.reference.models.ms_deform_attn import DeformSampling, MSDeformAttn

    module = DeployModule(m2f_model, "bf16")
    attns = [n for n, m in module.model.named_modules() if isinstance(m, MSDeformAttn)]
    assert module.sampling_islands == [f"{n}.sampling" for n in attns] and len(attns) > 6
    assert all(type(module.model.get_submodule(n)) is Fp32Island
               and type(module.model.get_submodule(n).inner) is DeformSampling for n in module.sampling_islands)
    assert DeployModule(m2f_model, "fp16").sampling_islands == []
    seen, core = [], ms_deform_attn.ms_deform_attn_core
    monkeypatch.setattr(ms_deform_attn, "ms_deform_attn_core", lambda v, *a: seen.append(v.dtype) or core(v, *a))
    x = module.example_input(1, 64, 64)
    with torch.no_grad():
        module(x)
    assert seen and set(seen) == {torch.float32}
    assert module.model.get_submodule(attns[0]).value_proj.weight.dtype == torch.bfloat16
    for n in attns:
        module.model.get_submodule(n).impl = "no-such-impl"
    with pytest.raises(ValueError, match="no-such-impl"), torch.no_grad():
        module(x)


def test_island_op_count_runs_triton_impls_in_their_plain_forms(monkeypatch):
    """A plugin export (attention as Triton / TensorRT plugin nodes) is counted with the plain attention, which
    runs anywhere: the count is an upper bound, and the impl switch is left as it was."""
    import dataclasses

    from dinov3_deploy.deploy_module import DeployModule
    from dinov3_deploy.kernels import fused_attention
    from dinov3_deploy.reference.configs import get_config
    from dinov3_deploy.reference.factory import build_backbone, build_task_model

    bb = build_backbone(dataclasses.replace(get_config("vit_tiny_test"), depth=2)).eval()
    model = build_task_model("seg", bb, n_classes=3)
    plain = DeployModule(model, "bf16", fp32_islands=["backbone.blocks.1.attn"]).fp32_compute_ops()  # sdpa
    bb.set_attn_impl("math")
    assert DeployModule(model, "bf16", fp32_islands=["backbone.blocks.1.attn"]).fp32_compute_ops() == plain
    bb.set_attn_impl("triton")
    module = DeployModule(model, "bf16", fp32_islands=["backbone.blocks.1.attn"])

    def no_gpu_here(*_a, **_k):
        raise RuntimeError("the Triton kernel ran")

    monkeypatch.setattr(fused_attention, "rope_attention", no_gpu_here)
    assert module.fp32_compute_ops() == plain == 4  # qkv, q.k, softmax @ v, proj
    assert {m.impl for m in module.model.modules() if hasattr(m, "scores_fp32")} == {"triton"}
