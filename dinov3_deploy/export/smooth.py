"""SmoothQuant-style migration of activation range into weights, before int8 / fp8 quantization.

A quantized matmul input gets ONE scale per tensor (what TensorRT's explicit quantization and ONNX
Runtime's integer kernels take). DINOv3's linear inputs are far from uniform over channels: the
massive residual channels of the storage tokens come out of the LayerNorm as a few channels tens of
times larger than the rest, and one per-tensor scale set by them leaves the ordinary channels a
handful of int8 steps. Weights are quantized per output channel, so they can absorb a per-INPUT-
channel factor s_j that the activation gives up:

    y = (x / s) @ (s * W)        s_j = max|x_j|^alpha / max|W_j|^(1 - alpha)

exact in real arithmetic. The division by s is folded into the op that produces x, so the graph
gains no op:
  - norm1 -> attn.qkv and norm2 -> the MLP's input linear(s): into the LayerNorm's weight and bias;
  - attention output -> attn.proj: into the v rows of qkv (softmax @ v is linear in v; RoPE rotates
    only q and k, so v's channels may be scaled one by one).
The MLP's second linear (after GELU / SwiGLU's product) has no linear producer and is left as is.

Runs on the folded model (reference/models/fold.py), which the export quantizes; the unfolded fp32
model stays the verification reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

SMOOTH_ALPHA = 0.5  # the SmoothQuant paper's balance between activation and weight range
MIN_SCALE = 1e-2  # bound the migration: a channel that never fires should not blow up its weights


@dataclass(frozen=True)
class Migration:
    """One smoothed matmul input: the linears that take it, what produces it, and the largest
    factor moved into their weights."""

    linears: tuple[str, ...]
    producer: str
    max_factor: float

    def to_dict(self) -> dict:
        return {"linears": list(self.linears), "producer": self.producer, "max_factor": self.max_factor}


def _pairs(model: nn.Module) -> list[tuple[str, nn.Module, list[tuple[str, nn.Linear]]]]:
    """(producer name, producer, [(linear name, linear)]) for every foldable linear input."""
    from dinov3_deploy.reference.models.layers.block import SelfAttentionBlock

    pairs = []
    for name, block in model.named_modules():
        if not isinstance(block, SelfAttentionBlock):
            continue
        pairs.append((f"{name}.norm1", block.norm1, [(f"{name}.attn.qkv", block.attn.qkv)]))
        ffn = block.mlp
        first = [n for n in ("fc1", "w1", "w2") if hasattr(ffn, n)]
        pairs.append((f"{name}.norm2", block.norm2, [(f"{name}.mlp.{n}", getattr(ffn, n)) for n in first]))
        pairs.append((f"{name}.attn.qkv[v]", block.attn, [(f"{name}.attn.proj", block.attn.proj)]))
    return pairs


@torch.no_grad()
def input_channel_absmax(model: nn.Module, x: torch.Tensor, linears: dict[str, nn.Linear]) -> dict[str, torch.Tensor]:
    """max |input| per input channel of each named linear, over the images x (one at a time)."""
    seen: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(_m, inputs):
            a = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0)
            seen[name] = a if name not in seen else torch.maximum(seen[name], a)
        return record

    hooks = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    try:
        for i in range(len(x)):
            model(x[i:i + 1])
    finally:
        for h in hooks:
            h.remove()
    return seen


@torch.no_grad()
def smooth_(model: nn.Module, x: torch.Tensor, alpha: float = SMOOTH_ALPHA) -> list[Migration]:
    """Migrate activation range into the weights of every foldable linear input (module docstring),
    in place, measured on the calibration images x. Returns what was moved."""
    pairs = _pairs(model)
    linears = {n: lin for _, _, group in pairs for n, lin in group}
    amax = input_channel_absmax(model, x, linears)
    done = []
    for producer_name, producer, group in pairs:
        act = torch.stack([amax[n] for n, _ in group]).amax(0)
        wmax = torch.stack([lin.weight.abs().amax(0) for _, lin in group]).amax(0)
        s = (act.clamp(min=1e-8) ** alpha / wmax.clamp(min=1e-8) ** (1 - alpha)).clamp(min=MIN_SCALE)
        s = torch.where(act > 0, s, torch.ones_like(s))
        if isinstance(producer, nn.LayerNorm):
            producer.weight.div_(s)
            if producer.bias is not None:
                producer.bias.div_(s)
        else:  # the attention: scale v's output rows of qkv (the last third)
            qkv = producer.qkv
            d = qkv.out_features // 3
            qkv.weight[2 * d:].div_(s[:, None])
            if qkv.bias is not None:
                qkv.bias[2 * d:].div_(s)
        for _, lin in group:
            lin.weight.mul_(s[None, :])
        done.append(Migration(tuple(n for n, _ in group), producer_name.replace("[v]", ""), float(s.max())))
    return done
