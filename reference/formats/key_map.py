"""Declarative key maps between a foreign checkpoint layout and the official DINOv3 layout.

A converter written as two hand-mirrored functions (foreign -> official, official -> foreign) drifts:
a rename or a special case fixed in one direction is forgotten in the other, and the round trip breaks
on the next model variant. Here each foreign layout is one table of rules, and every rule knows both
directions, so `KeyMap.to_official` and `KeyMap.from_official` are derived from the same entries.

Patterns name keys with `{i}`-style fields (digits: block, stage, layer indices) and an optional
trailing `*` (the rest of the key, e.g. `weight` / `bias`); a field means the same thing on both sides.
Rules, applied in table order (the first rule that claims a key wins):

- `Rename` (`renames` makes them from a dict): one official key <-> one foreign key, optionally
  reshaped, optionally also filling official keys that the model ties to the same tensor (they must
  agree on the way out);
- `Fuse`: one official tensor <-> several foreign tensors concatenated along dim 0 (q/k/v weights);
- `QkvBias`: the official fused `qkv.bias` and its K `bias_mask` <-> separate q/v (and optional k) biases;
- `Recompute`: official keys no foreign layout stores, dropped on the way out, recomputed on the
  way in (a key the checkpoint already holds in the official layout wins);
- `Discard`: foreign-only keys that carry no trained value (non-persistent buffers), dropped on the way in.

On the way in, keys no rule claims pass through unchanged, so the strict load names them; on the way
out they are an error naming them, because the foreign library would refuse or ignore them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch

from dinov3_deploy.errors import CheckpointError

from ..configs import BackboneConfig, ViTConfig

StateDict = dict[str, torch.Tensor]
Fields = dict[str, str]
Condition = Callable[[BackboneConfig], bool]


# -- patterns --------------------------------------------------------------------------------
@functools.cache
def _regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for tok in re.split(r"(\{\w+\}|\*)", pattern):
        if tok == "*":
            parts.append(r"(?P<_rest>.+)")
        elif tok.startswith("{") and tok.endswith("}"):
            parts.append(rf"(?P<{tok[1:-1]}>\d+)")
        else:
            parts.append(re.escape(tok))
    return re.compile("".join(parts))


def _matches(sd: Mapping[str, torch.Tensor], pattern: str) -> list[tuple[str, Fields]]:
    """(key, fields) for every key of `sd` the pattern matches whole; a snapshot, so callers may pop."""
    rx = _regex(pattern)
    return [(k, m.groupdict()) for k in list(sd) if (m := rx.fullmatch(k))]


def _fill(pattern: str, fields: Fields) -> str:
    return re.sub(r"\{(\w+)\}|\*", lambda m: fields[m[1] or "_rest"], pattern)


@dataclass(frozen=True)
class _Context:
    cfg: BackboneConfig
    original: Mapping[str, torch.Tensor]  # the input state dict, before any rule popped from it


class Rule(Protocol):
    when: Condition | None

    def load(self, src: StateDict, out: StateDict, ctx: _Context) -> None:
        """Foreign -> official: pop what this rule claims from `src`, write official keys into `out`."""

    def save(self, src: StateDict, out: StateDict, ctx: _Context) -> None:
        """Official -> foreign: pop what this rule claims from `src`, write foreign keys into `out`."""


# -- rules -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rename:
    official: str
    foreign: str
    also: tuple[str, ...] = ()  # more official keys the model ties to this tensor
    shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # (official, foreign) for reshape
    when: Condition | None = None

    def load(self, src: StateDict, out: StateDict, ctx: _Context) -> None:
        for key, fields in _matches(src, self.foreign):
            t = src.pop(key)
            t = t if self.shapes is None else t.reshape(self.shapes[0])
            for name in (self.official, *self.also):
                out[_fill(name, fields)] = t

    def save(self, src: StateDict, out: StateDict, ctx: _Context) -> None:
        for key, fields in _matches(src, self.official):
            t = src.pop(key)
            out[_fill(self.foreign, fields)] = t if self.shapes is None else t.reshape(self.shapes[1])
        for tied in self.also:
            for key, fields in _matches(src, tied):
                t, main = src.pop(key), _fill(self.official, fields)
                other = ctx.original.get(main)
                if other is not None and not torch.equal(other, t):
                    raise CheckpointError(f"{key} differs from {main}; the official model shares them")


def renames(table: Mapping[str, str], *, within: tuple[str, str] = ("", ""),
            when: Condition | None = None) -> tuple[Rename, ...]:
    """`Rename` rules from {official: foreign}, both sides under a prefix (`within`: official, foreign)."""
    return tuple(Rename(within[0] + o, within[1] + f, when=when) for o, f in table.items())


@dataclass(frozen=True)
class Fuse:
    official: str
    foreign: tuple[str, ...]  # the parts, in concatenation order along dim 0
    when: Condition | None = None

    def load(self, src: StateDict, out: StateDict, ctx: _Context) -> None:
        for _, fields in _matches(src, self.foreign[0]):
            names = [_fill(p, fields) for p in self.foreign]
            if all(n in src for n in names):  # an incomplete set stays for the strict load to name
                out[_fill(self.official, fields)] = torch.cat([src.pop(n) for n in names], dim=0)

    def save(self, src: StateDict, out: StateDict, ctx: _Context) -> None:
        for key, fields in _matches(src, self.official):
            for name, part in zip(self.foreign, src.pop(key).chunk(len(self.foreign), dim=0), strict=True):
                out[_fill(name, fields)] = part.clone()  # a view would drag the whole tensor into the file


@dataclass(frozen=True)
class QkvBias:
    """The official attention keeps one fused `qkv.bias` and, in the released models, a persistent
    `bias_mask` (1 for q, 0 for k, 1 for v) applied to it: Meta trained without a K bias but left the
    K third of the parameter in place. Foreign layouts store q and v biases separately; some may carry
    a K bias (`k`, read when present and then kept unmasked), none can be written one (`refuse` says why)."""

    qkv: str  # the official module, e.g. "blocks.{i}.attn.qkv"
    q: str
    v: str
    refuse: str
    k: str | None = None
    when: Condition | None = None

    def load(self, src: StateDict, out: StateDict, ctx: _Context) -> None:
        cfg = ctx.cfg
        if not cfg.qkv_bias:
            return  # foreign biases stay: the strict load names them
        # Anchored on the converted weight: bias-free foreign variants are the official network
        # with zero q/v biases.
        for key, fields in _matches(out, self.qkv + ".weight"):
            w = out[key]
            zero = torch.zeros(w.shape[1], dtype=w.dtype)
            q, v = (src.pop(_fill(p, fields), None) for p in (self.q, self.v))
            k = src.pop(_fill(self.k, fields), None) if self.k else None
            parts = [zero if t is None else t for t in (q, k, v)]
            out[_fill(self.qkv + ".bias", fields)] = torch.cat(parts)
            if cfg.mask_k_bias:
                k_on = torch.ones_like(zero) if k is not None else zero  # a K bias that exists is used
                ones = torch.ones_like(zero)
                out[_fill(self.qkv + ".bias_mask", fields)] = torch.cat([ones, k_on, ones])

    def save(self, src: StateDict, out: StateDict, ctx: _Context) -> None:
        for key, fields in _matches(src, self.qkv + ".bias"):
            bias = src.pop(key)
            mask = src.pop(_fill(self.qkv + ".bias_mask", fields), None)
            q, k, v = (bias if mask is None else bias * mask.to(bias.dtype)).chunk(3)
            if torch.count_nonzero(k):
                raise CheckpointError(f"{key} has a non-zero key bias (after bias_mask); {self.refuse}")
            out[_fill(self.q, fields)], out[_fill(self.v, fields)] = q.clone(), v.clone()


@dataclass(frozen=True)
class Recompute:
    official: tuple[str, ...]  # exact keys, made together
    make: Callable[[BackboneConfig, StateDict], StateDict | None]  # (cfg, converted so far) -> tensors
    when: Condition | None = None
    late = True  # runs after every other rule, so `make` sees what they converted

    def load(self, src: StateDict, out: StateDict, ctx: _Context) -> None:
        if not any(k in out or k in src for k in self.official):
            out.update(self.make(ctx.cfg, out) or {})

    def save(self, src: StateDict, out: StateDict, ctx: _Context) -> None:
        for k in self.official:
            src.pop(k, None)


@dataclass(frozen=True)
class Discard:
    foreign: str
    when: Condition | None = None

    def load(self, src: StateDict, out: StateDict, ctx: _Context) -> None:
        for key, _ in _matches(src, self.foreign):
            src.pop(key)

    def save(self, src: StateDict, out: StateDict, ctx: _Context) -> None:
        pass


# -- the engine ------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeyMap:
    layout: str  # as users know it, for messages: "Hugging Face", "timm"
    tables: Mapping[str, tuple[Rule, ...]]  # per model family ("vit", "convnext")

    def rules(self, cfg: BackboneConfig) -> list[Rule]:
        return [r for r in self.tables[cfg.family] if r.when is None or r.when(cfg)]

    def to_official(self, sd: Mapping[str, torch.Tensor], cfg: BackboneConfig) -> StateDict:
        ctx, src, out = _Context(cfg, sd), dict(sd), {}
        for rule in sorted(self.rules(cfg), key=lambda r: getattr(r, "late", False)):
            rule.load(src, out, ctx)
        out.update(src)  # unclaimed keys, official ones included: what the checkpoint holds wins
        return out

    def from_official(self, sd: Mapping[str, torch.Tensor], cfg: BackboneConfig) -> StateDict:
        ctx, src, out = _Context(cfg, sd), dict(sd), {}
        for rule in self.rules(cfg):
            rule.save(src, out, ctx)
        if src:
            left = sorted(src)
            more = f", ... ({len(left)} in all)" if len(left) > 8 else ""
            raise CheckpointError(f"no {self.layout} name for: {', '.join(left[:8])}{more}; is --model right?")
        return out


# -- official keys that foreign layouts do not store -----------------------------------------
def rope_periods(cfg: ViTConfig, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The periods buffer as the official code computes it at init (fp32, not rounded)."""
    from ..models.layers.rope import rope_periods as periods

    return periods(cfg.head_dim, cfg.rope_base).to(dtype)


def _identity_local_cls_norm(cfg: BackboneConfig, out: StateDict) -> StateDict | None:
    # Training-only norm (7B, SAT) that foreign layouts drop; an identity keeps the strict load possible.
    if not cfg.local_cls_norm:
        return None
    return {"local_cls_norm.weight": torch.ones(cfg.embed_dim), "local_cls_norm.bias": torch.zeros(cfg.embed_dim)}


def _zero_mask_token(cfg: BackboneConfig, out: StateDict) -> StateDict:
    # Pretraining only (masked patches); inference multiplies it by 0.
    dtype = out["cls_token"].dtype if "cls_token" in out else torch.float32
    return {"mask_token": torch.zeros(1, cfg.embed_dim, dtype=dtype)}


# Named after the official key each makes. Stored periods may be bf16-rounded (Meta's files); foreign
# libraries recompute them in fp32, and so does the way in.
PERIODS = Recompute(("rope_embed.periods",), lambda cfg, out: {"rope_embed.periods": rope_periods(cfg)})
LOCAL_CLS_NORM = Recompute(("local_cls_norm.weight", "local_cls_norm.bias"), _identity_local_cls_norm)
MASK_TOKEN = Recompute(("mask_token",), _zero_mask_token)


def swiglu(cfg: BackboneConfig) -> bool:
    return cfg.ffn_layer == "swiglu"


def mlp(cfg: BackboneConfig) -> bool:
    return cfg.ffn_layer != "swiglu"
