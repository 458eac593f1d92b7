"""Helpers shared by the independent-implementation parity tests (Hugging Face, timm)."""

import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter far from its init: norms around 1, LayerScale around 0.5, the rest N(0, 0.1).
    Parameter names of every layout we compare (ours, HF, timm) are recognised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * r)
            elif name.endswith(("lambda1", "gamma", "gamma_1", "gamma_2")):
                p.copy_(0.5 + 0.3 * r)
            elif name.endswith(("cls_token", "register_tokens", "storage_tokens", "reg_token")):
                p.copy_(r)
            else:
                p.copy_(0.1 * r)
    return model
