"""Mean-pooling baseline: a video is the average of its frame embeddings (X-Pool's baseline).

With frozen backbone features a parameter-free mean only learns its temperature, which does not
change rankings; `adapter=True` adds one identity-initialised linear map on the frames so the
baseline gets a trainable head like the other methods (at init it equals the plain mean).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from c2f_lib.models.registry import register
from c2f_lib.models.xpool import (LOGIT_SCALE_MAX, cosine, eval_mode, global_batch, infonce,
                                  text_chunks)


@dataclass
class MeanPoolConfig:
    dim: int = 512
    adapter: bool = True                    # identity-initialised Linear(D, D) on the frames
    logit_scale_init: float = LOGIT_SCALE_MAX
    mask_duplicate_videos: bool = True


@register("meanpool", MeanPoolConfig)
class MeanPool(nn.Module):
    def __init__(self, cfg: MeanPoolConfig):
        super().__init__()
        self.cfg = cfg
        self.adapter = nn.Linear(cfg.dim, cfg.dim) if cfg.adapter else nn.Identity()
        if cfg.adapter:
            nn.init.eye_(self.adapter.weight)
            nn.init.zeros_(self.adapter.bias)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))

    def video_embedding(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [V, F, D] -> [V, D] (not normalised)."""
        return self.adapter(frames).mean(1)

    def pool_frames(self, text_emb: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """[T, V, D]: the same mean for every text (a broadcast view, no copy)."""
        return self.video_embedding(frames)[None].expand(text_emb.shape[0], -1, -1)

    def similarity(self, text_emb: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """[T, V] cosine similarities; differentiable."""
        return cosine(text_emb[:, None], self.video_embedding(frames)[None])

    def training_loss(self, text_emb: torch.Tensor, frames: torch.Tensor,
                      generator: torch.Generator | None = None,
                      video_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Symmetric InfoNCE on pairs (caption i <-> video i); see `XPool.training_loss`."""
        batch = global_batch(text_emb, frames, video_ids)
        sims_rows = self.similarity(batch.local_text, batch.frames)
        sims_cols = sims_rows if batch.single else self.similarity(batch.text, batch.local_frames)
        loss = infonce(sims_rows, sims_cols, batch, self.logit_scale, self.cfg.mask_duplicate_videos)
        return loss, {"loss": loss.item()}

    forward = training_loss

    def score(self, text_emb: torch.Tensor, frames: torch.Tensor, chunk_size: int = 64,
              generator: torch.Generator | None = None,
              gallery_text: torch.Tensor | None = None) -> torch.Tensor:
        """[T, V] cosine similarities. No conditioning on the text, so `gallery_text` changes nothing."""
        out = torch.empty(text_emb.shape[0], frames.shape[0], device=text_emb.device)
        with eval_mode(self):
            videos = self.video_embedding(frames)[None]
            for rows in text_chunks(text_emb.shape[0], chunk_size):
                out[rows] = cosine(text_emb[rows, None], videos)
        return out
