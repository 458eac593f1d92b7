"""The Mask2Former segmentor as a deployable head family: a TaskModel-shaped wrapper (backbone,
tasks, specs, mean/std, forward -> named outputs) around the reference `M2FSegmentor`, so
DeployModule, the ONNX export, verify and infer treat it as one more seg head (head_type "m2f").

Its outputs (head_outputs.HEAD_OUTPUTS[("seg", "m2f")]): class logits, mask logits at stride 4, and
the semantic scores at the input resolution, computed in the graph the release's way (mask logits
upsampled before the sigmoid)."""

from __future__ import annotations

import torch
from torch import nn

from dinov3_deploy.reference.models.task_model import OneHead

HEAD_TYPE = "m2f"
MASK_STRIDE = 4  # pred_masks are at the adapter's stride-4 level


class M2FTaskModel(OneHead, nn.Module):
    """forward(x) -> {"class_logits": [B,Q,C+1], "mask_logits": [B,Q,H/4,W/4], "scores": [B,C,H,W]}."""

    def __init__(self, segmentor: nn.Module, spec) -> None:
        super().__init__()
        self.segmentor = segmentor
        self.spec = spec

    @property
    def backbone(self) -> nn.Module:
        return self.segmentor.backbone

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        from dinov3_deploy.reference.models.m2f_segmentor import semantic_scores

        out = self.segmentor(x)
        scores = semantic_scores(out["pred_logits"], out["pred_masks"], (x.shape[-2], x.shape[-1]))
        return {"class_logits": out["pred_logits"], "mask_logits": out["pred_masks"], "scores": scores}

    def predict(self, x: torch.Tensor, rescale_to=None) -> torch.Tensor:
        return self.forward(x)["scores"]


def is_m2f_model(model: nn.Module) -> bool:
    return isinstance(model, M2FTaskModel)


def build_m2f_model(backbone: str, head: str, weights: str | None, seed: int, attn_impl: str = "math"):
    """The fp32 M2FTaskModel of an M2F head (Meta's file or our directory) on `backbone`."""
    from dinov3_deploy.reference import create_segmentor
    from dinov3_deploy.reference.configs import normalization_for_weights
    from dinov3_deploy.reference.formats.m2f_checkpoint import read_m2f_head
    from dinov3_deploy.reference.models.task_model import HeadSpec
    from dinov3_deploy.reference.protocol.synthetic import MAX_CLASSES, class_names, palette

    segmentor = create_segmentor(backbone, weights, head_weights=head, seed=seed, attn_impl=attn_impl)
    config, _ = read_m2f_head(head)
    if config is not None and config.get("mean"):
        mean, std = tuple(config["mean"]), tuple(config["std"])
    else:
        mean, std = normalization_for_weights(weights)
    n = segmentor.num_classes
    extra = {"class_names": class_names(n), "palette": palette(n)} if 2 <= n <= MAX_CLASSES else {}
    spec = HeadSpec(task="seg", backbone=backbone, n_classes=n, layers="four_even", head_type=HEAD_TYPE,
                    mean=tuple(mean), std=tuple(std), **extra)
    return M2FTaskModel(segmentor, spec).eval()


# "onnx": the reference's standard-op form, one GridSample per level (bilinear, zero padding). Chosen
# because it is the reference's own op (exact parity) and TensorRT-RTX 1.7 builds it: measured here, the
# vit_tiny_test hidden-32 graph (24 GridSample) builds in 39 s on the CPU. A gather-based bilinear form was
# not measured yet. "plugin": one `dinov3_deploy.ms_deform_attn` node per MSDeformAttn core, run by the
# Triton kernel as the dinov3_deploy::ms_deform_attn TensorRT plugin (engines/plugins.py); judged on this CPU
# by the ONNX reference evaluator (engines/plugin_reference.py).
DEFORM_ATTN = ("onnx", "plugin")
# opset 20 renamed GridSample's "bilinear" to "linear", which onnx-tensorrt parses as nearest
# (NVIDIA/TensorRT#4646): the deformable attention's sampling would silently change in TensorRT
MAX_GRIDSAMPLE_OPSET = 19


def check_m2f_options(opts, source) -> None:
    """Export options a Mask2Former artifact cannot take, refused in one line before any work."""
    from dinov3_deploy.errors import DeployError

    if opts.deform_attn not in DEFORM_ATTN:
        raise DeployError(f"--deform-attn must be one of {', '.join(DEFORM_ATTN)}, got '{opts.deform_attn}'")
    if source.multi:
        raise DeployError("a Mask2Former head exports alone for now: the multi-head model (MultiTaskModel) feeds "
                          "heads backbone tokens, the M2F adapter also reads the image")
    if opts.opset is not None and opts.opset > MAX_GRIDSAMPLE_OPSET:
        raise DeployError(f"--opset {opts.opset}: a Mask2Former graph needs opset <= {MAX_GRIDSAMPLE_OPSET} (from "
                          "opset 20 GridSample's 'linear' mode is parsed as nearest by TensorRT's ONNX parser)")
    if opts.precision == "bf16":
        # measured (docs/m2f.md): with the sampling cores fp32 (deploy_module) the scores miss bf16's gate on
        # onnx-reference (rel 2.8e-2), and still do with the whole adapter and head in fp32 (3.1e-2)
        raise DeployError("--precision bf16 is refused for Mask2Former: measured, its bf16 backbone alone moves the "
                          "semantic scores past the bf16 gate (rel 3.1e-2 > 2e-2 with every adapter and head module "
                          "in fp32; docs/m2f.md): use fp32 or fp16")
    if opts.uint8_input or opts.feature_layers:
        raise DeployError("--uint8-input and --feature-layers do not apply to a Mask2Former export yet")


def check_deform_plugin(opts, formats: tuple[str, ...], api) -> bool:
    """Whether the deformable attention is exported as plugin nodes; refuses, in one line, the formats
    that cannot carry them (`api`: the TensorRT flavour an engine is built with, None without one)."""
    from dinov3_deploy.errors import DeployError

    if opts.deform_attn != "plugin":
        return False
    if api is not None and api.flavor != "tensorrt":
        raise DeployError("--deform-attn plugin needs full TensorRT for --format trt: TensorRT-RTX's Python "
                          "bindings have no tensorrt.plugin (Quickly Deployable Plugins), so it cannot build the "
                          "node. Use --deform-attn onnx for a TensorRT-RTX engine, or --trt-flavor tensorrt on a GPU")
    if "triton-repo" in formats and api is None:
        raise DeployError("--deform-attn plugin with --format triton-repo needs --format trt (full TensorRT): "
                          "Triton's onnxruntime backend cannot run the plugin node")
    return True
