"""Export folds LayerScale / ConvNeXt gamma / head BatchNorm into the layers before them, records
the folds, and still matches the unfolded fp32 model; on weights whose raw branch outputs exceed
fp16's range (trained-like small gammas) the folded fp16 export stays finite and within bounds."""

import copy

import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from precision_helpers import branch_absmax, rel_err, synthetic_batch, synthetic_pixels

from dinov3_deploy.artifact import load_artifact
from dinov3_deploy.cli import cli
from dinov3_deploy.deploy_module import DeployModule
from dinov3_deploy.errors import DeployError
from dinov3_deploy.export.onnx_graph import export_onnx
from dinov3_deploy.reference import create_backbone
from dinov3_deploy.reference.models.fold import fold_all
from dinov3_deploy.reference.models.random_init import release_like_
from dinov3_deploy.reference.models.task_model import HeadSpec, TaskModel
from dinov3_deploy.shapes import DimRange, ShapeSpec
from dinov3_deploy.verification.parity import compare

EXACT = 1e-6


def test_export_records_folds_and_inspect_shows_them(tmp_path):
    out = tmp_path / "art"
    runner = CliRunner()
    res = runner.invoke(cli, ["export", "--model", "vit_tiny_test", "--task", "seg", "--height", "32:32:64",
                              "--batch", "1:1:2", "-o", str(out)])
    assert res.exit_code == 0, res.output
    folds = load_artifact(out).manifest.folds
    kinds = [f.kind for f in folds]
    assert kinds.count("layerscale") == 2 * 4 and kinds.count("batchnorm") == 1  # 4 blocks x (ls1, ls2); the head
    assert {f.target for f in folds if f.kind == "layerscale"} >= {"backbone.blocks.0.attn.proj",
                                                                   "backbone.blocks.0.mlp.fc2"}
    res = runner.invoke(cli, ["inspect", str(out)])
    assert "8 layerscale" in res.output and "1 batchnorm" in res.output


def _ort_outputs(module, path, x):
    shapes = ShapeSpec(DimRange(1, 1, 1), DimRange(64, 64, 64), DimRange(64, 64, 64), 16)
    export_onnx(module, path, shapes)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))


@torch.no_grad()
def _torch_outputs(module, x):
    return {n: o.float().numpy() for n, o in zip(module.output_names, module(torch.from_numpy(x)))}


def test_folded_fp16_survives_outlier_weights(tmp_path):
    """The discriminating run is PyTorch's fp16 (every op's output really is fp16). ONNX Runtime's
    CPU provider runs most fp16 nodes through inserted fp32 casts, so it cannot show the overflow;
    it checks that the folded fp16 graph exports and matches."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        backbone = create_backbone("vit_tiny_test", init="outliers")
        model = TaskModel(backbone, HeadSpec(task="seg", backbone="vit_tiny_test", n_classes=4)).eval()
    x = synthetic_batch(64, 64, n=1).numpy()  # photograph-like: the verifier's inputs
    assert max(branch_absmax(backbone, torch.from_numpy(x)).values()) > 65504  # raw branches overflow fp16
    ref = _torch_outputs(DeployModule(model, "fp32"), x)
    folded_model, folds = fold_all(model)
    assert folds
    naive = compare(ref, _torch_outputs(DeployModule(model, "fp16"), x), "64x64", "seg", "fp16")
    good = compare(ref, _torch_outputs(DeployModule(folded_model, "fp16"), x), "64x64", "seg", "fp16")
    assert not all(r.passed for r in naive)  # the stress is real: unfolded fp16 overflows
    assert all(r.passed for r in good), good
    onnx_out = _ort_outputs(DeployModule(folded_model, "fp16"), tmp_path / "folded.onnx", x)
    assert all(r.passed for r in compare(ref, onnx_out, "64x64", "seg", "fp16"))


def _pixels_nhwc(height: int = 64, width: int = 64, n: int = 2) -> torch.Tensor:
    return synthetic_pixels(height, width, n).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


@pytest.mark.parametrize("task", ["features", "seg"])
@pytest.mark.parametrize("name", ["vit_tiny_test", "convnext_tiny_test"])
def test_uint8_normalization_fold_matches_the_unfolded_module(name, task):
    """--uint8-input with the normalisation folded into the first conv computes what the module that
    normalises in the graph does, in fp32. Both are fp32 roundings of one float64 function: the
    folded module is within EXACT of it, and no further from it than the unfolded module. Measured
    (release-like): folded 3e-7..8e-7 from float64, unfolded 4e-7..8e-7; so the two fp32 modules
    differ by up to 1.2e-6 (ViT patch tokens; ConvNeXt <= 8e-7). Without the fold's centring
    (fold.PIXEL_CENTRE) the folded ViT was 1.2e-6..1.7e-6 from float64, 2.3x the unfolded."""
    torch.manual_seed(0)
    backbone = create_backbone(name, init="release-like")
    model = TaskModel(backbone, HeadSpec(task=task, backbone=name, **({"n_classes": 5} if task == "seg" else {})))
    if model.head is not None:
        torch.manual_seed(1)
        release_like_(model.head)  # non-trivial BatchNorm statistics
    model.eval()
    mean, std = tuple(model.spec.mean), tuple(model.spec.std)
    folded, folds = fold_all(model, normalization=(mean, std))
    assert [f.kind for f in folds].count("normalization") == 1
    plain = DeployModule(model, "fp32", uint8_input=True)
    fused = DeployModule(folded, "fp32", uint8_input=True, normalization_folded=True)
    px = _pixels_nhwc()
    with torch.no_grad():
        ref, out = plain(px), fused(px)
        x64 = px.double().permute(0, 3, 1, 2) / 255
        x64 = (x64 - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
            std, dtype=torch.float64).view(1, 3, 1, 1)
        truth = copy.deepcopy(model).double()(x64)
    for n, r, o in zip(plain.output_names, ref, out):
        if not r.numel():
            continue
        exact, own = rel_err(o, truth[n]), rel_err(r, truth[n])  # the folded / unfolded module's rounding
        assert exact <= EXACT and exact <= 1.25 * own, (n, exact, own)
        assert rel_err(o, r) <= 2 * EXACT, (n, rel_err(o, r))
    with pytest.raises(DeployError, match="--uint8-input"):
        DeployModule(folded, "fp32", normalization_folded=True)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_uint8_normalization_fold_costs_no_low_precision_accuracy(precision):
    """The fold's centring (fold.PIXEL_CENTRE) keeps the folded conv from summing all-positive pixels
    into a value its bias then cancels: in fp16/bf16 the folded module is as close to fp32 as the
    unfolded one (measured without the centring, bf16: 1.6e-2 vs 1.2e-2)."""
    torch.manual_seed(0)
    model = TaskModel(create_backbone("vit_tiny_test", init="release-like"),
                      HeadSpec(task="features", backbone="vit_tiny_test")).eval()
    folded, _ = fold_all(model, normalization=(tuple(model.spec.mean), tuple(model.spec.std)))
    px = _pixels_nhwc()
    with torch.no_grad():
        ref = DeployModule(model, "fp32", uint8_input=True)(px)
        plain = DeployModule(model, precision, uint8_input=True)(px)
        fused = DeployModule(folded, precision, uint8_input=True, normalization_folded=True)(px)
    for r, p, f in zip(ref, plain, fused):
        if r.numel():
            assert rel_err(f, r) <= 1.15 * rel_err(p, r), (rel_err(f, r), rel_err(p, r))
