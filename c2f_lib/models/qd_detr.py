"""QD-DETR (Moon et al., CVPR'23): query-dependent video representation.

Video clips attend to the query words (T2V cross-attention), a self-attention encoder runs over
[global token; video], a DAB-style anchor decoder predicts spans, and saliency is the similarity of
each clip to the global token. Negative pairs (the same video with another video's query) are pushed
to low saliency, which forces the representation to depend on the query.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from c2f_lib.models.anchor_decoder import AnchorDecoder
from c2f_lib.models.detr_blocks import (
    MLP, NEGATIVE_PARTNERS, FineConfig, FineGroundingModel, negative_partner, video_positions)
from c2f_lib.models.detr_layers import CrossAttentionLayer, EncoderLayer
from c2f_lib.models.denoising import denoising_attention_mask, noised_anchors
from c2f_lib.models.fine_batch import MomentBatch
from c2f_lib.models.registry import register
from c2f_lib.models.span_utils import inverse_sigmoid


@dataclass
class QDDETRConfig(FineConfig):
    t2v_layers: int = 2
    negative_pairs: bool = True   # compute saliency for mismatched (video, query) pairs while training
    # Whose query a video is paired with for that: "other_video" (ours: the next query of another video),
    # "roll" (QD-DETR: the next query, even of the same video), "other_group" (MESM; its default).
    negative_partner: str = "other_video"
    # Denoising queries, our addition (c2f_lib.models.denoising): off by default, as in the papers;
    # notebook 05 turns them on because they learn far faster on small data. Training only: inference
    # and imported checkpoints are unaffected.
    dn_groups: int = 0            # denoising copies of each GT span per training step (0 = off)
    dn_noise: float = 0.4         # their jitter: centre ± noise * w / 2, width * (1 ± noise)
    dn_negatives: bool = True     # add one far-off negative (background) per GT span and group (DINO)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.negative_partner not in NEGATIVE_PARTNERS:
            raise ValueError(f"negative_partner must be one of {NEGATIVE_PARTNERS}, got {self.negative_partner!r}")


@dataclass
class SharedProjections:
    """What the negative pass (the same video, the partner's text) shares with the positive one:
    `first_q` [B, L, d], the query projection of video + pos in `first_layer` (the first layer whose queries
    are the video); per T2V layer `text_kv` [B, Lt, 2d] and per FW layer (MESM) `word_kv` [B, Lq, 2d], the
    key/value projections of the text, which the negative pass gathers at the partner's rows."""

    first_layer: nn.Module
    first_q: torch.Tensor
    text_kv: list[torch.Tensor]
    word_kv: list[torch.Tensor]

    def for_partner(self, partner: torch.Tensor) -> "SharedProjections":
        return SharedProjections(self.first_layer, self.first_q, [kv[partner] for kv in self.text_kv],
                                 [kv[partner] for kv in self.word_kv])

    def layer_inputs(self, layer: nn.Module, kv: torch.Tensor) -> dict:
        """Keyword arguments of CrossAttentionLayer for `layer` with key/value projections `kv`."""
        return {"kv": kv, "q_proj": self.first_q if layer is self.first_layer else None}


@register("qd_detr", QDDETRConfig)
class QDDETR(FineGroundingModel):
    # QD-DETR lets every encoder query attend to the global token; MESM hides it as a key (its
    # `Transformer.forward` marks it as padding), so the global token reads the clips but no clip reads it.
    global_token_is_key = True

    def __init__(self, cfg: QDDETRConfig):
        super().__init__(cfg)
        d = cfg.hidden_dim
        block = (d, cfg.n_heads, cfg.ffn_dim, cfg.dropout, cfg.ffn_activation)
        self.t2v_encoder = nn.ModuleList(CrossAttentionLayer(*block) for _ in range(cfg.t2v_layers))
        self.encoder = nn.ModuleList(EncoderLayer(*block) for _ in range(cfg.enc_layers))
        self.decoder = AnchorDecoder(*block, n_layers=cfg.dec_layers)
        self.query_embed = nn.Embedding(cfg.num_queries, 2)            # anchors, sigmoid -> (c, w)
        self.span_embed = MLP(d, d, 2, 3)                               # offsets to each layer's anchors
        self.global_rep_token = nn.Parameter(torch.randn(d))
        self.global_rep_pos = nn.Parameter(torch.randn(d))
        self.saliency_proj1, self.saliency_proj2 = nn.Linear(d, d), nn.Linear(d, d)
        self.init_weights(self)

    def encode(self, video, video_mask, video_pos, text, text_mask, shared: SharedProjections | None = None):
        """Query-dependent memory: [B, L, d] memory and [B, d] global token. With `shared`, the T2V layers
        take their projections from it (`text` may then be None)."""
        x = video
        for i, layer in enumerate(self.t2v_encoder):
            given = {} if shared is None else shared.layer_inputs(layer, shared.text_kv[i])
            x = layer(x, text, text_mask, pos_q=video_pos, **given)
        B = x.shape[0]
        x = torch.cat([self.global_rep_token.expand(B, 1, -1), x], 1)                 # [B, 1+L, d]
        pos = torch.cat([self.global_rep_pos.expand(B, 1, -1), video_pos], 1)
        mask = torch.cat([video_mask.new_full((B, 1), self.global_token_is_key), video_mask], 1)
        for layer in self.encoder:
            x = layer(x, pos, mask)
        return x[:, 1:], x[:, 0]

    def saliency(self, memory, global_token):                          # -> [B, L]
        return (self.saliency_proj1(memory) * self.saliency_proj2(global_token)[:, None]).sum(-1) \
            / math.sqrt(self.cfg.hidden_dim)

    # Hooks MESM overrides; QD-DETR reads the projected words and video as they are.
    def text_tokens(self, batch: MomentBatch, video, words, out: dict, extras: bool):
        """Text tokens the T2V layers read ([B, Lt, d], mask [B, Lt])."""
        return words, batch.text_mask

    def enhance_video(self, video, pos, words, words_mask, shared: SharedProjections | None = None):
        return video

    def video_query_layers(self) -> list[nn.Module]:
        """The cross-attention layers whose queries are the video, in order (MESM: FW layers first)."""
        return list(self.t2v_encoder)

    def share_projections(self, video, pos, words, text) -> SharedProjections:
        first = self.video_query_layers()[0]
        return SharedProjections(first, first.attn.project_queries(video + pos),
                                 [layer.attn.project_keys(text) for layer in self.t2v_encoder], [])

    def extra_outputs(self, batch: MomentBatch, video, pos, words, out: dict) -> None:
        """Training-only extra outputs (MESM's reconstruction branches)."""

    def denoising_queries(self, batch: MomentBatch) -> dict:
        """Noised GT anchors [B, G*K, 2], the decoder's self-attention mask and the DN targets (our addition)."""
        cfg = self.cfg
        anchors, targets, valid, positive = noised_anchors(batch.spans, cfg.dn_groups, cfg.dn_noise, cfg.dn_negatives)
        mask = denoising_attention_mask(cfg.num_queries, cfg.dn_groups, anchors.shape[1] // cfg.dn_groups, valid)
        return {"anchors": anchors, "self_mask": mask, "targets": targets, "valid": valid, "positive": positive}

    def forward(self, batch: MomentBatch, training_outputs: bool | None = None) -> dict:
        """Outputs of `FineGroundingModel`; with `training_outputs` (default: in training mode) also the
        training-only ones: negative-pair saliency, MESM's reconstruction branches, denoising queries.
        In eval mode that is the references' `is_training=True` forward without dropout."""
        extras = self.training if training_outputs is None else training_outputs
        out: dict = {}
        video = self.project_video(batch)                                               # [B, L, d]
        pos = video_positions(batch.video_mask, self.cfg.hidden_dim)
        words = self.input_txt_proj(batch.text)                                         # [B, Lq, d]
        text, text_mask = self.text_tokens(batch, video, words, out, extras)             # [B, Lt, d]
        shared = self.share_projections(video, pos, words, text)
        memory, global_token = self.encode(self.enhance_video(video, pos, words, batch.text_mask, shared),
                                           batch.video_mask, pos, text, text_mask, shared)
        anchors = self.query_embed.weight.sigmoid()[None].expand(video.shape[0], -1, -1)  # [B, Q, 2]
        dn = self.denoising_queries(batch) if extras and self.cfg.dn_groups > 0 else None
        if dn is not None:
            anchors = torch.cat([anchors, dn.pop("anchors").to(anchors)], 1)              # [B, Q + G*K, 2]
        hidden, starts = self.decoder(memory, batch.video_mask, pos, anchors,
                                      dn.pop("self_mask") if dn else None)           # [n_dec, B, Q(+G*K), *]
        spans = (self.span_embed(hidden) + inverse_sigmoid(starts)).sigmoid()
        Q = self.cfg.num_queries
        out.update(self.heads(hidden[:, :, :Q], spans[:, :, :Q], self.saliency(memory, global_token)))
        if dn is not None:
            out["dn"] = {**dn, "pred_logits": self.class_embed(hidden[:, :, Q:]), "pred_spans": spans[:, :, Q:]}
        partner = self.partners(batch) if extras and self.cfg.negative_pairs else None
        if partner is not None:
            # The same video with the partner's text: only the text's projections are gathered, not recomputed.
            partner = partner.to(video.device)
            neg_shared = shared.for_partner(partner)
            neg_video = self.enhance_video(video, pos, None, batch.text_mask[partner], neg_shared)
            neg_memory, neg_global = self.encode(neg_video, batch.video_mask, pos, None, text_mask[partner], neg_shared)
            out["saliency_neg"] = self.saliency(neg_memory, neg_global)
        if extras:
            self.extra_outputs(batch, video, pos, words, out)
        return out

    def partners(self, batch: MomentBatch) -> torch.Tensor | None:
        """[B] the query whose text each video gets in the negative pair (`batch.partner` if given)."""
        if batch.partner is not None:
            return batch.partner
        return negative_partner(batch.vids, self.cfg.negative_partner)
