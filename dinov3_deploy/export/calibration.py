"""Calibration for low-precision exports: run the fp32 model (as exported: folded) on calibration
images, record the absolute maximum of what the low-precision graph would hold, and pick the modules
to keep in fp32 ("islands") because their output, or the accumulation that produces it, would
leave fp16's safe range.

    x = calibration_images(None, 64, 64, mean, std)      # built-in synthetic images (or --calib DIR)
    ranges = record_maxima(model, x)                      # module outputs, linear inputs, residual stream, scores
    islands = choose_islands(model, ranges, "fp16")       # [Island("backbone.blocks.0.mlp.fc2", "range", 9e4)]

Hooks on modules, not maxima of the ONNX graph's intermediate tensors: an island is applied by
DeployModule as a module wrapped in casts (the graph shows Cast -> fp32 op -> Cast), so the unit we
measure is the unit we can keep in fp32, with its module name, and no extra export is needed.

Two limits, because an fp16 graph fails in two ways:
  - accumulation (FP16_SAFE): a linear / conv whose output nears 65504 adds partial sums that may go
    further; it becomes an island (fp32 weights and accumulation);
  - holding (FP16_HOLD): every tensor between ops is fp16, an island's own output included (it is
    cast back). An island whose output, or a linear whose input (SwiGLU's product, GELU's output,
    the attention output), passes FP16_HOLD is widened to the module around it (mlp, attn) until
    the island's output is in range. The residual stream (each block's input, ViT's mid-block sum
    x + attn, each block's output) is held in fp16 between blocks and no island can change that
    short of making every block fp32: past FP16_HOLD the export fails with a DeployError that says
    where, how large, and to use bf16 or fp32.

The attention scores q*scale @ k^T are the one matmul that is not a module: calibration computes them
in fp32 from each attention's inputs (SelfAttention.heads) and, where they pass FP16_SAFE, keeps only
that matmul in fp32 (reason "scores": SelfAttention.scores_fp32; the softmax is fp32 anyway), not the
whole attention, whose qkv and proj are most of its FLOPs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dinov3_deploy.errors import DeployError

FP16_MAX = 65504.0
# Margin: an output within 1/8 of fp16's largest value is too close (other inputs go further, and
# the dot products that make it add partial sums that may be larger than the result).
FP16_SAFE = FP16_MAX / 8
# Margin for a value held, not accumulated: other images may go further (trained massive residual
# activations reach thousands, fp16 holds them; the outliers init carries 1e4..3e4, below this).
FP16_HOLD = FP16_MAX / 2
SCORE_ROWS = 1024  # queries per chunk when calibration measures attention scores
CALIB_IMAGES = 4  # built-in synthetic images when no --calib folder is given
ISLAND_TYPES = (nn.Linear, nn.Conv2d)  # what an island can be: ops with an accumulation over a fan-in


@dataclass(frozen=True)
class Island:
    """A module kept in fp32 in a low-precision graph, and why ("range": its measured output
    `absmax` would leave fp16's safe range; "opset": no low-precision kernel at this opset; "scores":
    an attention module whose q*scale @ k^T, max |scores| `absmax`, computes in fp32, the rest not;
    "residual", "precision": pipeline.py; "sampling": a deformable-attention sampling core kept fp32 in
    bf16, deploy_module.DeployModule._sampling_fp32)."""

    module: str
    reason: str
    absmax: float | None = None

    def to_dict(self) -> dict:
        return {"module": self.module, "reason": self.reason, "absmax": self.absmax}


def calibration_images(calib: str | Path | None, height: int, width: int, mean, std,
                       n: int = CALIB_IMAGES, centred_pixels: bool = False) -> torch.Tensor:
    """Normalised fp32 NCHW images at height x width: the built-in synthetic ones, or every image
    of the folder `calib`, resized (calibration only measures ranges; the aspect does not matter).
    `centred_pixels`: the same images as `pixels - PIXEL_CENTRE`, what a model whose normalisation
    is folded into its first conv takes (reference/models/fold.py)."""
    import numpy as np

    if calib is None:
        from dinov3_deploy.reference.protocol.synthetic import make_sample

        pixels = [make_sample(1000 + i, height, width)[0] for i in range(n)]  # not the verifier's seeds
    else:
        from dinov3_deploy.reference.protocol.images import IMAGE_EXTS, is_image, read_rgb

        folder = Path(calib)
        if not folder.is_dir():
            raise DeployError(f"--calib must be a folder of images, got '{calib}'")
        files = sorted(p for p in folder.iterdir() if p.is_file() and is_image(p))
        if not files:
            raise DeployError(f"--calib folder '{calib}' has no images ({', '.join(IMAGE_EXTS)})")
        pixels = [read_rgb(p) for p in files]
    batch = []
    for image in pixels:
        t = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float()
        if t.shape[-2:] != (height, width):
            t = nn.functional.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)
        batch.append(t[0])
    if centred_pixels:
        from dinov3_deploy.reference.models.fold import PIXEL_CENTRE

        return torch.stack(batch) - PIXEL_CENTRE
    x = torch.stack(batch) / 255.0
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


@dataclass
class Ranges:
    """max |value| on the calibration images of what a low-precision graph holds: each module's
    output, each linear / conv's input, the residual stream (keys "<block> input", "<block> mid"
    for ViT's x + attn, "<block> output"), and each attention's scores q*scale @ k^T (key: the
    attention module)."""

    outputs: dict[str, float] = field(default_factory=dict)
    inputs: dict[str, float] = field(default_factory=dict)
    stream: dict[str, float] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)


def _absmax(value) -> float | None:
    tensors = [value] if isinstance(value, torch.Tensor) else (
        list(value) if isinstance(value, list | tuple) else list(value.values()) if isinstance(value, dict) else [])
    vals = [float(t.detach().abs().max()) for t in tensors
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()]
    return max(vals) if vals else None


def _residual_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules whose input and output are the residual stream: ViT blocks, ConvNeXt blocks."""
    from dinov3_deploy.reference.models.convnext import ConvNeXtBlock
    from dinov3_deploy.reference.models.layers import SelfAttentionBlock

    return [(n, m) for n, m in model.named_modules() if isinstance(m, SelfAttentionBlock | ConvNeXtBlock)]


@torch.no_grad()
def record_maxima(model: nn.Module, x: torch.Tensor, batch: int = 2) -> Ranges:
    """Ranges of the fp32 model over the images `x`."""
    from dinov3_deploy.reference.models.layers import SelfAttention, SelfAttentionBlock

    ranges = Ranges()

    def keep(table: dict[str, float], key: str, value) -> None:
        v = _absmax(value)
        if v is not None:
            table[key] = max(table.get(key, 0.0), v)

    hooks = []
    for name, m in model.named_modules():
        if name:
            hooks.append(m.register_forward_hook(lambda _m, _i, out, n=name: keep(ranges.outputs, n, out)))
        if isinstance(m, ISLAND_TYPES):
            hooks.append(m.register_forward_pre_hook(lambda _m, args, n=name: keep(ranges.inputs, n, args[0])))
    for name, block in _residual_blocks(model):
        def stream_in(at: str):
            return lambda _m, args: keep(ranges.stream, at, args[0])

        hooks.append(block.register_forward_pre_hook(stream_in(f"{name} input")))
        hooks.append(block.register_forward_hook(lambda _m, _i, out, n=name: keep(ranges.stream, f"{n} output", out)))
        if isinstance(block, SelfAttentionBlock):  # norm2 reads x + ls1(attn(norm1(x))), the mid-block sum
            hooks.append(block.norm2.register_forward_pre_hook(stream_in(f"{name} mid")))

    def scores(name: str):
        def measure(attn, args, kwargs) -> None:
            # the scores again, in fp32 (the model is), whatever impl it runs: sdpa never materialises them
            q, k, _ = attn.heads(*args, **kwargs)
            q, kt = q.float() * attn.scale, k.float().transpose(-2, -1)
            # per head and 1024 queries at a time: the whole [B, heads, N, N] would be gigabytes at the
            # resolutions seg deploys at (2048x1024 with ViT-L: 8197 tokens, 16 heads)
            for h in range(q.shape[1]):
                for i in range(0, q.shape[2], SCORE_ROWS):
                    keep(ranges.scores, name, q[:, h, i:i + SCORE_ROWS] @ kt[:, h])
        return measure

    hooks += [m.register_forward_pre_hook(scores(n), with_kwargs=True)
              for n, m in model.named_modules() if isinstance(m, SelfAttention)]
    try:
        for i in range(0, len(x), batch):
            model(x[i:i + batch])
    finally:
        for h in hooks:
            h.remove()
    return ranges


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts))]


def choose_islands(model: nn.Module, ranges: Ranges, precision: str, limit: float = FP16_SAFE,
                   hold: float = FP16_HOLD, residual_fp32: bool = False) -> list[Island]:
    """The modules to keep in fp32 in an fp16 export (module docstring: the two limits), outermost
    only. bf16 has fp32's exponent range: no range islands (its concern is precision, not overflow).
    Raises DeployError when fp16 cannot hold a value whatever is kept in fp32."""
    if precision != "fp16":
        return []
    over = {k: v for k, v in ranges.stream.items() if v > hold}
    stream = []
    if over and residual_fp32:
        # a ViT can hold its residual stream (and the tokens it starts from) in fp32 while the blocks'
        # branches stay fp16 (deploy_module.Fp32ResidualBlock): elementwise cost, no matmul in fp32
        stream = [Island("backbone.blocks", "residual", round(max(over.values()), 1))]
    elif over:
        where, v = max(over.items(), key=lambda kv: kv[1])
        raise DeployError(
            f"--precision fp16 cannot hold the residual stream at {where} (measured max |x| {v:.3g} > {hold:.0f}, "
            f"fp16's largest value is {FP16_MAX:.0f}; {len(over)} place(s) over): export with --precision bf16 "
            "or fp32, or calibrate on images like your deployment's with --calib")
    modules = dict(model.named_modules())
    # Too wide to be an island: the model, and what holds the blocks (the whole backbone in fp32).
    too_wide = {""} | {n.rpartition(".")[0] for n, _ in _residual_blocks(model)}
    too_wide |= {a for n in too_wide for a in _ancestors(n)}
    wanted: dict[str, float] = {}  # island -> the measured value that made it one
    starts = [(n, v) for n, v in ranges.outputs.items() if v > limit and isinstance(modules.get(n), ISLAND_TYPES)]
    # a linear whose input fp16 cannot hold: its producer must be fp32 too, so start at the module around both
    starts += [(_parent(n), v) for n, v in ranges.inputs.items() if v > hold]
    for name, v in starts:
        island = name
        while island not in too_wide and ranges.outputs.get(island, 0.0) > hold:
            island = _parent(island)  # the island's own output is cast back to fp16: widen it
        if island in too_wide:
            raise DeployError(
                f"--precision fp16 cannot keep '{name}' (measured max |x| {v:.3g}) in range: no module around it "
                f"brings its output under {hold:.0f} (fp16's largest value is {FP16_MAX:.0f}); export with "
                "--precision bf16 or fp32")
        wanted[island] = max(wanted.get(island, 0.0), v)
    outermost = [n for n in wanted if not any(n.startswith(o + ".") for o in wanted if o != n)]
    ranged = [Island(n, "range", round(wanted[n], 1)) for n in outermost]
    # scores past the limit: only their matmul in fp32, unless a range island already holds the attention
    scores = [Island(n, "scores", round(v, 1)) for n, v in ranges.scores.items()
              if v > limit and not any(n == o or n.startswith(o + ".") for o in outermost)]
    return stream + ranged + scores


def fp32_flop_share(flops: dict[str, int], islands: Iterable[str | Island]) -> float:
    """The share of matmul_flops inside the given fp32 islands: a name, or an Island of reason "range",
    "opset" or "precision", counts the module and everything under it; a "scores" Island counts only
    its attention's score matmul ("<attn>.scores"); a "residual" one nothing (its cost is elementwise)."""
    prefixes = []
    for i in islands:
        if not isinstance(i, Island):
            prefixes.append(i)
        elif i.reason == "scores":
            prefixes.append(f"{i.module}.scores")
        elif i.reason != "residual":
            prefixes.append(i.module)
    inside = sum(f for n, f in flops.items() if any(n == p or n.startswith(p + ".") for p in prefixes))
    return inside / max(sum(flops.values()), 1)


def matmul_flops(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates on input x of every Linear / Conv2d (keyed by module) and of each attention's
    two activation matmuls, which are no module: q @ k^T ("<attn>.scores") and softmax @ v
    ("<attn>.weighted_v"), B*N*N*dim each. Elementwise ops, norms and the softmax are not counted."""
    from dinov3_deploy.reference.models.layers import SelfAttention

    flops: dict[str, int] = {}

    def hook(name):
        def count(m, _inputs, out):
            if isinstance(m, SelfAttention):
                b, n, c = out.shape
                for key in (f"{name}.scores", f"{name}.weighted_v"):
                    flops[key] = flops.get(key, 0) + b * n * n * c
            elif isinstance(m, nn.Linear):
                flops[name] = flops.get(name, 0) + out.numel() * m.in_features
            else:
                k = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]
                flops[name] = flops.get(name, 0) + out.numel() * k
        return count

    hooks = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
             if isinstance(m, ISLAND_TYPES + (SelfAttention,))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return flops
