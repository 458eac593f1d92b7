"""What the kernels' matrix products compute in: one definition, free of Triton, so the bench can
record it without importing Triton before it has chosen the interpreter."""

from __future__ import annotations

import torch


def dot_precision(dtype: torch.dtype) -> str:
    """What the kernels' `tl.dot` computes in, the one definition (kernels and bench records):
    "ieee" for fp32 inputs (never TF32: its 10-bit mantissa would cost ~1e-3 relative error), else
    the inputs' own type ("bfloat16", "float16") with fp32 accumulation."""
    return "ieee" if dtype == torch.float32 else str(dtype).removeprefix("torch.")


def dot_input_precision(dtype: torch.dtype) -> str:
    """`tl.dot(input_precision=...)` for `dot_precision(dtype)`: Triton takes "ieee" or "tf32" and
    applies it to fp32 inputs only, so low-precision inputs pass its default ("tf32"), which
    changes nothing for them."""
    return "ieee" if dot_precision(dtype) == "ieee" else "tf32"
