"""Exact folds: per-channel scalings merged into the linear map next to them, so that no op of a
deployed graph materialises a value much larger than what it contributes.

Trained DINOv3 LayerScale gammas go down to 1e-5 on some channels, so the raw output of the linear
before a LayerScale (attn.proj, mlp.fc2, SwiGLU w3; ConvNeXt's pwconv2 before its gamma) can exceed
fp16's largest finite value (65504) although the residual update it becomes is small: an fp16
graph computes inf there. Multiplying the gamma into that linear's output rows gives the same
function in exact arithmetic (in fp32 the relative change is at the level of one rounding, ~1e-7)
and the overflow is gone. Likewise an eval-mode BatchNorm is a per-channel affine map merged into
the 1x1 conv after it, and the input normalisation ((x/255 - mean)/std) into the first conv when
that conv has no padding.

Every public function works on a deep copy and never changes the caller's model:
  fold_layerscale(model)          ViT: lsN.gamma into attn.proj / mlp.fc2 / mlp.w3, lsN -> Identity
  fold_convnext_gamma(model)      ConvNeXt: block gamma into pwconv2, gamma -> ones
  fold_batchnorm(model)           seg / depth heads (eval mode): BatchNorm2d into the 1x1 conv after it
  fold_normalization(model, mean, std)
                                  patch embedding (ViT) or stem conv (ConvNeXt) takes x - PIXEL_CENTRE
                                  for 0..255 pixels x
  fold_all(model, normalization=None) -> (folded copy, list of Fold records)
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .convnext import ConvNeXt, ConvNeXtBlock
from .heads import BinsDepthHead, LinearSegHead
from .layers import LayerScale, SelfAttentionBlock, SwiGLUFFN
from .vit import DinoVisionTransformer


@dataclass(frozen=True)
class Fold:
    """One fold that was applied: what kind, which module was merged away, which absorbed it."""

    kind: str  # "layerscale" | "convnext_gamma" | "batchnorm" | "normalization"
    source: str
    target: str

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.kind}: {self.source} -> {self.target}"


def scaled_branches(model: nn.Module) -> Iterator[tuple[str, nn.Linear, str, nn.Module]]:
    """(linear name, linear, scale name, owner) for every per-channel scale applied right after a
    linear's output: ViT blocks' (attn.proj, ls1) and (mlp.fc2 or mlp.w3, ls2), ConvNeXt blocks'
    (pwconv2, gamma). `owner` holds the scale: the LayerScale module, or the ConvNeXt block whose
    `gamma` parameter it is. Already folded LayerScales (Identity) are not listed."""
    for name, m in model.named_modules():
        p = f"{name}." if name else ""
        if isinstance(m, SelfAttentionBlock):
            ffn_out = m.mlp.w3 if isinstance(m.mlp, SwiGLUFFN) else m.mlp.fc2
            ffn_name = "mlp.w3" if isinstance(m.mlp, SwiGLUFFN) else "mlp.fc2"
            if isinstance(m.ls1, LayerScale):
                yield f"{p}attn.proj", m.attn.proj, f"{p}ls1", m.ls1
            if isinstance(m.ls2, LayerScale):
                yield f"{p}{ffn_name}", ffn_out, f"{p}ls2", m.ls2
        elif isinstance(m, ConvNeXtBlock):
            yield f"{p}pwconv2", m.pwconv2, f"{p}gamma", m


@torch.no_grad()
def scale_output_rows_(linear: nn.Linear, scale: torch.Tensor) -> None:
    """linear(x) * scale == linear'(x): output row c of weight and bias times scale[c], computed in
    float64 and rounded once to the parameter dtype."""
    s = scale.detach().double()
    linear.weight.copy_((linear.weight.double() * s[:, None]).to(linear.weight.dtype))
    if linear.bias is not None:
        linear.bias.copy_((linear.bias.double() * s).to(linear.bias.dtype))


def _fold_layerscale_(model: nn.Module, prefix: str = "") -> list[Fold]:
    done = []
    for name, m in list(model.named_modules()):
        if not isinstance(m, SelfAttentionBlock):
            continue
        for lin_name, lin, ls_name, ls in scaled_branches(m):
            scale_output_rows_(lin, ls.gamma)
            setattr(m, ls_name, nn.Identity())
            p = f"{prefix}{name}." if name else prefix
            done.append(Fold("layerscale", p + ls_name, p + lin_name))
    return done


def _fold_convnext_gamma_(model: nn.Module, prefix: str = "") -> list[Fold]:
    # The block computes `x + gamma * y` with gamma a parameter of the block; ones keep its state
    # dict and forward unchanged while the multiply becomes exact (x * 1.0 == x in every format).
    done = []
    for name, m in model.named_modules():
        if isinstance(m, ConvNeXtBlock) and not bool((m.gamma == 1).all()):
            scale_output_rows_(m.pwconv2, m.gamma)
            with torch.no_grad():
                m.gamma.fill_(1.0)
            p = f"{prefix}{name}." if name else prefix
            done.append(Fold("convnext_gamma", p + "gamma", p + "pwconv2"))
    return done


def _fold_batchnorm_(model: nn.Module, prefix: str = "") -> list[Fold]:
    # Heads compute conv1x1(bn(dropout(x))). Dropout is the identity in eval mode and BatchNorm with
    # running statistics is then y = a*x + c per channel, so conv(a*x + c) == conv'(x) with
    # W' = W * a (per input channel) and b' = b + W @ c. Only the eval-mode function is folded:
    # in training BatchNorm normalises with batch statistics and Dropout draws masks.
    done = []
    for name, m in model.named_modules():
        if not isinstance(m, LinearSegHead | BinsDepthHead) or not isinstance(m.batchnorm_layer, nn.BatchNorm2d):
            continue
        bn, conv = m.batchnorm_layer, m.conv
        if m.training:
            raise ValueError(f"'{prefix}{name}' is in training mode: BatchNorm folds only in eval mode")
        if bn.running_mean is None or conv.kernel_size != (1, 1) or conv.groups != 1:
            continue  # batch statistics even in eval, or not a plain 1x1 conv: not exactly foldable
        with torch.no_grad():
            inv = torch.rsqrt(bn.running_var.double() + bn.eps)
            a = inv * (bn.weight.double() if bn.weight is not None else 1.0)
            c = (bn.bias.double() if bn.bias is not None else 0.0) - bn.running_mean.double() * a
            w = conv.weight.double()  # [out, in, 1, 1]
            b = conv.bias.double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
            new_b = b + w[:, :, 0, 0] @ c
            conv.weight.copy_((w * a[None, :, None, None]).to(conv.weight.dtype))
            if conv.bias is None:
                conv.bias = nn.Parameter(new_b.to(conv.weight.dtype))
            else:
                conv.bias.copy_(new_b.to(conv.bias.dtype))
        m.batchnorm_layer = nn.Identity()
        p = f"{prefix}{name}." if name else prefix
        done.append(Fold("batchnorm", p + "batchnorm_layer", p + "conv"))
    return done


# What the normalisation-folded input conv subtracts from 0..255 pixels. Exact in fp32, fp16 and bf16
# (every x - 127.5 is a half-integer of magnitude <= 127.5: 8 significant bits). Without it the folded
# conv sums all-positive pixels into a large value that its bias then cancels (~2.4x the result on
# photographs), which doubles the conv's rounding error: measured on vit_tiny_test, conv output rel
# error vs float64 1.1e-6 raw / 6e-7 centred / 5e-7 unfolded in fp32, and 6.0e-3 / 2.9e-3 / 3.2e-3 in
# bf16 (whole model: 1.6e-2 raw vs 1.2e-2 unfolded, against a 2e-2 bound).
PIXEL_CENTRE = 127.5


def _input_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """The first conv every pixel goes through: the ViT patch embedding or the ConvNeXt stem."""
    for name, m in model.named_modules():
        p = f"{name}." if name else ""
        if isinstance(m, DinoVisionTransformer):
            return p + "patch_embed.proj", m.patch_embed.proj
        if isinstance(m, ConvNeXt):
            return p + "downsample_layers.0.0", m.downsample_layers[0][0]
    return None


def _fold_normalization_(model: nn.Module, mean: Sequence[float], std: Sequence[float], prefix: str = "") -> list[Fold]:
    # conv((x/255 - mean)/std) == conv'(x - C) with C = PIXEL_CENTRE, W'[:, c] = W[:, c] / (255 std_c)
    # and b' = b + sum_{c,kh,kw} W[:, c, kh, kw] (C/255 - mean_c) / std_c, for every output position
    # only when each window sees input pixels alone: a zero-padded border would read 0 (black) after
    # the fold but 0 (the mean colour) before. Both backbones' first convs have no padding (ViT:
    # kernel = stride = 16; ConvNeXt stem: kernel = stride = 4), so the fold is exact for them.
    found = _input_conv(model)
    if found is None:
        raise ValueError("no ViT patch embedding or ConvNeXt stem in this model: nothing to fold normalisation into")
    name, conv = found
    pads = conv.padding != "valid" if isinstance(conv.padding, str) else any(conv.padding)
    if pads:
        raise ValueError(f"'{prefix}{name}' pads its input: folding normalisation would change border outputs")
    if len(mean) != conv.in_channels or len(std) != conv.in_channels:
        raise ValueError(f"mean/std need {conv.in_channels} values, got {len(mean)} and {len(std)}")
    with torch.no_grad():
        m = torch.tensor(mean, dtype=torch.float64)
        s = torch.tensor(std, dtype=torch.float64)
        w = conv.weight.double()  # [out, in, kh, kw]
        b = conv.bias.double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        new_b = b + (w * ((PIXEL_CENTRE / 255.0 - m) / s)[None, :, None, None]).sum(dim=(1, 2, 3))
        conv.weight.copy_((w / (255.0 * s)[None, :, None, None]).to(conv.weight.dtype))
        if conv.bias is None:
            conv.bias = nn.Parameter(new_b.to(conv.weight.dtype))
        else:
            conv.bias.copy_(new_b.to(conv.bias.dtype))
    return [Fold("normalization", "input (x/255 - mean)/std", prefix + name)]


def fold_layerscale(model: nn.Module) -> nn.Module:
    """A copy of `model` whose ViT LayerScales are merged into the linear before them."""
    model = copy.deepcopy(model)
    _fold_layerscale_(model)
    return model


def fold_convnext_gamma(model: nn.Module) -> nn.Module:
    """A copy of `model` whose ConvNeXt block gammas are merged into pwconv2 (gammas become ones)."""
    model = copy.deepcopy(model)
    _fold_convnext_gamma_(model)
    return model


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` (eval mode) whose seg / depth heads' BatchNorm is merged into their 1x1 conv."""
    model = copy.deepcopy(model)
    _fold_batchnorm_(model)
    return model


def fold_normalization(model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """A copy of `model` that takes `x - PIXEL_CENTRE` for pixels x in 0..255 (any float dtype) instead of
    (x/255 - mean)/std."""
    model = copy.deepcopy(model)
    _fold_normalization_(model, mean, std)
    return model


def fold_all(
    model: nn.Module, normalization: tuple[Sequence[float], Sequence[float]] | None = None
) -> tuple[nn.Module, list[Fold]]:
    """A copy of `model` with every exact fold that applies, and the list of folds made.

    LayerScale, ConvNeXt gamma and head BatchNorm folds keep the model's interface. The
    normalisation fold changes what the input means (`pixels - PIXEL_CENTRE` instead of normalised
    images), so it is applied only when `normalization=(mean, std)` is given; a DeployModule built on
    such a model needs `uint8_input=True, normalization_folded=True`. BatchNorm folds need eval mode."""
    model = copy.deepcopy(model)
    done = _fold_layerscale_(model) + _fold_convnext_gamma_(model) + _fold_batchnorm_(model)
    if normalization is not None:
        done += _fold_normalization_(model, *normalization)
    return model, done
