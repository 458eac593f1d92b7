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
from dinov3_deploy.errors import DeployError
from dinov3_deploy.export.calibration import (
    FP16_MAX,
    calibration_images,
    choose_islands,
    matmul_flops,
    record_maxima,
)
from dinov3_deploy.export.onnx_graph import export_onnx
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
