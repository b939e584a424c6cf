"""Shortlist re-ranking: each query scored against its own candidate videos, batched over queries.

A query-conditioned coarse model splits into per-video terms that do not depend on the query and a
cheap per-(query, video) part. For X-Pool the first is `FramePooler.prepare` (LN1, key/value
projections, the output projection and the linear branch pushed onto each frame): four D x D
products per frame, about 85% of re-ranking 100 candidates from scratch. `prepare_gallery` computes
them once for a corpus (at index time); re-ranking then gathers the shortlisted rows and pools every
(query, candidate) pair in one paired call, with no per-query model call. The X-Pool gallery holds
about twice the frames' memory (keys and value-side terms per frame, plus an HF x HF Gram matrix
per video). Mean pooling keeps one unit vector per video. Other models (T-MASS, TextDiff: their
per-pair terms need the frames) are scored query by query on the candidates' frames, as `score`
defines them.

Every gallery returns what `coarse.score(text, frames)` returns for the same pairs (a test checks
X-Pool and mean pooling to 1e-5).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from c2f_lib.models.meanpool import MeanPool
from c2f_lib.models.xpool import PreparedVideos, XPool, cosine, eval_mode, text_chunks

# Videos prepared per step when a gallery is built: bounds the temporaries (~ a few x chunk x F x D).
PREPARE_CHUNK = 4096


class Gallery(Protocol):
    def rerank(self, text_emb: torch.Tensor, candidates: torch.Tensor, chunk_size: int = 16,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """text_emb [T, D], candidates [T, S] (corpus rows, >= 0) -> coarse scores [T, S]."""


@dataclass
class XPoolGallery:
    """X-Pool with the query-independent terms of every corpus video precomputed (rows = corpus order)."""

    model: XPool
    videos: PreparedVideos        # keys [V, H, F, dh], branches [V, K, D], gram [V, K, K], cross [V, K]

    def rerank(self, text_emb: torch.Tensor, candidates: torch.Tensor, chunk_size: int = 16,
               generator: torch.Generator | None = None) -> torch.Tensor:
        S = candidates.shape[1]
        out = text_emb.new_empty(candidates.shape)                               # [T, S]
        with eval_mode(self.model):
            for rows in text_chunks(len(text_emb), chunk_size):
                flat = candidates[rows].reshape(-1)                               # [c*S]
                videos = PreparedVideos(*(term.index_select(0, flat) for term in self.videos))
                text = text_emb[rows].repeat_interleave(S, dim=0)                 # [c*S, D]
                pooled = self.model.pool.pool(text, videos, paired=True)          # [c*S, D]
                out[rows] = cosine(text, pooled).view(-1, S)
        return out


@dataclass
class MeanPoolGallery:
    """Mean pooling: one unit vector per video; a score is a dot product."""

    embeddings: torch.Tensor      # [V, D], L2-normalised

    def rerank(self, text_emb: torch.Tensor, candidates: torch.Tensor, chunk_size: int = 16,
               generator: torch.Generator | None = None) -> torch.Tensor:
        text = F.normalize(text_emb, dim=-1)                                      # [T, D]
        videos = self.embeddings.index_select(0, candidates.reshape(-1)).view(*candidates.shape, -1)
        return torch.einsum("td,tsd->ts", text, videos)                          # [T, S]


@dataclass
class FramesGallery:
    """Any coarse model: `score` on each query's candidates (T-MASS draws from `generator` per query)."""

    model: object
    frames: torch.Tensor          # [V, F, D]

    def rerank(self, text_emb: torch.Tensor, candidates: torch.Tensor, chunk_size: int = 16,
               generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.stack([self.model.score(text_emb[t:t + 1], self.frames[cand], chunk_size=chunk_size,
                                             generator=generator)[0]
                            for t, cand in enumerate(candidates)])                # [T, S]


def prepare_gallery(coarse: object, frames: torch.Tensor) -> Gallery:
    """The re-ranking gallery of `coarse` over a corpus's frames [V, F, D] (same device as the model)."""
    if isinstance(coarse, XPool):
        with eval_mode(coarse):
            parts = [coarse.pool.prepare(frames[i:i + PREPARE_CHUNK])
                     for i in range(0, len(frames), PREPARE_CHUNK)]
        return XPoolGallery(coarse, PreparedVideos(*(torch.cat(terms) for terms in zip(*parts))))
    if isinstance(coarse, MeanPool):
        with eval_mode(coarse):
            embeddings = torch.cat([coarse.video_embedding(frames[i:i + PREPARE_CHUNK])
                                    for i in range(0, len(frames), PREPARE_CHUNK)])
        return MeanPoolGallery(F.normalize(embeddings, dim=-1))
    return FramesGallery(coarse, frames)
