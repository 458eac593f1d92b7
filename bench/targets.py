"""Which targets a benchmark times: PyTorch configurations of a model, and an artifact's backends."""

from __future__ import annotations

from dinov3_deploy.errors import DeployError
from dinov3_deploy.reference.models.layers.attention import ATTN_IMPLS as ATTN_IMPLS  # re-exported for the CLI

from .harness import Target, runner_target, torch_target


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeployError("--device cuda asked for, but torch sees no CUDA GPU here (use --device cpu)")
    return device


def deterministic_reference_math() -> None:
    """fp32 means fp32: no TF32 in the reference (or in fp32 targets)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def reference_target(source, device: str, *, uint8_input: bool = False, seg_output: str = "logits",
                     mean=None, std=None) -> Target:
    from dinov3_deploy.onnx_export import DeployModule

    model = source.build(attn_impl="sdpa")
    module = DeployModule(model, "fp32", seg_output=seg_output, uint8_input=uint8_input, mean=mean, std=std)
    return torch_target(module, "pytorch-fp32-reference", "fp32", device)


def pytorch_targets(source, precisions: list[str], attn_impls: list[str], device: str, compile_modes: list[str],
                    *, uint8_input: bool = False, seg_output: str = "logits", mean=None, std=None) -> list[Target]:
    """Eager PyTorch per (precision, attention implementation), plus torch.compile per precision."""
    from dinov3_deploy.onnx_export import DeployModule

    targets = []
    family = None
    for prec in precisions:
        variants = [(impl, None) for impl in attn_impls] + [("sdpa", mode) for mode in compile_modes]
        for impl, mode in variants:
            name = f"torch-{prec}-{impl}" if mode is None else f"torch.compile({mode})-{prec}"
            reason = _skip_reason(prec, impl, device)
            if reason:
                targets.append(Target(name, prec, skip_reason=reason))
                continue
            model = source.build(attn_impl=impl)
            family = model.backbone.cfg.family
            if family == "convnext" and impl != "sdpa":
                continue  # no attention: every implementation is the same network
            module = DeployModule(model, prec, seg_output=seg_output, uint8_input=uint8_input, mean=mean, std=std)
            t = torch_target(module, name, prec, device, compile_mode=mode)
            t.info = {"backend": "pytorch", "attn_impl": impl, "compile": mode}
            targets.append(t)
    return targets


def _skip_reason(precision: str, impl: str, device: str) -> str:
    if impl == "triton" and not device.startswith("cuda"):
        return "Triton kernels need a CUDA GPU (their CPU check is the interpreter test suite)"
    if precision == "fp16" and device == "cpu":
        return "fp16 matmuls on the CPU are emulated and not representative"
    return ""


def artifact_targets(artifact) -> list[Target]:
    """Every deployment backend of the artifact; those that cannot run here come back skipped."""
    from dinov3_deploy.runners import artifact_backends

    out = []
    for be in artifact_backends(artifact):
        if be.runner is None:
            out.append(Target(be.name, artifact.precision, skip_reason=be.skip_reason))
        else:
            t = runner_target(be.runner, artifact.precision, be.name)
            t.info = {"backend": be.name}
            out.append(t)
    return out
