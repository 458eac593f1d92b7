"""`get_intermediate_layers`, the release's API for the outputs of chosen blocks, for both families.

Heads, the trainer and export call it on a ViT or a ConvNeXt alike, so the argument semantics must
not drift between the two: an int `n` takes the last n blocks (ConvNeXt: stages), a sequence takes
those 0-based indices; each result is the map alone, or a tuple with the class token and/or the
extra (storage) tokens. Those rules live here once; what a block's output *is* stays with each
backbone, in its `_intermediate(x, take, reshape=, norm=)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def layers_to_take(n: int | Sequence[int], depth: int) -> list[int]:
    """Block indices for `n`: the last n blocks (int) or the given 0-based indices (sequence)."""
    take = list(range(depth - n, depth)) if isinstance(n, int) else [int(i) for i in n]
    bad = [i for i in take if not 0 <= i < depth]
    if bad or not take:
        raise ValueError(f"layers {list(n) if not isinstance(n, int) else n} out of range for {depth} blocks")
    return take


def pack_layers(outputs, cls_tokens, extra, return_class_token: bool, return_extra_tokens: bool) -> tuple:
    """One entry per taken block: the map, or (map, cls), (map, extra) or (map, cls, extra)."""
    if return_class_token and return_extra_tokens:
        return tuple(zip(outputs, cls_tokens, extra))
    if return_class_token:
        return tuple(zip(outputs, cls_tokens))
    if return_extra_tokens:
        return tuple(zip(outputs, extra))
    return tuple(outputs)


class IntermediateLayers:
    """Mixin for a backbone with `n_blocks` and
    `_intermediate(x, take, *, reshape, norm) -> (maps, cls_tokens, extra_tokens)`, lists in `take` order."""

    n_blocks: int

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        n: int | Sequence[int] = 1,
        *,
        reshape: bool = False,
        return_class_token: bool = False,
        return_extra_tokens: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Outputs of blocks `n` (int: the last n; sequence: those 0-based indices). `norm` applies the
        final norm; `reshape` gives [B, D, h, w] maps instead of [B, hw, D] tokens."""
        take = layers_to_take(n, self.n_blocks)
        outputs, cls_tokens, extra = self._intermediate(x, take, reshape=reshape, norm=norm)
        return pack_layers(outputs, cls_tokens, extra, return_class_token, return_extra_tokens)

    def _intermediate(self, x: torch.Tensor, take: list[int], *, reshape: bool, norm: bool):
        raise NotImplementedError
