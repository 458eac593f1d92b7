"""Calibration for low-precision exports: run the fp32 model (as exported: folded) on calibration
images, record the absolute maximum of every parameterised module's output, and pick the modules
to keep in fp32 ("islands") because their output, or the accumulation that produces it, would
leave fp16's safe range.

    x = calibration_images(None, 64, 64, spec)          # built-in synthetic images (or --calib DIR)
    maxima = record_maxima(model, x)                      # module name -> max |output|
    islands = choose_islands(model, maxima, "fp16")       # [Island("backbone.blocks.0.mlp.fc2", "range", 9e4)]

Hooks on modules, not maxima of the ONNX graph's intermediate tensors: an island is applied by
DeployModule as a module wrapped in casts (the graph shows Cast -> fp32 op -> Cast), so the unit we
measure is the unit we can keep in fp32, with its module name, and no extra export is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dinov3_deploy.errors import DeployError

FP16_MAX = 65504.0
# Margin: an output within 1/8 of fp16's largest value is too close (other inputs go further, and
# the dot products that make it add partial sums that may be larger than the result).
FP16_SAFE = FP16_MAX / 8
CALIB_IMAGES = 4  # built-in synthetic images when no --calib folder is given
ISLAND_TYPES = (nn.Linear, nn.Conv2d)  # what an island can be: ops with an accumulation over a fan-in


@dataclass(frozen=True)
class Island:
    """A module kept in fp32 in a low-precision graph, and why ("range": its measured output
    `absmax` would leave fp16's safe range; "opset": no low-precision kernel at this opset)."""

    module: str
    reason: str
    absmax: float | None = None

    def to_dict(self) -> dict:
        return {"module": self.module, "reason": self.reason, "absmax": self.absmax}


def calibration_images(calib: str | Path | None, height: int, width: int, mean, std,
                       n: int = CALIB_IMAGES) -> torch.Tensor:
    """Normalised fp32 NCHW images at height x width: the built-in synthetic ones, or every image
    of the folder `calib`, resized (calibration only measures ranges; the aspect does not matter)."""
    import numpy as np

    if calib is None:
        from dinov3_deploy.reference.training.synthetic import make_sample

        pixels = [make_sample(1000 + i, height, width)[0] for i in range(n)]  # not the verifier's seeds
    else:
        from dinov3_deploy.reference.training.images import IMAGE_EXTS, is_image, read_rgb

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
    x = torch.stack(batch) / 255.0
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


@torch.no_grad()
def record_maxima(model: nn.Module, x: torch.Tensor, batch: int = 2) -> dict[str, float]:
    """max |output| of every module that has parameters of its own, over the images `x` (fp32 model)."""
    seen: dict[str, float] = {}

    def hook(name):
        def record(_m, _inputs, out):
            if isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel():
                seen[name] = max(seen.get(name, 0.0), float(out.detach().abs().max()))
        return record

    hooks = [m.register_forward_hook(hook(name)) for name, m in model.named_modules()
             if name and any(True for _ in m.parameters(recurse=False))]
    try:
        for i in range(0, len(x), batch):
            model(x[i:i + batch])
    finally:
        for h in hooks:
            h.remove()
    return seen


def choose_islands(model: nn.Module, maxima: dict[str, float], precision: str,
                   limit: float = FP16_SAFE) -> list[Island]:
    """The linears/convs whose measured output passes `limit` in an fp16 export. bf16 has fp32's
    exponent range: no range islands (its concern is precision, not overflow)."""
    if precision != "fp16":
        return []
    modules = dict(model.named_modules())
    return [Island(name, "range", round(v, 1)) for name, v in maxima.items()
            if v > limit and isinstance(modules.get(name), ISLAND_TYPES)]


def matmul_flops(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates of every Linear / Conv2d on input x (for the share kept in fp32)."""
    flops: dict[str, int] = {}

    def hook(name):
        def count(m, _inputs, out):
            if isinstance(m, nn.Linear):
                flops[name] = flops.get(name, 0) + out.numel() * m.in_features
            else:
                k = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]
                flops[name] = flops.get(name, 0) + out.numel() * k
        return count

    hooks = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, ISLAND_TYPES)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return flops
