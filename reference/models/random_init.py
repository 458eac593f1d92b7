"""Random weights that exercise the numerics like trained ones.

The training initialisation (LayerScale 1e-5, LayerNorm 1/0, BatchNorm running stats 0/1) makes
a random network almost the identity around each residual: attention and FFN contribute ~1e-5 of
the signal, so an fp16 or wrong-attention export would still "pass" parity. Deployment demos and
parity checks with no weights on disk use this initialisation instead: LayerScale and ConvNeXt
gammas of the order trained DINOv3 models carry (0.05-0.6), linear layers scaled to keep unit
signal (so q.k spans a few units and attention is peaked, RoPE matters), non-trivial norm affines
and BatchNorm statistics. It draws from torch's global RNG (callers seed or fork it).

"outliers" is release-like plus the two features of trained weights that break low-precision
deployment, so that folds and precision choices can be tested without trained weights:
  - Tiny LayerScale gammas. Trained DINOv3 gammas start at 1e-5 and some channels stay there, so
    the raw output of the linear before a LayerScale (attn.proj, mlp.fc2, SwiGLU w3) is large while
    the residual update it becomes is small; in fp16 that raw output overflows (65504) and the
    model turns inf/NaN. Here every gamma channel is redrawn log-uniformly between the family's
    LayerScale init (ViT 1e-5, ConvNeXt 1e-6: where channels that training hardly moves stay) and
    its release-like value g, and that linear's output row is multiplied by g / gamma: each block
    computes exactly the function of the release-like block (up to fp32 rounding) while its raw
    branch output grows by up to 0.6 / 1e-5 = 6e4 (ConvNeXt 6e5) on some channels, past 65504 on
    ordinary inputs. The redraw stops where a weight would pass 2^15, so the weights themselves
    stay finite in fp16 (with trained weights the overflow is in the activations, a sum over the
    fan-in, not in the cast). ConvNeXt gets the same on its block gamma and pwconv2; its floor is
    1e-6 because with 1e-5 its unit-scale branch outputs mostly stay just under 65504.
  - Massive activations. Trained ViTs carry a few residual channels at hundreds to thousands of
    times the median, in a few tokens (registers or low-information patches), nearly constant over
    inputs, set up in an early block and carried unchanged after it. Here two channels of every
    storage (register) token carry 1e4..3e4 (random sign) from the input on. Per token, so the
    other tokens' LayerNorm statistics are untouched (a bias on every token would make every
    LayerNorm output that channel alone); below fp16's limit and far below fp32's for the squared
    sums of LayerNorm statistics, as in real models, where such values are harmless once those
    statistics stay fp32."""

from __future__ import annotations

import math

import torch
from torch import nn

from .fold import scale_output_rows_, scaled_branches
from .layers import LayerScale

INITS = ("train", "release-like", "outliers")

# Smallest gamma of the outliers init: the release's LayerScale init of each family, where channels
# that training hardly moves stay (configs.py: ViT 1e-5, ConvNeXt 1e-6).
OUTLIER_MIN_GAMMA = {"vit": 1e-5, "convnext": 1e-6}
# Largest |weight| the compensation may create: finite in fp16 with room, so an fp16 model's inf
# comes from its activations (a sum over the fan-in), as with trained weights, not from the cast.
MAX_WEIGHT = 2.0**15
MASSIVE_RANGE = (1e4, 3e4)  # |value| of the massive residual channels
MASSIVE_CHANNELS = 2  # how many channels of the storage tokens carry one


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


@torch.no_grad()
def outliers_(module: nn.Module) -> nn.Module:
    """Release-like weights with trained-like numerical outliers (module docstring): tiny gammas
    compensated in the linear before them, and massive channels in the storage tokens."""
    release_like_(module)
    for _, linear, _, owner in scaled_branches(module):
        g = owner.gamma
        floor = OUTLIER_MIN_GAMMA["vit" if isinstance(owner, LayerScale) else "convnext"]
        # Row c of the linear grows by g/gamma: keep it under MAX_WEIGHT.
        row_max = linear.weight.abs().amax(dim=1)
        lo = torch.log(torch.clamp(g * row_max / MAX_WEIGHT, min=floor).minimum(g))
        new = torch.exp(lo + torch.rand_like(g) * (torch.log(g) - lo))
        scale_output_rows_(linear, g / new)
        g.copy_(new)
    for m in module.modules():
        tokens = getattr(m, "storage_tokens", None)
        if isinstance(tokens, nn.Parameter) and tokens.shape[1] > 0:
            D = tokens.shape[-1]
            channels = torch.randperm(D)[:MASSIVE_CHANNELS]
            lo_m, hi_m = (math.log(v) for v in MASSIVE_RANGE)
            size = torch.exp(lo_m + torch.rand(len(channels)) * (hi_m - lo_m))
            sign = torch.where(torch.rand(len(channels)) < 0.5, -1.0, 1.0)
            tokens[:, :, channels.to(tokens.device)] = (sign * size).to(tokens)
    return module


# init name -> in-place initialiser of a freshly built model ("train" is the models' own init).
APPLY_INIT = {"release-like": release_like_, "outliers": outliers_}
