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
from dinov3_deploy.head_outputs import graph_output_names, output_name, output_names  # noqa: F401 (importable here)
from dinov3_deploy.manifest import INPUT_NAMES, MULTI_TASK, DeployIO

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# The ONNX opset each precision exports at by default: the lowest that works, within TensorRT
# 10.0's parser range (opsets 9-20), so JetPack 6 (TensorRT 10.3) parses every default artifact.
DEFAULT_OPSET = {"fp32": 18, "fp16": 18, "bf16": 18}
OPSETS = range(18, 23)  # torch.onnx's dynamo exporter starts at 18; ONNX 1.17 defines up to 22 here
BF16_CONV_OPSET = 22  # ONNX Conv (and ConvTranspose, pooling) accept bfloat16 from opset 22 only
SEG_OUTPUTS = ("logits", "probs", "labels")


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


class Fp32Island(nn.Module):
    """A module computed in fp32 inside a low-precision graph: its floating-point inputs are cast
    to fp32, its weights are the fp32 originals, its output is cast back, so the exported graph
    shows Cast -> fp32 op -> Cast (strongly typed TensorRT keeps exactly that)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = module
        self.dtype = dtype

    def forward(self, *args, **kwargs):
        def cast(a, dtype):  # heads take lists of maps; M2F parts take and return dicts of them
            if isinstance(a, dict):
                return {k: cast(v, dtype) for k, v in a.items()}
            if isinstance(a, list | tuple):
                return type(a)(cast(v, dtype) for v in a)
            return a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a

        return cast(self.inner(*[cast(a, torch.float32) for a in args], **kwargs), self.dtype)


def _layer_norm_fp32(norm: nn.LayerNorm, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`norm` of an fp32 `x` with fp32 statistics and weights, cast to `dtype` (the branch's precision)."""
    w = norm.weight.float() if norm.weight is not None else None
    b = norm.bias.float() if norm.bias is not None else None
    return F.layer_norm(x.float(), norm.normalized_shape, w, b, norm.eps).to(dtype)


def island_args(islands) -> dict:
    """DeployModule's arguments for islands (export/calibration.Island or the manifest's IslandInfo),
    by reason: "range" / "precision" modules computed in fp32, "scores" attentions whose score matmul
    is fp32, "residual" the fp32 residual stream. "opset" convs follow from the opset, not from here."""
    islands = list(islands)
    return {"fp32_islands": [i.module for i in islands if i.reason in ("range", "precision")],
            "fp32_scores": [i.module for i in islands if i.reason == "scores"],
            "residual_fp32": any(i.reason == "residual" for i in islands)}


class Fp32ResidualBlock(nn.Module):
    """A ViT block whose residual stream stays fp32 in a low-precision graph: the branches (attention,
    MLP) compute in the graph's precision, their outputs are added to an fp32 stream, and each
    LayerNorm reads that fp32 stream. It lowers every output's relative error in bf16 (measured in
    docs/precision.md): bf16's 8-bit mantissa loses most on the stream, which accumulates every
    block's update. In fp16 it holds massive residual activations past 65504/2.
    The cost is elementwise (adds and casts on [B, N, D]), not a matmul."""

    def __init__(self, block: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.block = block
        self.dtype = dtype

    def forward(self, x: torch.Tensor, rope=None) -> torch.Tensor:
        b = self.block
        x = x.float()
        x = x + b.ls1(b.attn(_layer_norm_fp32(b.norm1, x, self.dtype), rope)).float()
        return x + b.ls2(b.mlp(_layer_norm_fp32(b.norm2, x, self.dtype))).float()


class Fp32InputNorm(nn.Module):
    """The final LayerNorm reading the fp32 residual stream (Fp32ResidualBlock), output in `dtype`."""

    def __init__(self, norm: nn.LayerNorm, dtype: torch.dtype) -> None:
        super().__init__()
        self.norm = norm
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _layer_norm_fp32(self.norm, x, self.dtype)


def is_patchify(conv: nn.Module) -> bool:
    """A Conv2d that only mixes non-overlapping kernel-sized patches (kernel == stride, no padding,
    no groups or dilation): the ViT patch embedding, ConvNeXt's stem and downsampling, 1x1 convs."""
    return (type(conv) is nn.Conv2d and conv.kernel_size == conv.stride and conv.padding in ((0, 0), "valid")
            and conv.groups == 1 and conv.dilation == (1, 1) and conv.padding_mode == "zeros")


class PatchMatMul(nn.Module):
    """A patchify Conv2d (is_patchify) as reshape + MatMul: the same function (exact up to the
    summation order), at opsets where ONNX Conv has no bfloat16. Input height and width must be
    multiples of the kernel, which every backbone's input_multiple guarantees."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.kernel = tuple(conv.kernel_size)
        out_ch = conv.weight.shape[0]
        # [out, in, kh, kw] -> [in*kh*kw, out], the order the patches are flattened in below
        self.weight = nn.Parameter(conv.weight.detach().reshape(out_ch, -1).t().contiguous(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        kh, kw = self.kernel
        patches = x.reshape(b, c, h // kh, kh, w // kw, kw).permute(0, 2, 4, 1, 3, 5).reshape(b, h // kh, w // kw, -1)
        y = patches @ self.weight
        if self.bias is not None:
            y = y + self.bias
        return y.permute(0, 3, 1, 2)


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
        fp32_islands: tuple[str, ...] | list[str] = (),
        opset: int | None = None,
        normalization_folded: bool = False,
        residual_fp32: bool = False,
        fp32_scores: tuple[str, ...] | list[str] = (),
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise DeployError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
        if seg_output not in SEG_OUTPUTS:
            raise DeployError(f"--seg-output must be one of {', '.join(SEG_OUTPUTS)}, got '{seg_output}'")
        tasks = list(task_model.tasks)  # a TaskModel is the one-head case of a MultiTaskModel
        multi = len(tasks) > 1
        if "seg" not in tasks and seg_output != "logits":
            raise DeployError(f"--seg-output {seg_output} only applies to --task seg")
        self.precision = precision
        self.opset = DEFAULT_OPSET[precision] if opset is None else opset
        if self.opset not in OPSETS:
            raise DeployError(f"--opset must be {OPSETS.start}..{OPSETS.stop - 1}, got {self.opset}")
        self.dtype = PRECISIONS[precision]
        self.task = MULTI_TASK if multi else tasks[0]
        self.tasks = tasks
        self.family = task_model.backbone.cfg.family
        self.seg_output = seg_output
        self.uint8_input = uint8_input
        if normalization_folded and not uint8_input:
            raise DeployError("the normalisation fold applies to --uint8-input only (a float input is normalised)")
        self.normalization_folded = normalization_folded  # task_model takes x - PIXEL_CENTRE (reference/models/fold.py)
        self.feature_layers = feature_layers
        self.model = cast_copy(task_model, self.dtype).eval()
        self._wrap_islands(task_model, fp32_islands, fp32_scores)
        self.opset_islands = self._convs_for_opset(task_model)
        self.sampling_islands = self._sampling_fp32()
        self.residual_fp32 = residual_fp32 and self.dtype != torch.float32
        if self.residual_fp32:
            self._fp32_residual_stream(task_model)
        mean = mean if mean is not None else tuple(task_model.mean)
        std = std if std is not None else tuple(task_model.std)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.output_names = graph_output_names(tasks, self.family, seg_output,
                                               {t: s.head_type for t, s in task_model.specs.items()})
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

    def _wrap_islands(self, task_model: nn.Module, fp32_islands, fp32_scores) -> None:
        """Islands (export/calibration.py): these modules of task_model stay fp32, wrapped in casts;
        and the attentions whose score matmul alone computes in fp32."""
        self.fp32_islands = list(fp32_islands) if self.dtype != torch.float32 else []
        for name in self.fp32_islands:
            try:
                original = task_model.get_submodule(name)
            except AttributeError as exc:
                raise DeployError(f"fp32 island '{name}' is not a module of {task_model.backbone.cfg.name}") from exc
            parent_name, _, child = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            setattr(parent, child, Fp32Island(copy.deepcopy(original).float(), self.dtype))
        # attentions whose score matmul alone computes in fp32 (calibration's "scores" islands); one inside
        # an fp32 island is fp32 already. Before the residual wrapping below, which renames the blocks.
        self.fp32_scores = [n for n in (fp32_scores if self.dtype != torch.float32 else [])
                            if not any(n == i or n.startswith(i + ".") for i in self.fp32_islands)]
        for name in self.fp32_scores:
            try:
                attn = self.model.get_submodule(name)
            except AttributeError:
                attn = None
            if not hasattr(attn, "scores_fp32"):
                raise DeployError(f"fp32 scores island '{name}' is not an attention module of "
                                  f"{task_model.backbone.cfg.name}")
            attn.scores_fp32 = True

    def _fp32_residual_stream(self, task_model: nn.Module) -> None:
        """A low-precision ViT whose residual stream between the blocks (and the tokens it starts at) stays fp32."""
        if self.family != "vit":
            raise DeployError("an fp32 residual stream applies to ViT backbones")
        backbone = self.model.backbone
        for i, block in enumerate(backbone.blocks):
            backbone.blocks[i] = Fp32ResidualBlock(block, self.dtype)
        backbone.norm = Fp32InputNorm(backbone.norm, self.dtype)
        # the stream starts at the class / storage tokens: fp32 too (trained storage tokens carry the
        # massive activations), so prepare_tokens concatenates in fp32
        for name in ("cls_token", "storage_tokens", "mask_token"):
            original = getattr(task_model.backbone, name)
            setattr(backbone, name, nn.Parameter(original.detach().float(), requires_grad=False))

    def _convs_for_opset(self, task_model: nn.Module) -> list[str]:
        """bf16 below BF16_CONV_OPSET: patchify convs become reshape + MatMul (bf16), other convs stay
        fp32 between casts; returns the names of those fp32 convs."""
        if self.dtype != torch.bfloat16 or self.opset >= BF16_CONV_OPSET:
            return []
        islands = []
        inside = self._inside_islands()
        for name, conv in list(self.model.named_modules()):
            if not isinstance(conv, nn.modules.conv._ConvNd) or name.startswith(inside):  # in an island: fp32
                continue
            parent_name, _, child = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            if is_patchify(conv):
                setattr(parent, child, PatchMatMul(conv))
            else:
                setattr(parent, child, Fp32Island(copy.deepcopy(task_model.get_submodule(name)).float(), self.dtype))
                islands.append(name)
        return islands

    def _inside_islands(self) -> tuple[str, ...]:
        """Name prefixes of what the fp32 islands hold (fp32 already: no island of its own)."""
        return tuple(n + "." for n, m in self.model.named_modules() if isinstance(m, Fp32Island))

    def _sampling_fp32(self) -> list[str]:
        """bf16: each deformable-attention sampling core (reference DeformSampling: GridSample per level, which
        has no bf16 in ONNX below opset 22 nor in TensorRT) computes in fp32 between casts, whichever impl its
        MSDeformAttn runs; returns their names (the manifest's "sampling" islands)."""
        from dinov3_deploy.reference.models.ms_deform_attn import DeformSampling

        if self.dtype != torch.bfloat16:
            return []
        inside = self._inside_islands()
        names = [n for n, m in self.model.named_modules() if isinstance(m, DeformSampling) and not n.startswith(inside)]
        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = self.model.get_submodule(parent_name)
            setattr(parent, child, Fp32Island(getattr(parent, child), self.dtype))
        return names

    @classmethod
    def from_io(cls, task_model: nn.Module, precision: str, io: DeployIO, islands=(),
                opset: int | None = None) -> DeployModule:
        """The module an artifact with this I/O contract, these islands (island_args) and this opset
        was exported from."""
        return cls(task_model, precision, seg_output=io.seg_output, uint8_input=io.uint8_input,
                   feature_layers=io.feature_layers, mean=io.mean, std=io.std, opset=opset, **island_args(islands))

    @classmethod
    def for_artifact(cls, task_model: nn.Module, precision: str, manifest) -> DeployModule:
        """The artifact's own graph in PyTorch: its I/O contract, its islands (range / precision modules,
        fp32 scores, residual stream) and its opset (which decides how bf16 convs are written), at `precision`."""
        return cls.from_io(task_model, precision, manifest.io, manifest.fp32_islands, opset=manifest.onnx.opset)

    def fp32_compute_ops(self, x: torch.Tensor | None = None) -> int:
        """The MatMul / Conv ops the exported graph keeps in fp32 on purpose (the graph check allows
        up to these): those computed inside the fp32 islands (range, precision, opset, sampling), counted
        per call on a forward of `x` (island_ops.py says why), and each fp32 score matmul. The count does
        not depend on the size: by default a 1x64x64 input (a multiple of every backbone's and of M2F's
        input multiple). An upper bound: the exporter folds ops on constants away (a Mask2Former transformer
        decoder island: 166 counted, 157 in the graph, where counting Linear modules said 40), and Triton
        impls (plugin nodes, no MatMul) are counted in their plain forms, which need no GPU."""
        from dinov3_deploy.island_ops import count_island_compute
        from dinov3_deploy.reference.models.ms_deform_attn import MSDeformAttn

        islands = [m for m in self.model.modules() if isinstance(m, Fp32Island)]
        if not islands:
            return len(self.fp32_scores)
        x = self.example_input(1, 64, 64) if x is None else x
        triton = [m for m in self.model.modules() if getattr(m, "impl", None) == "triton"]
        try:
            for m in triton:
                m.impl = "plain" if isinstance(m, MSDeformAttn) else "math"
            return count_island_compute(self, islands, x) + len(self.fp32_scores)
        finally:
            for m in triton:
                m.impl = "triton"

    @property
    def input_name(self) -> str:
        return INPUT_NAMES["uint8" if self.uint8_input else "float32"]

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        # uint8 NHWC RGB -> NCHW (no resize, ever). Cast before the transpose: TensorRT has no uint8
        # Transpose. With the normalisation folded into the first conv, only the centring is left,
        # exact in every precision (fold.PIXEL_CENTRE says why it is there).
        if self.uint8_input and self.normalization_folded:
            from dinov3_deploy.reference.models.fold import PIXEL_CENTRE

            x = x.float().permute(0, 3, 1, 2) - PIXEL_CENTRE
        elif self.uint8_input:  # normalised fp32 NCHW
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
        if "seg" in self.tasks and self.seg_output != "logits":
            multi = self.task == MULTI_TASK
            size = x.shape[1:3] if self.uint8_input else x.shape[-2:]
            scores = output_name("seg", "scores", multi)  # M2F: semantic scores at the input size already
            up = result[scores] if scores in result else F.interpolate(
                result[output_name("seg", "logits", multi)], size=size, mode="bilinear", align_corners=False)
            if self.seg_output == "probs":
                result[output_name("seg", "probs", multi)] = up.softmax(dim=1)
            else:
                result[output_name("seg", "labels", multi)] = up.argmax(dim=1).to(torch.int32)
        return tuple(result[name] for name in self.output_names)

    def example_input(self, batch: int, height: int, width: int) -> torch.Tensor:
        if self.uint8_input:
            return torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8)
        return torch.randn(batch, 3, height, width)
