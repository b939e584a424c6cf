"""Building blocks shared by Moment-DETR, QD-DETR and MESM (one place; the model files stay thin).

Post-norm transformer layers with explicit positional inputs (DETR style), the text->video
cross-attention layer of QD-DETR/MESM, a vanilla DETR decoder and a DAB-style anchor decoder, and the
`FineGroundingModel` base class with the shared input projections, heads and `predict`.
Positions are normalised sine embeddings, so any video length works (no 150-s cap).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from c2f_lib.features.types import MomentSample
from c2f_lib.models.fine_batch import MomentBatch, collate_moments, group_key
from c2f_lib.models.span_utils import POSTPROCESS_PROTOCOLS, inverse_sigmoid, postprocess_windows


FFN_ACTIVATIONS = ("prelu", "relu")


@dataclass
class FineConfig:
    """Fields every fine model shares (defaults = the papers' QVHighlights setting)."""

    video_dim: int = 512          # clip feature size (TEF [t/L, (t+1)/L] is appended inside the model)
    text_dim: int = 512           # token feature size
    hidden_dim: int = 256
    n_heads: int = 8
    ffn_dim: int = 1024
    dropout: float = 0.1
    input_dropout: float = 0.5
    n_input_proj: int = 2
    ffn_activation: str = "prelu"  # transformer FFN: "prelu" (QD-DETR, MESM) or "relu" (Moment-DETR)
    enc_layers: int = 2
    dec_layers: int = 2
    num_queries: int = 10
    use_tef: bool = True
    round_to_clip: bool = True    # post-processing: snap windows to the clip grid
    nms_threshold: float | None = None
    predict_batch_size: int = 32
    # Post-processing of `predict` (span_utils.postprocess_windows): "correct" (ours) or "reference"
    # (the official code: spans x duration, clamp to [0, max_ts_val], fp16 saliency); docs/DEVIATIONS.md.
    postprocess: str = "correct"
    max_ts_val: float = 150.0

    def __post_init__(self) -> None:
        if self.ffn_activation not in FFN_ACTIVATIONS:
            raise ValueError(f"ffn_activation must be one of {FFN_ACTIVATIONS}, got {self.ffn_activation!r}")
        if self.postprocess not in POSTPROCESS_PROTOCOLS:
            raise ValueError(f"postprocess must be one of {POSTPROCESS_PROTOCOLS}, got {self.postprocess!r}")


# ----------------------------------------------------------------------------- small pieces
def sine_embed(x: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sine/cosine embedding of scalars in [0, 1]: [...] -> [..., dim] (2π scaled, as DETR/DAB)."""
    freqs = temperature ** (2 * torch.arange(dim // 2, device=x.device) / dim)              # [dim/2]
    angles = x[..., None] * 2 * math.pi / freqs                                          # [..., dim/2]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)


def video_positions(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """[B, L] validity mask -> [B, L, dim] normalised sine positions (length-agnostic).

    Clip t of L sits at (t+1)/L, exactly the references' normalised `PositionEmbeddingSine`, so
    converted checkpoints see the positions they were trained with.
    """
    cum = mask.float().cumsum(1)
    return sine_embed(cum / (cum[:, -1:] + 1e-6), dim)


def temporal_endpoint_features(mask: torch.Tensor) -> torch.Tensor:
    """TEF: [B, L] -> [B, L, 2] = [t/L, (t+1)/L] for the real clips, 0 on padding."""
    t = torch.arange(mask.shape[1], device=mask.device, dtype=torch.float32)[None]
    length = mask.sum(1, keepdim=True).clamp(min=1)
    return torch.stack([t / length, (t + 1) / length], -1) * mask[..., None]


class MLP(nn.Sequential):
    def __init__(self, in_dim: int, hidden: int, out_dim: int, n_layers: int):
        dims = [in_dim] + [hidden] * (n_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < n_layers - 1:
                layers.append(nn.ReLU())
        super().__init__(*layers)


def input_projection(in_dim: int, d: int, n_layers: int, dropout: float) -> nn.Sequential:
    """n x [LayerNorm -> Dropout -> Linear], ReLU after all but the last (the reference's LinearLayer stack)."""
    layers: list[nn.Module] = []
    for i in range(n_layers):
        layers += [nn.LayerNorm(in_dim if i == 0 else d), nn.Dropout(dropout), nn.Linear(in_dim if i == 0 else d, d)]
        if i < n_layers - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def feed_forward(d: int, ffn: int, dropout: float, activation: str) -> nn.Sequential:
    """Linear -> PReLU (one learned slope) or ReLU -> Dropout -> Linear."""
    act = nn.PReLU() if activation == "prelu" else nn.ReLU()
    return nn.Sequential(nn.Linear(d, ffn), act, nn.Dropout(dropout), nn.Linear(ffn, d))


def _with(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return x if pos is None else x + pos


# ----------------------------------------------------------------------------- layers
class EncoderLayer(nn.Module):
    """Post-norm self-attention layer; positions are added to queries and keys."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, activation: str):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ffn = feed_forward(d, ffn, dropout, activation)
        self.norm1, self.norm2, self.drop = nn.LayerNorm(d), nn.LayerNorm(d), nn.Dropout(dropout)

    def forward(self, x, pos, mask):                      # x [B, L, d], mask [B, L] True = valid
        q = _with(x, pos)
        x = self.norm1(x + self.drop(self.attn(q, q, x, key_padding_mask=~mask, need_weights=False)[0]))
        return self.norm2(x + self.drop(self.ffn(x)))


class CrossAttentionLayer(nn.Module):
    """QD-DETR/MESM "T2V" layer: queries attend to a second modality.

    x = q + Drop(MHA(q + pos_q, k + pos_k, k)); x = x + Drop(FFN(LN1(x))); out = LN2(x).
    """

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, activation: str):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ffn = feed_forward(d, ffn, dropout, activation)
        self.norm1, self.norm2, self.drop = nn.LayerNorm(d), nn.LayerNorm(d), nn.Dropout(dropout)

    def forward(self, q, k, k_mask, pos_q=None, pos_k=None):   # q [B, Lq, d], k [B, Lk, d], k_mask [B, Lk]
        # A row with no valid key would give NaN; let it see everything (its output is masked later anyway).
        k_mask = k_mask | ~k_mask.any(1, keepdim=True)
        x = q + self.drop(self.attn(_with(q, pos_q), _with(k, pos_k), k, key_padding_mask=~k_mask,
                                    need_weights=False)[0])
        x = x + self.drop(self.ffn(self.norm1(x)))
        return self.norm2(x)


class DETRDecoderLayer(nn.Module):
    """Vanilla DETR decoder layer (Moment-DETR): learned query positions, post-norm."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, activation: str):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ffn = feed_forward(d, ffn, dropout, activation)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(3))
        self.drop = nn.Dropout(dropout)

    def forward(self, tgt, memory, mem_mask, query_pos, mem_pos):
        q = tgt + query_pos
        tgt = self.norms[0](tgt + self.drop(self.self_attn(q, q, tgt, need_weights=False)[0]))
        tgt = self.norms[1](tgt + self.drop(self.cross_attn(tgt + query_pos, memory + mem_pos, memory,
                                                            key_padding_mask=~mem_mask, need_weights=False)[0]))
        return self.norms[2](tgt + self.drop(self.ffn(tgt)))


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
        tgt = self.norms[0](tgt + self.drop(self.self_attn(tgt, query_pos, self_mask)))
        tgt = self.norms[1](tgt + self.drop(self.cross_attn(tgt, query_pos, query_sine, memory, mem_pos, mem_mask)))
        return self.norms[2](tgt + self.drop(self.ffn(tgt)))


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


# ----------------------------------------------------------------------------- base model
class FineGroundingModel(nn.Module):
    """Shared input projections, heads and `predict` of the three DETR-family models.

    Subclasses implement `forward(batch: MomentBatch) -> dict` with at least
    pred_logits [B, Q, 2] (index 0 = foreground), pred_spans [B, Q, 2] (normalised c, w),
    saliency [B, L], aux_outputs (earlier decoder layers).
    """

    cfg: FineConfig

    def __init__(self, cfg: FineConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_dim
        self.input_vid_proj = input_projection(cfg.video_dim + 2 * cfg.use_tef, d, cfg.n_input_proj,
                                               cfg.input_dropout)
        self.input_txt_proj = input_projection(cfg.text_dim, d, cfg.n_input_proj, cfg.input_dropout)
        self.class_embed = nn.Linear(d, 2)

    def project_video(self, batch: MomentBatch) -> torch.Tensor:     # -> [B, L, d]
        video = batch.video
        if self.cfg.use_tef:
            video = torch.cat([video, temporal_endpoint_features(batch.video_mask)], -1)
        return self.input_vid_proj(video)

    def heads(self, hidden: torch.Tensor, spans: torch.Tensor, saliency: torch.Tensor) -> dict:
        """hidden [n_layers, B, Q, d], spans [n_layers, B, Q, 2] -> the output dict (last layer + aux)."""
        logits = self.class_embed(hidden)
        aux = [{"pred_logits": lg, "pred_spans": sp} for lg, sp in zip(logits[:-1], spans[:-1])]
        return {"pred_logits": logits[-1], "pred_spans": spans[-1], "saliency": saliency, "aux_outputs": aux}

    @staticmethod
    def init_weights(module: nn.Module) -> None:
        """Xavier-uniform on every matrix (the references' transformer init); zero-init heads are kept."""
        for name, p in module.named_parameters():
            if p.dim() > 1 and "bbox_embed.4" not in name:
                nn.init.xavier_uniform_(p)

    def prediction_batches(self, samples: list[MomentSample]) -> list[list[int]]:
        """Indices of the samples for each inference batch (MESM overrides this to group videos)."""
        size = self.cfg.predict_batch_size
        return [list(range(i, min(i + size, len(samples)))) for i in range(0, len(samples), size)]

    @torch.no_grad()
    def predict(self, samples: list[MomentSample], top_k: int = 10) -> list[dict]:
        """QVHighlights submission dicts (ranked windows in seconds, one saliency score per clip)."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        results: list[dict | None] = [None] * len(samples)
        for index in self.prediction_batches(samples):
            chunk = [samples[i] for i in index]
            out = self(collate_moments(chunk).to(device))
            probs = out["pred_logits"].float().softmax(-1)[..., 0]          # [B, Q] foreground
            for j, s in zip(range(len(chunk)), chunk):
                extent = s.clip_feats.shape[0] * s.clip_len
                windows = postprocess_windows(out["pred_spans"][j].cpu(), probs[j].cpu(), extent, s.clip_len,
                                              top_k=top_k, nms_threshold=self.cfg.nms_threshold,
                                              round_to_clip=self.cfg.round_to_clip, duration=s.duration,
                                              protocol=self.cfg.postprocess, max_ts_val=self.cfg.max_ts_val)
                saliency = out["saliency"][j, : s.clip_feats.shape[0]].float().cpu()
                results[index[j]] = {"qid": s.qid, "query": s.query, "vid": s.vid,
                                     "pred_relevant_windows": windows,
                                     "pred_saliency_scores": saliency_values(saliency, self.cfg.postprocess)}
        self.train(was_training)
        return results  # type: ignore[return-value]


def saliency_values(saliency: torch.Tensor, protocol: str) -> list[float]:
    """[L] -> the submitted per-clip scores: 4 decimals (ours) or float16 values (the references' `.half()`,
    whose ties can change HIT@1)."""
    if protocol == "reference":
        return saliency.half().tolist()
    return [round(v, 4) for v in saliency.tolist()]


NEGATIVE_PARTNERS = ("other_video", "other_group", "roll")


def negative_partner(vids: list[str], mode: str = "other_video") -> torch.Tensor | None:
    """[B] long: each query's negative-pair partner, or None when there is none.

    "roll": the next query, (i + 1) % B (QD-DETR, even when it shows the same video); "other_video":
    the next query of a *different* video; "other_group": of a different YouTube-id group (MESM's rule;
    MESM draws it at random, we take the next one, the batch being shuffled).
    """
    B = len(vids)
    if mode == "roll":
        return torch.arange(1, B + 1) % B if B > 1 else None
    keys = [group_key(v) for v in vids] if mode == "other_group" else vids
    partner = []
    for i in range(B):
        j = next((j % B for j in range(i + 1, i + B) if keys[j % B] != keys[i]), None)
        if j is None:
            return None
        partner.append(j)
    return torch.tensor(partner)
