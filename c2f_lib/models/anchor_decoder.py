"""The DAB-DETR-style decoder over 1-D anchors of QD-DETR and MESM (Conditional-DETR attention).

Residual dropouts and the FFN run on `c2f_lib.models.fused`; state-dict names are unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from c2f_lib.models.detr_blocks import MLP, sine_embed
from c2f_lib.models.detr_layers import feed_forward
from c2f_lib.models.fused import dropout_add
from c2f_lib.models.span_utils import inverse_sigmoid


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:      # [B, N, d] -> [B, h, N, d/h]
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


class DecoderSelfAttention(nn.Module):
    """Conditional-DETR self-attention: separate content and position projections, summed per role."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q_content, self.q_pos = nn.Linear(d, d), nn.Linear(d, d)
        self.k_content, self.k_pos, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, d)

    def forward(self, tgt, query_pos, attn_mask=None):     # [B, Q, d] each; attn_mask [B, 1, Q, Q] True = attend
        q = _split_heads(self.q_content(tgt) + self.q_pos(query_pos), self.heads)
        k = _split_heads(self.k_content(tgt) + self.k_pos(query_pos), self.heads)
        out = F.scaled_dot_product_attention(q, k, _split_heads(self.v(tgt), self.heads), attn_mask=attn_mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out(out.transpose(1, 2).flatten(-2))


class ConditionalCrossAttention(nn.Module):
    """Conditional-DETR cross-attention: per head, content and position are concatenated (width 2d).

    Only the first decoder layer adds the query/key positions to the content (`q_pos` exists there only).
    """

    def __init__(self, d: int, heads: int, dropout: float, first: bool):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q_content, self.k_content = nn.Linear(d, d), nn.Linear(d, d)
        self.q_pos = nn.Linear(d, d) if first else None
        self.k_pos, self.q_sine, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, d)

    def forward(self, tgt, query_pos, query_sine, memory, mem_pos, mem_mask):
        q, k, k_pos = self.q_content(tgt), self.k_content(memory), self.k_pos(mem_pos)
        if self.q_pos is not None:
            q, k = q + self.q_pos(query_pos), k + k_pos
        h = self.heads
        q = torch.cat([_split_heads(q, h), _split_heads(self.q_sine(query_sine), h)], -1)   # [B, h, Q, 2d/h]
        k = torch.cat([_split_heads(k, h), _split_heads(k_pos, h)], -1)                      # [B, h, L, 2d/h]
        attn_mask = mem_mask[:, None, None, :]                                               # [B, 1, 1, L]
        out = F.scaled_dot_product_attention(q, k, _split_heads(self.v(memory), h), attn_mask=attn_mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out(out.transpose(1, 2).flatten(-2))


class AnchorDecoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int, dropout: float, activation: str, first: bool):
        super().__init__()
        self.self_attn = DecoderSelfAttention(d, heads, dropout)
        self.cross_attn = ConditionalCrossAttention(d, heads, dropout, first)
        self.ffn = feed_forward(d, ffn, dropout, activation)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(3))
        self.drop = nn.Dropout(dropout)

    def forward(self, tgt, query_pos, query_sine, memory, mem_pos, mem_mask, self_mask=None):
        p, training = self.drop.p, self.training
        tgt = self.norms[0](dropout_add(tgt, self.self_attn(tgt, query_pos, self_mask), p, training))
        attended = self.cross_attn(tgt, query_pos, query_sine, memory, mem_pos, mem_mask)
        tgt = self.norms[1](dropout_add(tgt, attended, p, training))
        return self.norms[2](dropout_add(tgt, self.ffn(tgt), p, training))


class AnchorDecoder(nn.Module):
    """DAB-DETR-style decoder over 1-D anchors (center, width), refined layer by layer (QD-DETR / MESM).

    Returns the normalised hidden states [n_layers, B, Q, d] and the anchors each layer started from
    [n_layers, B, Q, 2]; the model's span head predicts offsets to those anchors. The refinement
    (`bbox_embed`, on the un-normalised output) keeps its gradient into the returned anchors but is
    detached before it feeds the next layer, as in the references.
    """

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, activation: str, n_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(AnchorDecoderLayer(d, heads, ffn, dropout, activation, first=i == 0)
                                    for i in range(n_layers))
        self.ref_point_head = MLP(d, d, d, 2)        # sine(center) ++ sine(width) -> query position
        self.query_scale = MLP(d, d, d, 2)           # content-dependent scaling from layer 2 on
        self.ref_anchor_head = MLP(d, d, 1, 2)       # width modulation of the temporal attention
        self.bbox_embed = MLP(d, d, 2, 3)            # anchor refinement between layers
        nn.init.zeros_(self.bbox_embed[-1].weight)
        nn.init.zeros_(self.bbox_embed[-1].bias)
        self.norm = nn.LayerNorm(d)
        self.d = d

    def forward(self, memory, mem_mask, mem_pos, anchors, self_mask=None):   # anchors [B, Q, 2] in (0, 1)
        """`self_mask` [B, 1, Q, Q] (True = attend) restricts the queries' self-attention (denoising)."""
        tgt = torch.zeros(*anchors.shape[:2], self.d, device=memory.device, dtype=memory.dtype)
        hidden, starts, refs = [], [], anchors            # refs: what the layer reads (detached after layer 1)
        for i, layer in enumerate(self.layers):
            starts.append(anchors)
            query_sine = torch.cat([sine_embed(refs[..., 0], self.d // 2),
                                    sine_embed(refs[..., 1], self.d // 2)], -1)          # [B, Q, d]
            query_pos = self.ref_point_head(query_sine)
            if i > 0:
                query_sine = query_sine * self.query_scale(tgt)
            width_ratio = self.ref_anchor_head(tgt).sigmoid()[..., 0] / refs[..., 1].clamp(min=1e-3)
            tgt = layer(tgt, query_pos, query_sine * width_ratio[..., None], memory, mem_pos, mem_mask, self_mask)
            anchors = (self.bbox_embed(tgt) + inverse_sigmoid(refs)).sigmoid()             # [B, Q, 2]
            refs = anchors.detach()
            hidden.append(self.norm(tgt))
        return torch.stack(hidden), torch.stack(starts)


