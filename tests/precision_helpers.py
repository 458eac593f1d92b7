"""Helpers shared by the precision tests (stress initialisation, exact folds)."""

import numpy as np
import torch

from dinov3_deploy.reference.models.fold import scaled_branches
from dinov3_deploy.reference.protocol.synthetic import make_sample
from dinov3_deploy.reference.training.transforms import normalize
from dinov3_deploy.verification import parity

FP16_MAX = float(torch.finfo(torch.float16).max)  # 65504


def synthetic_pixels(height: int = 64, width: int = 64, n: int = 2) -> torch.Tensor:
    """Photograph-like synthetic images (the verifier's parity inputs), uint8 values as float NCHW."""
    images = np.stack([make_sample(i, height, width)[0] for i in range(n)])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float()


def synthetic_batch(height: int = 64, width: int = 64, n: int = 2) -> torch.Tensor:
    """The same images, ImageNet-normalised as the backbones take them."""
    images = [make_sample(i, height, width)[0] for i in range(n)]
    return torch.stack([normalize(im) for im in images])


@torch.no_grad()
def branch_absmax(model: torch.nn.Module, x: torch.Tensor, names: list[str] | None = None) -> dict[str, float]:
    """max |output| of every linear that feeds a LayerScale / ConvNeXt gamma (or of the linears
    `names`, e.g. those of the unfolded model), on input x."""
    names = names if names is not None else [name for name, _, _, _ in scaled_branches(model)]
    seen: dict[str, float] = {}
    hooks = [
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, n=name: seen.__setitem__(n, float(out.abs().max()))
        )
        for name in names
    ]
    try:
        model.forward_features(x) if hasattr(model, "forward_features") else model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return parity.relative_frobenius(ref.detach().numpy(), out.detach().float().numpy())


def fp16_parity(ref: dict[str, torch.Tensor], out: dict[str, torch.Tensor], task: str = "features"):
    """parity.compare rows of fp16 outputs against fp32 ones, at the fp16 thresholds."""
    as_np = {k: v.detach().float().numpy() for k, v in ref.items() if v.numel()}
    return parity.compare(as_np, {k: out[k].detach().float().numpy() for k in as_np}, "synthetic", task, "fp16")
