"""Random weights that exercise the numerics like trained ones.

The training initialisation (LayerScale 1e-5, LayerNorm 1/0, BatchNorm running stats 0/1) makes
a random network almost the identity around each residual: attention and FFN contribute ~1e-5 of
the signal, so an fp16 or wrong-attention export would still "pass" parity. Deployment demos and
parity checks with no weights on disk use this initialisation instead: LayerScale and ConvNeXt
gammas of the order trained DINOv3 models carry (0.05-0.6), linear layers scaled to keep unit
signal (so q.k spans a few units and attention is peaked, RoPE matters), non-trivial norm affines
and BatchNorm statistics. It draws from torch's global RNG (callers seed or fork it)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import LayerScale

INITS = ("train", "release-like")


@torch.no_grad()
def release_like_(module: nn.Module) -> nn.Module:
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            gain = 1.5 if name.endswith("attn.qkv") else 1.0
            m.weight.normal_(0.0, gain / m.in_features**0.5)
            if m.bias is not None:
                m.bias.normal_(0.0, 0.02)
        elif isinstance(m, LayerScale):
            m.gamma.uniform_(0.05, 0.6)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            m.weight.uniform_(0.6, 1.4)
            m.bias.normal_(0.0, 0.05)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0.0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            if m.affine:
                m.weight.uniform_(0.6, 1.4)
                m.bias.normal_(0.0, 0.05)
        elif hasattr(m, "gamma") and isinstance(m.gamma, nn.Parameter):  # ConvNeXt blocks
            m.gamma.uniform_(0.05, 0.6)
    return module
