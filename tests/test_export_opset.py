"""`--opset`: bf16 graphs at opsets without bf16 Conv (TensorRT 10.0 parses opsets 9-20). Patchify
convs (ViT patch embedding, ConvNeXt stem/downsampling, 1x1) become reshape + MatMul, exact in
fp32; the other convs stay fp32 islands, recorded in the manifest with reason "opset"."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from dinov3_deploy.artifact import load_artifact
from dinov3_deploy.cli import cli
from dinov3_deploy.deploy_module import DeployModule, Fp32Island, PatchMatMul, is_patchify
from dinov3_deploy.errors import DeployError
from dinov3_deploy.model_source import ModelSource


@pytest.mark.parametrize(("cin", "cout", "k"), [(3, 24, 16), (3, 16, 4), (16, 32, 2), (32, 5, 1)])
def test_patch_matmul_is_the_conv_in_fp32(cin, cout, k):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, stride=k).eval()
    assert is_patchify(conv)
    x = torch.randn(2, cin, 4 * k, 6 * k)
    with torch.no_grad():
        want, got = conv(x), PatchMatMul(conv)(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not is_patchify(nn.Conv2d(8, 8, 7, padding=3, groups=8))
    assert not is_patchify(nn.Conv2d(8, 8, 3, stride=1))


def test_bf16_below_opset_22_rewrites_convs_and_keeps_the_function():
    vit = ModelSource("seg", "vit_tiny_test", n_classes=4).build()
    m20 = DeployModule(vit, "bf16", opset=20)
    assert isinstance(m20.model.backbone.patch_embed.proj, PatchMatMul) and m20.opset_islands == []
    assert isinstance(DeployModule(vit, "bf16", opset=22).model.backbone.patch_embed.proj, nn.Conv2d)
    assert isinstance(DeployModule(vit, "fp16", opset=20).model.backbone.patch_embed.proj, nn.Conv2d)
    cnx = ModelSource("seg", "convnext_tiny_test", n_classes=4).build()
    c20 = DeployModule(cnx, "bf16", opset=20)
    assert c20.opset_islands and all(n.endswith(".dwconv") for n in c20.opset_islands)
    assert all(isinstance(c20.model.get_submodule(n), Fp32Island) for n in c20.opset_islands)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for model in (vit, cnx):
            a = DeployModule(model, "bf16", opset=22)(x)[0].float()
            b = DeployModule(model, "bf16", opset=20)(x)[0].float()
            ref = DeployModule(model, "fp32")(x)[0]
            err_a = (a - ref).norm() / ref.norm()
            err_b = (b - ref).norm() / ref.norm()
            assert err_b < max(2 * err_a, 1e-2), (err_a, err_b)
    with pytest.raises(DeployError, match="--opset must be 18..22"):
        DeployModule(vit, "bf16", opset=17)


def test_cli_bf16_opset_20_records_opset_islands(tmp_path):
    out = tmp_path / "art"
    runner = CliRunner()
    res = runner.invoke(cli, ["export", "--model", "convnext_tiny_test", "--task", "seg", "--precision", "bf16",
                              "--opset", "20", "--height", "64", "--batch", "1", "--no-verify", "-o", str(out)])
    assert res.exit_code == 0, res.output
    m = load_artifact(out).manifest
    assert m.onnx.opset == 20 and m.onnx.graph.opset == 20
    opset = [i for i in m.fp32_islands if i.reason == "opset"]
    assert opset and all(i.module.endswith(".dwconv") and i.absmax is None for i in opset)
    assert "dwconv (opset)" in runner.invoke(cli, ["inspect", str(out)]).output
