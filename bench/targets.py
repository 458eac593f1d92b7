"""Which targets a benchmark times: PyTorch configurations of a model, and an artifact's backends."""

from __future__ import annotations

from dinov3_deploy.reference.models.layers.attention import ATTN_IMPLS as ATTN_IMPLS  # re-exported for the CLI

from .harness import Target, runner_target, torch_target


def deterministic_reference_math() -> None:
    """fp32 means fp32: no TF32 in the reference (or in fp32 targets)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def pytorch_targets(source, precisions: list[str], attn_impls: list[str], device: str, compile_modes: list[str],
                    io, manifest=None) -> list[Target]:
    """Eager PyTorch per (precision, attention implementation), plus torch.compile per precision,
    each computing every output of the I/O contract `io` (a manifest.DeployIO); with an artifact's
    `manifest`, its own graph (fp32 islands, opset) at each precision."""
    from dinov3_deploy.deploy_module import DeployModule

    targets = []
    for prec in precisions:
        variants = [(impl, None) for impl in attn_impls] + [("sdpa", mode) for mode in compile_modes]
        for impl, mode in variants:
            name = f"torch-{prec}-{impl}" if mode is None else f"torch.compile({mode})-{prec}"
            reason = _skip_reason(prec, impl, device)
            if reason:
                targets.append(Target(name, prec, skip_reason=reason))
                continue
            model = source.build(attn_impl=impl)
            if model.backbone.cfg.family == "convnext" and impl != "sdpa":
                continue  # no attention: every implementation is the same network
            module = (DeployModule.for_artifact(model, prec, manifest) if manifest is not None
                      else DeployModule.from_io(model, prec, io))
            t = torch_target(module, name, prec, device, compile_mode=mode)
            t.info = {"backend": "pytorch", "attn_impl": impl, "compile": mode}
            targets.append(t)
    return targets


def _skip_reason(precision: str, impl: str, device: str) -> str:
    if precision in ("int8", "fp8"):
        return f"{precision} is a Q/DQ graph: it runs in ONNX Runtime or TensorRT (the artifact's rows), not PyTorch"
    if impl == "triton" and not device.startswith("cuda"):
        return "Triton kernels need a CUDA GPU (their CPU check is the interpreter test suite)"
    if precision == "fp16" and device == "cpu":
        return "fp16 matmuls on the CPU are emulated and not representative"
    return ""


def artifact_targets(artifact) -> list[Target]:
    """Every deployment backend of the artifact; those that cannot run here come back skipped."""
    from dinov3_deploy.runtime.runners import artifact_backends

    out = []
    for be in artifact_backends(artifact):
        if be.runner is None:
            out.append(Target(be.name, artifact.precision, skip_reason=be.skip_reason))
        else:
            t = runner_target(be.runner, artifact.precision, be.name)
            t.info = {"backend": be.name}
            out.append(t)
    return out
