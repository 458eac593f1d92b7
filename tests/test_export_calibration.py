"""Calibration of low-precision exports (export/calibration.py): ranges measured on the fp32 model,
fp32 islands wrapped in explicit Casts, recorded in the manifest; and `--random-init outliers`, the
stress weights that make these checks able to fail."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from dinov3_deploy.artifact import load_artifact
from dinov3_deploy.cli import cli
from dinov3_deploy.deploy_module import DeployModule, Fp32Island
from dinov3_deploy.errors import ArtifactError, DeployError
from dinov3_deploy.export.calibration import (
    FP16_MAX,
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

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def outliers_model(backbone: str = "vit_tiny_test", task: str = "seg"):
    return ModelSource(task, backbone, init="outliers").build()


def test_random_init_outliers_is_a_recorded_reproducible_source():
    a, b = outliers_model(), ModelSource("seg", "vit_tiny_test").build()
    assert ModelSource("seg", "vit_tiny_test", init="outliers").to_manifest()["init"] == "outliers"
    again = ModelSource.from_manifest(ModelSource("seg", "vit_tiny_test", init="outliers").to_manifest()).build()
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), again.state_dict().values()))
    assert not all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(DeployError, match="--random-init"):
        ModelSource.resolve("seg", "vit_tiny_test", init="trained")


def test_calibration_images_builtin_and_from_a_folder(tmp_path):
    x = calibration_images(None, 32, 48, MEAN, STD)
    assert x.shape == (4, 3, 32, 48) and x.dtype == torch.float32 and x.std() > 0.3
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DeployError, match="--calib folder .* has no images"):
        calibration_images(tmp_path / "empty", 32, 32, MEAN, STD)
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.full((20, 30, 3), 255, np.uint8)).save(folder / "white.png")
    y = calibration_images(folder, 32, 32, MEAN, STD)
    assert y.shape == (1, 3, 32, 32)
    assert torch.allclose(y[0, :, 0, 0], (1 - torch.tensor(MEAN)) / torch.tensor(STD))


@pytest.mark.parametrize("backbone", ["vit_tiny_test", "vit_tiny_swiglu_test", "convnext_tiny_test"])
def test_outlier_ranges_need_islands_only_before_folding(backbone):
    """The unfolded stress model's raw branch outputs leave fp16 (calibration sees them); after the
    exact folds every op's output is within fp16's safe range: no fp32 islands, 0 % fp32 FLOPs."""
    model = outliers_model(backbone)
    x = calibration_images(None, 64, 64, MEAN, STD)
    raw = choose_islands(model, record_maxima(model, x), "fp16")
    assert raw and max(i.absmax for i in raw) > FP16_MAX
    assert all(i.reason == "range" for i in raw)
    folded, _ = fold_all(model)
    maxima = record_maxima(folded, x)
    assert choose_islands(folded, maxima, "fp16") == []
    assert choose_islands(model, record_maxima(model, x), "bf16") == []  # bf16 has fp32's exponent range


def test_an_island_is_fp32_between_casts_in_the_graph(tmp_path):
    model, _ = fold_all(outliers_model())
    name = "backbone.blocks.1.mlp.fc2"
    module = DeployModule(model, "fp16", fp32_islands=[name])
    island = module.model.get_submodule(name)
    assert isinstance(island, Fp32Island) and island.inner.weight.dtype == torch.float32
    assert module.model.get_submodule("backbone.blocks.0.mlp.fc2").weight.dtype == torch.float16
    x = calibration_images(None, 32, 32, MEAN, STD)[:1]
    with torch.no_grad():
        ref = dict(zip(module.output_names, DeployModule(model, "fp32")(x)))
        out = dict(zip(module.output_names, module(x)))
    rows = compare({k: v.numpy() for k, v in ref.items()}, {k: v.numpy() for k, v in out.items()}, "32", "seg", "fp16")
    assert all(r.passed for r in rows), rows
    shapes = ShapeSpec(DimRange(1, 1, 1), DimRange(32, 32, 32), DimRange(32, 32, 32), 16)
    export_onnx(module, tmp_path / "m.onnx", shapes)
    g = onnx.load(str(tmp_path / "m.onnx")).graph
    fp32_weights = {i.name for i in g.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2}
    producers = {o: n for n in g.node for o in n.output}
    fp32_matmuls = [n for n in g.node if n.op_type in ("MatMul", "Gemm") and set(n.input) & fp32_weights]
    assert len(fp32_matmuls) == 1  # the island, and only it
    (mm,) = fp32_matmuls
    activation = next(i for i in mm.input if i not in fp32_weights)
    assert producers[activation].op_type == "Cast"  # fp16 -> fp32 into the island
    flops = matmul_flops(model, x)
    share = flops[name] / sum(flops.values())
    assert 0 < share < 0.2


def test_fp16_export_of_outlier_weights_passes_and_records_islands(tmp_path):
    out = tmp_path / "art"
    runner = CliRunner()
    res = runner.invoke(cli, ["export", "--model", "vit_tiny_test", "--task", "seg", "--precision", "fp16",
                              "--random-init", "outliers", "--height", "32:32:64", "--batch", "1:1:2",
                              "-o", str(out)])
    assert res.exit_code == 0, res.output
    m = load_artifact(out).manifest
    assert m.source["init"] == "outliers" and m.fp32_islands == []
    assert "fp32 islands" in runner.invoke(cli, ["inspect", str(out)]).output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(cli, ["export", "--model", "vit_tiny_test", "--precision", "fp16", "--calib", str(empty),
                              "--height", "32", "--batch", "1", "--no-verify", "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--calib folder" in res.output


def _scale_hidden_(first: torch.nn.Linear, rows: slice, second: torch.nn.Linear, k: float) -> None:
    """Output rows `rows` of `first` times k, the matching input columns of `second` divided by k: the
    same function when what lies between is linear in those channels (SwiGLU's w2 -> product -> w3;
    the attention's v -> softmax-weighted sum -> proj), while `first`'s output and `second`'s input
    grow k-fold: trained weights with a hidden channel of large scale."""
    with torch.no_grad():
        first.weight[rows] *= k
        first.bias[rows] *= k
        second.weight[:, rows] /= k


@pytest.mark.parametrize(("backbone", "island"), [("vit_tiny_swiglu_test", "mlp"), ("vit_tiny_test", "attn")])
def test_an_island_whose_output_fp16_cannot_hold_is_widened(backbone, island):
    """An island's output is cast back to fp16: keeping only the linear whose output overflows in fp32
    would still put inf into the graph. Calibration widens the island to the module around it
    (SwiGLU FFN, attention) whose output is in range; the fp16 module then passes."""
    model, _ = fold_all(outliers_model(backbone))
    block = model.backbone.blocks[1]
    dim = model.backbone.embed_dim
    if island == "mlp":
        _scale_hidden_(block.mlp.w2, slice(0, 8), block.mlp.w3, 3e4)
        linear = "backbone.blocks.1.mlp.w2"
    else:  # v is the last third of qkv's output
        _scale_hidden_(block.attn.qkv, slice(2 * dim, 2 * dim + 8), block.attn.proj, 3e4)
        linear = "backbone.blocks.1.attn.qkv"
    x = calibration_images(None, 32, 32, MEAN, STD)
    ranges = record_maxima(model, x)
    assert ranges.outputs[linear] > FP16_MAX  # the linear alone cannot be the island
    islands = choose_islands(model, ranges, "fp16")
    assert [i.module for i in islands] == [f"backbone.blocks.1.{island}"]
    with torch.no_grad():
        ref = dict(zip(["logits"], DeployModule(model, "fp32")(x[:2])))
        narrow = DeployModule(model, "fp16", fp32_islands=[linear])(x[:2])
        wide_module = DeployModule(model, "fp16", fp32_islands=[i.module for i in islands])
        wide = dict(zip(["logits"], wide_module(x[:2])))
    assert not torch.isfinite(narrow[0]).all()
    rows = compare({k: v.numpy() for k, v in ref.items()}, {k: v.numpy() for k, v in wide.items()}, "32", "seg",
                   "fp16")
    assert all(r.passed for r in rows), rows
    share = fp32_flop_share(matmul_flops(model, x[:1]), [i.module for i in islands])
    assert 0 < share < 0.2


def test_an_attention_island_exports(tmp_path):
    """A widened attention island takes RoPE's fp16 tables beside an fp32 activation (Fp32Island casts
    tensor arguments, not the tuple): the graph still exports and checks, with its fp32 MatMuls."""
    model, _ = fold_all(outliers_model())
    module = DeployModule(model, "fp16", fp32_islands=["backbone.blocks.1.attn"])
    shapes = ShapeSpec(DimRange(1, 1, 1), DimRange(32, 32, 32), DimRange(32, 32, 32), 16)
    export_onnx(module, tmp_path / "m.onnx", shapes)
    onnx.checker.check_model(str(tmp_path / "m.onnx"), full_check=True)
    g = onnx.load(str(tmp_path / "m.onnx")).graph
    fp32_weights = {i.name for i in g.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2}
    assert len([n for n in g.node if n.op_type in ("MatMul", "Gemm") and set(n.input) & fp32_weights]) == 2
    # the export's graph check allows exactly the island's fp32 ops: qkv, q.k, softmax @ v, proj
    assert module.fp32_compute_ops() == 4
    ensure_clean(tmp_path / "m.onnx", "fp16", shapes, fp32_ops=module.fp32_compute_ops())
    with pytest.raises(ArtifactError, match="4 MatMul/Conv still run in float32"):
        ensure_clean(tmp_path / "m.onnx", "fp16", shapes, fp32_ops=3)


def test_a_residual_stream_fp16_cannot_hold_is_a_clear_error_or_an_fp32_stream():
    """Massive residual activations past fp16's range live between blocks, where no module output is
    measured and no island helps (its output is cast back to fp16). Without an fp32 stream the export
    must refuse fp16, name the place and the measured value, and point at bf16; a ViT holds the
    stream (and the tokens it starts from) in fp32 instead, and its fp16 graph passes."""
    model, _ = fold_all(outliers_model())
    tokens = model.backbone.storage_tokens
    with torch.no_grad():
        tokens[tokens.abs() > 1e3] *= 4  # the outliers init's 1e4..3e4 channels -> 4e4..1.2e5
    x = calibration_images(None, 32, 32, MEAN, STD)
    ranges = record_maxima(model, x)
    assert max(v for n, v in ranges.outputs.items() if n.endswith(("qkv", "proj", "fc1", "fc2"))) < FP16_MAX / 8
    with pytest.raises(DeployError, match=r"residual stream at backbone\.blocks\.\d (input|mid|output) "
                                          r"\(measured max \|x\| .*--precision bf16"):
        choose_islands(model, ranges, "fp16")
    assert choose_islands(model, ranges, "bf16") == []
    with torch.no_grad():
        fp16 = DeployModule(model, "fp16")(x[:1])
        bf16 = DeployModule(model, "bf16")(x[:1])
    assert not torch.isfinite(fp16[0]).all() and torch.isfinite(bf16[0]).all()
    islands = choose_islands(model, ranges, "fp16", residual_fp32=True)
    assert islands[0].module == "backbone.blocks" and islands[0].reason == "residual"
    assert islands[0].absmax > FP16_MAX / 2
    with torch.no_grad():
        ref = DeployModule(model, "fp32")(x[:1])
        held = DeployModule(model, "fp16", fp32_islands=[i.module for i in islands[1:]], residual_fp32=True)(x[:1])
    for r, o in zip(ref, held):
        assert torch.isfinite(o).all()
        assert float((o - r).norm() / r.norm()) <= 2e-2


def test_a_residual_stream_fp16_holds_is_accepted():
    """The outliers init's massive channels (1e4..3e4) are under FP16_HOLD: measured, and no island."""
    model, _ = fold_all(outliers_model())
    ranges = record_maxima(model, calibration_images(None, 32, 32, MEAN, STD))
    assert 1e4 < max(ranges.stream.values()) < FP16_MAX / 2
    assert {k.rsplit(" ", 1)[1] for k in ranges.stream} == {"input", "mid", "output"}
    assert choose_islands(model, ranges, "fp16") == []
