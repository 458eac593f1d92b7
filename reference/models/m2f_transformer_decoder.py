"""Mask2Former's masked-attention transformer decoder, as the release configures it.

100 learned queries go through 9 layers (post-norm): cross-attention to one encoder level (stride
32, 16, 8 in turn), masked by the previous prediction (a query sees only where its mask logit,
resized to that level, has sigmoid >= 0.5; a query that would see nothing sees everything), then
self-attention, then a ReLU FFN. Class logits (C + 1, the last one "no object") and mask logits
(the mask-embedding MLP dotted with the stride-4 mask features) come from the shared `post_norm`
before layer 0 and after each layer. Key names follow the release (`transformer_*_layers.N`,
`self_attn` / `multihead_attn` with nn.MultiheadAttention's `in_proj_*` / `out_proj`, `query_feat`,
`query_embed`, `level_embed`, `class_embed`, `mask_embed.layers.N`).

Export-minded: the mask is additive and finite (MASK_BIAS) with the softmax in fp32, fully masked
rows are released with `m & ~m.all(-1, keepdim=True)` (not index assignment), the same mask serves
every head by broadcasting (no `.repeat`), and the attention is written out (no fused
MultiheadAttention kernel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers.norm import LayerNorm  # fp32 statistics under fp16/bf16, as the backbone's
from .m2f_pixel_decoder import N_LEVELS, sine_position_encoding

# Added to the scores of masked keys. Finite (fits fp16 too) so no row can become NaN; exp(-3e4)
# is 0 in fp32, so it equals -inf whenever the scores of one row span less than ~3e4.
MASK_BIAS = -3.0e4


class Attention(nn.Module):
    """Multi-head attention with nn.MultiheadAttention's parameters (`in_proj_weight` [3C, C],
    `in_proj_bias`, `out_proj`), batch first, an optional additive bias [B, 1|heads, Lq, Lk]."""

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, q, k, v, bias: torch.Tensor | None = None) -> torch.Tensor:
        B, Lq, C = q.shape
        M = self.n_heads
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)
        q = F.linear(q, wq, bq).view(B, Lq, M, C // M).transpose(1, 2)
        k = F.linear(k, wk, bk).view(B, -1, M, C // M).transpose(1, 2)
        v = F.linear(v, wv, bv).view(B, -1, M, C // M).transpose(1, 2)
        scores = (q * (C // M) ** -0.5) @ k.transpose(-2, -1)
        scores = scores.float()
        if bias is not None:
            scores = scores + bias
        out = scores.softmax(-1).to(v.dtype) @ v
        return self.out_proj(out.transpose(1, 2).reshape(B, Lq, C))


class SelfAttentionLayer(nn.Module):
    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.self_attn = Attention(dim, n_heads)
        self.norm = LayerNorm(dim)

    def forward(self, x, query_pos):
        q = x + query_pos
        return self.norm(x + self.self_attn(q, q, x))


class CrossAttentionLayer(nn.Module):
    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.multihead_attn = Attention(dim, n_heads)
        self.norm = LayerNorm(dim)

    def forward(self, x, memory, bias, pos, query_pos):
        return self.norm(x + self.multihead_attn(x + query_pos, memory + pos, memory, bias))


class FFNLayer(nn.Module):
    def __init__(self, dim: int, ffn: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm = LayerNorm(dim)

    def forward(self, x):
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


class MLP(nn.Module):
    def __init__(self, dim: int, out: int, n_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim if i < n_layers - 1 else out) for i in range(n_layers))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def attention_bias(mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, 1, Q, h*w] additive bias: MASK_BIAS where the mask logits resized to `size` have
    sigmoid < 0.5, except on rows (queries) that would be masked everywhere."""
    m = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
    masked = m.sigmoid().flatten(2) < 0.5
    masked = masked & ~masked.all(-1, keepdim=True)
    return (masked.to(torch.float32) * MASK_BIAS)[:, None]


class MultiScaleMaskedTransformerDecoder(nn.Module):
    def __init__(self, hidden: int, num_classes: int, *, n_queries: int = 100, n_heads: int = 16, ffn: int = 4096,
                 n_layers: int = 9) -> None:
        super().__init__()
        self.transformer_self_attention_layers = nn.ModuleList(SelfAttentionLayer(hidden, n_heads)
                                                               for _ in range(n_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(CrossAttentionLayer(hidden, n_heads)
                                                                for _ in range(n_layers))
        self.transformer_ffn_layers = nn.ModuleList(FFNLayer(hidden, ffn) for _ in range(n_layers))
        self.post_norm = LayerNorm(hidden)
        self.query_feat = nn.Embedding(n_queries, hidden)
        self.query_embed = nn.Embedding(n_queries, hidden)
        self.level_embed = nn.Embedding(N_LEVELS, hidden)
        self.class_embed = nn.Linear(hidden, num_classes + 1)
        self.mask_embed = MLP(hidden, hidden, 3)

    def predict_heads(self, x: torch.Tensor, mask_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits [B, Q, C+1], mask logits [B, Q, h4, w4]) of queries x [B, Q, hidden]."""
        x = self.post_norm(x)
        return self.class_embed(x), torch.einsum("bqc,bchw->bqhw", self.mask_embed(x), mask_features)

    def forward(self, levels: list[torch.Tensor], mask_features: torch.Tensor, *, aux: bool = False) -> dict:
        """levels: [s32, s16, s8] maps [B, hidden, h, w]. Returns the last prediction
        ({"pred_logits", "pred_masks"}), with the 9 earlier ones as "aux_outputs" when `aux`."""
        B = mask_features.shape[0]
        sizes = [(lv.shape[-2], lv.shape[-1]) for lv in levels]
        memory, pos = [], []
        for i, lv in enumerate(levels):
            h, w = sizes[i]
            pos.append(sine_position_encoding(h, w, lv.shape[1], device=lv.device).to(lv.dtype).flatten(2)
                       .transpose(1, 2))
            memory.append(lv.flatten(2).transpose(1, 2) + self.level_embed.weight[i])
        query_pos = self.query_embed.weight[None].expand(B, -1, -1)
        x = self.query_feat.weight[None].expand(B, -1, -1)
        logits, masks = self.predict_heads(x, mask_features)
        preds = [(logits, masks)]
        for i, (cross, self_attn, ffn) in enumerate(zip(self.transformer_cross_attention_layers,
                                                        self.transformer_self_attention_layers,
                                                        self.transformer_ffn_layers)):
            lvl = i % N_LEVELS
            x = cross(x, memory[lvl], attention_bias(masks, sizes[lvl]), pos[lvl], query_pos)
            x = self_attn(x, query_pos)
            x = ffn(x)
            logits, masks = self.predict_heads(x, mask_features)
            preds.append((logits, masks))
        out = {"pred_logits": logits, "pred_masks": masks}
        if aux:
            out["aux_outputs"] = [{"pred_logits": c, "pred_masks": m} for c, m in preds[:-1]]
        return out
