"""The attention scores q*scale @ k^T in fp16 exports (export/calibration.py). They are the one matmul
of the graph that is no module, so module hooks never saw them: an fp16 graph computes them in fp16,
scores past 65504 become inf and the softmax NaN. Calibration now computes them in fp32 from each
attention's inputs and keeps only that matmul in fp32 where they leave fp16's safe range.

The stress: vit_tiny_test (release-like) with one block's q and k scaled up, so its scores pass
65504 while q and k themselves stay far inside fp16 (no range island can catch it). The block's fp32
function changes: its attention becomes one-hot, which no fp16 graph reproduces on every image. fp16
rounding (relative ~2^-12) of the block's input, or of q and k, moves scores of 1e5 by tens: enough
to flip a near tie between two keys. Measured on 40 synthetic images at 32x32 and 40 at 64x64 with
the fp32 scores: planted in block 1, 5 of 80 images fail the fp16 thresholds (rel Frobenius up to
0.4), 5 with the whole attention in fp32 and 3 with the whole block; planted in block 0, 1 of 80
(64x64, rel 0.54; the whole attention in fp32 passes it). So the plant is in block 0, checked at 32x32."""

from __future__ import annotations

import onnx
import pytest
import torch
from click.testing import CliRunner

from dinov3_deploy.artifact import load_artifact
from dinov3_deploy.cli import cli
from dinov3_deploy.deploy_module import DeployModule, Fp32Island
from dinov3_deploy.errors import DeployError
from dinov3_deploy.export.calibration import (
    FP16_MAX,
    FP16_SAFE,
    Island,
    calibration_images,
    choose_islands,
    fp32_flop_share,
    matmul_flops,
    record_maxima,
)
from dinov3_deploy.export.onnx_graph import ensure_clean, export_onnx
from dinov3_deploy.model_source import ModelSource
from dinov3_deploy.reference.models.fold import fold_all
from dinov3_deploy.shapes import DimRange, ShapeSpec
from dinov3_deploy.verification.parity import compare
from dinov3_deploy.verification.per_block import node_scopes

BLOCK = 0
ATTN = f"backbone.blocks.{BLOCK}.attn"
# q and k times 200: the block's scores (max ~8 on the calibration images) times 4e4, past 65504, while
# q and k (max ~6) reach ~1.3e3, far under FP16_SAFE: only the scores leave fp16's range
QK_GAIN = 200.0
SIZE = 32


def planted(task: str = "seg"):
    """The release-like tiny ViT (math attention: the export path) with BLOCK's q and k scaled up."""
    model = ModelSource(task, "vit_tiny_test", init="release-like").build()
    attn = model.backbone.blocks[BLOCK].attn
    dim = model.backbone.embed_dim
    with torch.no_grad():  # q, k: the first two thirds of qkv's output (k's bias is masked to 0 anyway)
        attn.qkv.weight[: 2 * dim] *= QK_GAIN
        attn.qkv.bias[: 2 * dim] *= QK_GAIN
    return model


@pytest.fixture(scope="module")
def stress():
    model = planted()
    folded, _ = fold_all(model)  # what export calibrates and exports
    x = calibration_images(None, SIZE, SIZE, model.spec.mean, model.spec.std)
    return model, folded, x, record_maxima(folded, x)


def _run(module: DeployModule, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return dict(zip(module.output_names, module(x)))


def test_planted_scores_overflow_a_plain_fp16_model(stress):
    """Calibration measures the scores (in fp32), and they are what breaks fp16: the planted block's
    pass 65504, every other block's are small, and the plain fp16 model (PyTorch on the CPU, which
    keeps fp16 matmul outputs in fp16) gives non-finite logits."""
    model, folded, x, ranges = stress
    assert set(ranges.scores) == {f"backbone.blocks.{i}.attn" for i in range(4)}
    assert ranges.scores[ATTN] > FP16_MAX
    assert all(v < FP16_SAFE for n, v in ranges.scores.items() if n != ATTN)
    assert ranges.outputs[f"{ATTN}.qkv"] < FP16_SAFE  # q and k alone are in range: no range island
    assert not torch.isfinite(_run(DeployModule(folded, "fp16"), x[:2])["logits"]).all()
    unplanted, _ = fold_all(ModelSource("seg", "vit_tiny_test", init="release-like").build())
    assert torch.isfinite(_run(DeployModule(unplanted, "fp16"), x[:2])["logits"]).all()


def test_calibration_keeps_only_that_blocks_score_matmul_in_fp32(stress):
    _, folded, _, ranges = stress
    assert choose_islands(folded, ranges, "fp16") == [Island(ATTN, "scores", round(ranges.scores[ATTN], 1))]
    assert choose_islands(folded, ranges, "bf16") == []  # fp32's exponent range


def test_the_score_island_makes_fp16_pass_at_a_fraction_of_the_attentions_cost(stress):
    model, folded, x, ranges = stress
    (island,) = choose_islands(folded, ranges, "fp16")
    module = DeployModule(folded, "fp16", fp32_scores=[island.module])
    attn = module.model.get_submodule(ATTN)
    assert attn.scores_fp32 and attn.qkv.weight.dtype == torch.float16  # not an Fp32Island
    assert [n for n, m in module.model.named_modules() if getattr(m, "scores_fp32", False)] == [ATTN]
    assert not folded.backbone.blocks[BLOCK].attn.scores_fp32  # the caller's model is untouched
    ref, out = _run(DeployModule(model, "fp32"), x), _run(module, x)
    assert torch.isfinite(out["logits"]).all()
    rows = compare({k: v.numpy() for k, v in ref.items()}, {k: v.numpy() for k, v in out.items()}, "32", "seg",
                   "fp16")
    assert all(r.passed for r in rows), rows
    flops = matmul_flops(folded, x[:1])
    share = fp32_flop_share(flops, [island])
    assert share == pytest.approx(flops[f"{ATTN}.scores"] / sum(flops.values()))
    assert 0 < share < fp32_flop_share(flops, [ATTN]) / 4  # qkv, proj and softmax @ v stay fp16


def test_scores_islands_are_attention_modules_and_fold_into_wider_islands(stress):
    _, folded, _, _ = stress
    with pytest.raises(DeployError, match=r"fp32 scores island 'backbone\.blocks\.0\.mlp' is not an attention"):
        DeployModule(folded, "fp16", fp32_scores=[f"backbone.blocks.{BLOCK}.mlp"])
    wide = DeployModule(folded, "fp16", fp32_islands=[f"backbone.blocks.{BLOCK}"], fp32_scores=[ATTN])
    assert wide.fp32_scores == [] and isinstance(wide.model.backbone.blocks[BLOCK], Fp32Island)
    assert DeployModule(folded, "fp32", fp32_scores=[ATTN]).fp32_scores == []


def _fp32_matmuls(path) -> list[onnx.NodeProto]:
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    return [n for n in g.node if n.op_type == "MatMul" and types.get(n.input[0]) == onnx.TensorProto.FLOAT]


def test_the_graph_has_one_fp32_matmul_the_planted_blocks_scores(stress, tmp_path):
    """Through the Python API (DeployModule -> export_onnx), as the export pipeline builds it."""
    _, folded, _, ranges = stress
    islands = choose_islands(folded, ranges, "fp16")
    module = DeployModule(folded, "fp16", fp32_scores=[i.module for i in islands if i.reason == "scores"])
    shapes = ShapeSpec(DimRange(1, 1, 1), DimRange(SIZE, SIZE, SIZE), DimRange(SIZE, SIZE, SIZE), 16)
    export_onnx(module, tmp_path / "m.onnx", shapes)
    ensure_clean(tmp_path / "m.onnx", "fp16", shapes, fp32_ops=len(islands))  # softmax fed fp32, one fp32 MatMul
    (mm,) = _fp32_matmuls(tmp_path / "m.onnx")
    weights = {i.name for i in onnx.load(str(tmp_path / "m.onnx")).graph.initializer}
    assert not set(mm.input) & weights  # activations: q @ k^T, not a Linear
    assert any(s.endswith(ATTN) for s in node_scopes(mm)), node_scopes(mm)


def test_an_fp16_export_records_the_score_island_and_keeps_only_its_matmul_fp32(tmp_path):
    torch.save(planted("features").backbone.state_dict(), tmp_path / "w.pth")
    out = tmp_path / "art"
    runner = CliRunner()
    res = runner.invoke(cli, ["export", "--task", "features", "--model", "vit_tiny_test", "--weights",
                              str(tmp_path / "w.pth"), "--precision", "fp16", "--static", f"{SIZE}x{SIZE}",
                              "--batch", "1", "-o", str(out)])
    assert res.exit_code == 0, res.output
    manifest = load_artifact(out).manifest
    (island,) = manifest.fp32_islands
    assert (island.module, island.reason) == (ATTN, "scores") and island.absmax > FP16_MAX
    (mm,) = _fp32_matmuls(out / manifest.onnx.file)
    assert any(s.endswith(ATTN) for s in node_scopes(mm))
    assert f"{ATTN} (scores, max |q.k|" in runner.invoke(cli, ["inspect", str(out)]).output
    module = DeployModule.for_artifact(planted("features"), "fp16", manifest)
    assert module.fp32_scores == [ATTN]


def test_scores_are_measured_in_chunks_to_the_same_maximum(stress, monkeypatch):
    """Calibration never holds a whole [B, heads, N, N] score tensor (gigabytes at seg resolutions):
    it walks heads and query chunks, and the maximum is the same as the whole tensor's."""
    import dinov3_deploy.export.calibration as calibration

    _, folded, x, ranges = stress
    monkeypatch.setattr(calibration, "SCORE_ROWS", 5)  # 16 tokens + class/storage: several uneven chunks
    chunked = record_maxima(folded, x)
    assert chunked.scores == ranges.scores
    attn = folded.backbone.blocks[BLOCK].attn
    seen = {}

    def grab(m, args, kwargs) -> None:  # a pre-hook returning something would replace the arguments
        seen.setdefault("qk", m.heads(*args, **kwargs)[:2])

    hook = attn.register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        folded(x[:2])
    hook.remove()
    q, k = seen["qk"]
    whole = float(((q * attn.scale) @ k.transpose(-2, -1)).abs().max())
    assert ranges.scores[ATTN] >= whole and ranges.scores[ATTN] > FP16_MAX
