"""ONNX export of a model built with attn_impl="triton": the custom op becomes standard ops for the
qkv split + RoPE around one `dinov3_deploy.attention` node, the node TensorRT's ONNX parser maps
to the `dinov3_deploy::attention` plugin (engines/plugins.py)."""

import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first triton import

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from dinov3_deploy.engines.plugins import onnx_translation_table  # noqa: E402
from dinov3_deploy.reference.factory import create_backbone  # noqa: E402


class Patches(torch.nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        return self.backbone.forward_features(x)["x_norm_patchtokens"]


@pytest.fixture(scope="module")
def models():
    tri = create_backbone("vit_tiny_test", attn_impl="triton")
    ref = create_backbone("vit_tiny_test", attn_impl="sdpa")
    ref.load_state_dict(tri.state_dict())
    return Patches(tri).eval(), Patches(ref).eval()


def _export(model, x, path, plugin):
    torch.onnx.export(model, (x,), str(path), dynamo=True, custom_translation_table=onnx_translation_table(plugin))
    return onnx.load(str(path))


def test_export_emits_one_plugin_node_per_block(models, tmp_path):
    tri, _ = models
    g = _export(tri, torch.randn(1, 3, 48, 32), tmp_path / "plugin.onnx", plugin=True)
    nodes = [n for n in g.graph.node if n.domain == "dinov3_deploy"]
    assert len(nodes) == len(tri.backbone.blocks)
    for n in nodes:
        attrs = {a.name: a.s.decode() if a.type == onnx.AttributeProto.STRING else a.i for a in n.attribute}
        assert n.op_type == "attention" and len(n.input) == 3 and len(n.output) == 1
        assert attrs == {"plugin_namespace": "dinov3_deploy", "plugin_version": "1", "aot": 1}
    assert {o.domain: o.version for o in g.opset_import}["dinov3_deploy"] == 1


def test_translation_matches_the_reference_in_onnxruntime(models, tmp_path):
    """With standard-op attention in place of the plugin node, ONNX Runtime reproduces the sdpa
    model: the split, the RoPE (prefix tokens untouched) and the output layout are right."""
    tri, ref = models
    x = torch.randn(2, 3, 48, 32)
    path = tmp_path / "std.onnx"
    g = _export(tri, x, path, plugin=False)
    assert not [n for n in g.graph.node if n.domain == "dinov3_deploy"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = ref(x).numpy()
    np.testing.assert_allclose(out, expected, atol=2e-5, rtol=1e-4)
