"""Post-norm transformer layers of the DETR family (DETR style: positions are explicit inputs).

`EncoderLayer` (self-attention), `CrossAttentionLayer` (QD-DETR / MESM "T2V": queries attend to another
modality) and `DETRDecoderLayer` (Moment-DETR's vanilla decoder). Attention, the residual dropouts and the
FFN run on `c2f_lib.models.fused`; state-dict names are those of nn.MultiheadAttention / nn.Sequential.
"""
from __future__ import annotations

import torch
from torch import nn

from c2f_lib.models.fused import Attention, FusedSequential, dropout_add


def feed_forward(d: int, ffn: int, dropout: float, activation: str) -> FusedSequential:
    """Linear -> PReLU (one learned slope) or ReLU -> Dropout -> Linear."""
    act = nn.PReLU() if activation == "prelu" else nn.ReLU()
    return FusedSequential(nn.Linear(d, ffn), act, nn.Dropout(dropout), nn.Linear(ffn, d))


def _with(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return x if pos is None else x + pos


class EncoderLayer(nn.Module):
    """Post-norm self-attention layer; positions are added to queries and keys."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, activation: str):
        super().__init__()
        self.attn = Attention(d, heads, dropout)
        self.ffn = feed_forward(d, ffn, dropout, activation)
        self.norm1, self.norm2, self.drop = nn.LayerNorm(d), nn.LayerNorm(d), nn.Dropout(dropout)

    def forward(self, x, pos, mask):                      # x, pos [B, L, d], mask [B, L] True = valid
        p, training = self.drop.p, self.training
        x = self.norm1(dropout_add(x, self.attn.self_attend(x, pos, mask), p, training))
        return self.norm2(dropout_add(x, self.ffn(x), p, training))


class CrossAttentionLayer(nn.Module):
    """QD-DETR/MESM "T2V" layer: queries attend to a second modality.

    x = q + Drop(MHA(q + pos_q, k + pos_k, k)); x = x + Drop(FFN(LN1(x))); out = LN2(x).
    """

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, activation: str):
        super().__init__()
        self.attn = Attention(d, heads, dropout)
        self.ffn = feed_forward(d, ffn, dropout, activation)
        self.norm1, self.norm2, self.drop = nn.LayerNorm(d), nn.LayerNorm(d), nn.Dropout(dropout)

    def forward(self, q, k, k_mask, pos_q=None, pos_k=None, *, kv=None, q_proj=None):
        """q [B, Lq, d], k [B, Lk, d] (or None with `kv`), k_mask [B, Lk] -> [B, Lq, d]; `kv` / `q_proj`: the
        attention's projections of k / q + pos_q when computed before (Attention.project_keys/_queries)."""
        # A row with no valid key would give NaN; let it see everything (its output is masked later anyway).
        k_mask = k_mask | ~k_mask.any(1, keepdim=True)
        p, training = self.drop.p, self.training
        queries = None if q_proj is not None else _with(q, pos_q)
        x = dropout_add(q, self.attn.cross_attend(queries, k, k_mask, pos_k, q=q_proj, kv=kv), p, training)
        return self.norm2(dropout_add(x, self.ffn(self.norm1(x)), p, training))


class DETRDecoderLayer(nn.Module):
    """Vanilla DETR decoder layer (Moment-DETR): learned query positions, post-norm."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, activation: str):
        super().__init__()
        self.self_attn = Attention(d, heads, dropout)
        self.cross_attn = Attention(d, heads, dropout)
        self.ffn = feed_forward(d, ffn, dropout, activation)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(3))
        self.drop = nn.Dropout(dropout)

    def forward(self, tgt, memory, mem_mask, query_pos, mem_pos):   # tgt, query_pos [B, Q, d]; memory [B, L, d]
        p, training = self.drop.p, self.training
        tgt = self.norms[0](dropout_add(tgt, self.self_attn.self_attend(tgt, query_pos, None), p, training))
        attended = self.cross_attn.cross_attend(tgt + query_pos, memory, mem_mask, mem_pos)
        tgt = self.norms[1](dropout_add(tgt, attended, p, training))
        return self.norms[2](dropout_add(tgt, self.ffn(tgt), p, training))
