"""What an artifact computes, as one torch module: the exporter traces it, and verify, bench and
the tests run it as the reference, so none of them needs the exporter to build one.

    module = DeployModule(task_model, "fp16", seg_output="labels")
    module = DeployModule.from_io(task_model, "fp32", manifest.io)   # the artifact's I/O contract

A low-precision module must not cast the caller's model: export keeps that model as the fp32
reference for verification, and casting it in place (nn.Module.to) would make the reference
compute in fp16 too, so parity would pass vacuously. The module holds a structural copy whose
floating-point tensors are created already cast; integer buffers are shared, and an fp32 module
copies nothing.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from dinov3_deploy.errors import DeployError
from dinov3_deploy.manifest import INPUT_NAMES, DeployIO

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SEG_OUTPUTS = ("logits", "probs", "labels")


def output_names(task: str, family: str, seg_output: str = "logits") -> list[str]:
    """The graph's outputs, in order."""
    if task == "features":
        return ["cls", "patch"] if family == "convnext" else ["cls", "storage", "patch"]
    if task == "seg":
        return ["logits"] + ([seg_output] if seg_output != "logits" else [])
    if task == "depth":
        return ["depth"]
    return ["logits"]


def cast_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`module` at `dtype` without touching `module`: the module objects are copied, each
    floating-point parameter and buffer is created directly at `dtype` (no fp32 duplicate on the
    way), other tensors are shared."""
    if dtype == torch.float32:
        return module
    memo: dict[int, object] = {}
    for p in module.parameters():
        if p.is_floating_point():
            memo[id(p)] = nn.Parameter(p.detach().to(dtype), requires_grad=p.requires_grad)
    for b in module.buffers():
        memo[id(b)] = b.detach().to(dtype) if b.is_floating_point() else b
    return copy.deepcopy(module, memo)


class DeployModule(nn.Module):
    """[uint8 NHWC -> normalised NCHW] -> cast to the precision -> TaskModel -> task outputs (+
    upsampled probabilities or labels for seg), returned in fp32 (labels in int32) so every
    precision has the same I/O types."""

    def __init__(
        self,
        task_model: nn.Module,
        precision: str = "fp32",
        *,
        seg_output: str = "logits",
        uint8_input: bool = False,
        feature_layers: int = 0,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise DeployError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
        if seg_output not in SEG_OUTPUTS:
            raise DeployError(f"--seg-output must be one of {', '.join(SEG_OUTPUTS)}, got '{seg_output}'")
        spec = task_model.spec
        if spec.task != "seg" and seg_output != "logits":
            raise DeployError(f"--seg-output {seg_output} only applies to --task seg")
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.task = spec.task
        self.family = task_model.backbone.cfg.family
        self.seg_output = seg_output
        self.uint8_input = uint8_input
        self.feature_layers = feature_layers
        self.model = cast_copy(task_model, self.dtype).eval()
        mean = mean if mean is not None else tuple(spec.mean)
        std = std if std is not None else tuple(spec.std)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.output_names = output_names(self.task, self.family, seg_output)
        self.layer_ids: list[int] = []
        if feature_layers:
            n_blocks = task_model.backbone.n_blocks
            if self.task != "features" or self.family != "vit":
                raise DeployError("--feature-layers applies to --task features on ViT backbones")
            if not 1 <= feature_layers <= n_blocks:
                raise DeployError(f"--feature-layers must be 1..{n_blocks} for {task_model.backbone.cfg.name}")
            self.layer_ids = list(range(n_blocks - feature_layers, n_blocks))
            self.output_names += [f"patch_block{i}" for i in self.layer_ids[:-1]]  # the last is `patch`
        self.eval()

    @classmethod
    def from_io(cls, task_model: nn.Module, precision: str, io: DeployIO) -> DeployModule:
        """The module an artifact with this I/O contract was exported from."""
        return cls(task_model, precision, seg_output=io.seg_output, uint8_input=io.uint8_input,
                   feature_layers=io.feature_layers, mean=io.mean, std=io.std)

    @property
    def input_name(self) -> str:
        return INPUT_NAMES["uint8" if self.uint8_input else "float32"]

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if self.uint8_input:  # uint8 NHWC RGB -> normalised fp32 NCHW (no resize, ever)
            # Cast before the transpose: TensorRT has no uint8 Transpose.
            x = (x.float().permute(0, 3, 1, 2) * (1.0 / 255.0) - self.mean) / self.std
        return x.to(self.dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.layer_ids:  # one backbone pass gives the last block's tokens and earlier blocks' patches
            layers = self.model.backbone.get_intermediate_layers(
                self.preprocess(x), n=self.layer_ids, return_class_token=True, return_extra_tokens=True, norm=True)
            patch, cls, storage = layers[-1]
            out = {"cls": cls, "storage": storage, "patch": patch}
            out.update({f"patch_block{i}": layer[0] for i, layer in zip(self.layer_ids, layers[:-1])})
        else:
            out = self.model(self.preprocess(x))
        result = {name: out[name].float() for name in self.output_names if name in out}
        if self.task == "seg" and self.seg_output != "logits":
            size = x.shape[1:3] if self.uint8_input else x.shape[-2:]
            up = F.interpolate(result["logits"], size=size, mode="bilinear", align_corners=False)
            if self.seg_output == "probs":
                result["probs"] = up.softmax(dim=1)
            else:
                result["labels"] = up.argmax(dim=1).to(torch.int32)
        return tuple(result[name] for name in self.output_names)

    def example_input(self, batch: int, height: int, width: int) -> torch.Tensor:
        if self.uint8_input:
            return torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8)
        return torch.randn(batch, 3, height, width)
