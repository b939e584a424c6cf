"""Moment-DETR (Lei et al., NeurIPS'21): concatenate video and text tokens, a transformer encoder,
a vanilla DETR decoder with learned queries, and a linear saliency head on the video memory."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from c2f_lib.models.detr_blocks import MLP, FineConfig, FineGroundingModel, video_positions
from c2f_lib.models.detr_layers import DETRDecoderLayer, EncoderLayer
from c2f_lib.models.fine_batch import MomentBatch
from c2f_lib.models.registry import register


@dataclass
class MomentDETRConfig(FineConfig):
    ffn_activation: str = "relu"      # official Moment-DETR (QD-DETR and MESM use PReLU)


@register("moment_detr", MomentDETRConfig)
class MomentDETR(FineGroundingModel):
    def __init__(self, cfg: MomentDETRConfig):
        super().__init__(cfg)
        d = cfg.hidden_dim
        block = (d, cfg.n_heads, cfg.ffn_dim, cfg.dropout, cfg.ffn_activation)
        self.encoder = nn.ModuleList(EncoderLayer(*block) for _ in range(cfg.enc_layers))
        self.decoder = nn.ModuleList(DETRDecoderLayer(*block) for _ in range(cfg.dec_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.query_embed = nn.Embedding(cfg.num_queries, d)
        self.span_embed = MLP(d, d, 2, 3)
        self.saliency_proj = nn.Linear(d, 1)
        self.init_weights(self)

    def forward(self, batch: MomentBatch, training_outputs: bool | None = None) -> dict:
        """`training_outputs` is accepted for a common call; Moment-DETR has no training-only outputs."""
        d = self.cfg.hidden_dim
        video, text = self.project_video(batch), self.input_txt_proj(batch.text)   # [B, L, d], [B, Lq, d]
        L = video.shape[1]
        x = torch.cat([video, text], 1)                                            # [B, L+Lq, d]
        mask = torch.cat([batch.video_mask, batch.text_mask], 1)
        pos = torch.cat([video_positions(batch.video_mask, d), torch.zeros_like(text)], 1)
        for layer in self.encoder:
            x = layer(x, pos, mask)
        query_pos = self.query_embed.weight[None].expand(x.shape[0], -1, -1)       # [B, Q, d]
        tgt, hidden = torch.zeros_like(query_pos), []
        for layer in self.decoder:
            tgt = layer(tgt, x, mask, query_pos, pos)
            hidden.append(self.decoder_norm(tgt))
        hidden = torch.stack(hidden)                                               # [n_dec, B, Q, d]
        saliency = self.saliency_proj(x[:, :L]).squeeze(-1)                        # [B, L]
        return self.heads(hidden, self.span_embed(hidden).sigmoid(), saliency)
