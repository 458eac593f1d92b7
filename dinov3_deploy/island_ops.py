"""How many MatMul / Conv ops the fp32 islands of a low-precision DeployModule compute, counted by
running it: what the graph check (onnx_graph.check_graph) allows in float32.

Counting the Linear / Conv modules inside an island misses what is no module and what runs twice: an
attention's projections written as F.linear and its two activation matmuls, and a head called once per
decoder layer (Mask2Former's class / mask embeddings run 10 times: 10 MatMuls each in the graph).
So the ops are counted as they are called, inside the islands' forwards, once per call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

# the torch functions that become one ONNX MatMul / Gemm / Conv each, what the graph check counts (an einsum
# stays an Einsum node, ConvTranspose is no Conv there: neither is counted on either side)
_COMPUTE_FNS = frozenset({
    F.linear, F.conv1d, F.conv2d, F.conv3d, torch.matmul, torch.mm, torch.bmm, torch.addmm, torch.baddbmm,
    torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__, F.scaled_dot_product_attention,
})


class _Fp32ComputeCounter(TorchFunctionMode):
    """Counts compute calls with a float32 tensor operand while `depth` > 0 (inside an island)."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.depth and func in _COMPUTE_FNS:
            operands = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            operands += [t for a in args if isinstance(a, list | tuple) for t in a if isinstance(t, torch.Tensor)]
            if operands and operands[0].dtype == torch.float32:
                self.count += 2 if func is F.scaled_dot_product_attention else 1  # sdpa: q.k and softmax @ v
        return func(*args, **kwargs)


@torch.no_grad()
def count_island_compute(module: nn.Module, islands: list[nn.Module], x: torch.Tensor) -> int:
    """The float32 MatMul / Conv calls inside `islands` (modules of `module`) during module(x)."""
    counter = _Fp32ComputeCounter()

    def enter(*_):
        counter.depth += 1

    def leave(*_):
        counter.depth -= 1

    hooks = [h for m in islands for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        with counter:
            module(x)
    finally:
        for h in hooks:
            h.remove()
    return counter.count
