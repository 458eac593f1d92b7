"""Export folds LayerScale / ConvNeXt gamma / head BatchNorm into the layers before them, records
the folds, and still matches the unfolded fp32 model; on weights whose raw branch outputs exceed
fp16's range (trained-like small gammas) the folded fp16 export stays finite and within bounds."""

import onnxruntime as ort
import torch
from click.testing import CliRunner
from precision_helpers import branch_absmax, synthetic_batch

from dinov3_deploy.artifact import load_artifact
from dinov3_deploy.cli import cli
from dinov3_deploy.deploy_module import DeployModule
from dinov3_deploy.export.onnx_graph import export_onnx
from dinov3_deploy.reference import create_backbone
from dinov3_deploy.reference.models.fold import fold_all
from dinov3_deploy.reference.models.task_model import HeadSpec, TaskModel
from dinov3_deploy.shapes import DimRange, ShapeSpec
from dinov3_deploy.verification.parity import compare


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
