"""CPU implementations of the TensorRT plugin nodes for ONNX's reference evaluator, so a plugin graph is
judged here (`verify`, the export's own parity) though neither ONNX Runtime nor any TensorRT on this
machine can run it.

    ReferenceEvaluator(model, new_ops=plugin_ops())

Each node computes the plain PyTorch core its kernel is tested against (the reference's), not the
kernel: what is checked is that the graph around the node (the level sizes, the value/location
layouts, the output layout the projection reads) is wired as the reference model computes, at the
node's float type (sums in fp32, as the kernel does). Whether the plugin's PTX computes the core
is the kernel's own test (tests/test_kernel_ms_deform_attn.py) and, on a GPU with full TensorRT, the
engine's parity.
"""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun

# plugin ids (engines/plugins.py) with a reference implementation here
REFERENCE_PLUGINS = ("dinov3_deploy::ms_deform_attn",)


class ms_deform_attn(OpRun):  # noqa: N801 - the evaluator looks a node up by (op_domain, class name)
    """dinov3_deploy.ms_deform_attn(value [B,S,M,Dh], level_shapes int32 [L,2], locations [B,Q,M,L,P,2],
    weights [B,Q,M,L,P]) -> [B,Q,M*Dh] in value's type."""

    op_domain = "dinov3_deploy"

    def _run(self, value, level_shapes, locations, weights, plugin_namespace=None, plugin_version=None, aot=None):
        import torch

        from dinov3_deploy.reference.models.ms_deform_attn import ms_deform_attn_core

        def t(a):  # bfloat16 (ml_dtypes) has no torch.from_numpy: widen exactly
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

        shapes = [(int(h), int(w)) for h, w in np.asarray(level_shapes).reshape(-1, 2)]
        with torch.no_grad():
            out = ms_deform_attn_core(t(value), shapes, t(locations), t(weights))
        return (out.numpy().astype(value.dtype),)


def plugin_ops() -> list[type[OpRun]]:
    """`new_ops` for onnx.reference.ReferenceEvaluator: every plugin node with a CPU implementation."""
    return [ms_deform_attn]


def unsupported_plugins(plugins: list[str]) -> list[str]:
    """The plugin ids of an artifact that the reference evaluator cannot run."""
    return [p for p in plugins if p not in REFERENCE_PLUGINS]
