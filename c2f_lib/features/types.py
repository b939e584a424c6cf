"""In-memory feature bundles handed from the feature store to the models.

These two dataclasses are the contract between `features/` and the coarse / fine stages:
models and training loops take them (or their tensors), never HDF5 handles.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CoarseSplit:
    """Everything text -> video retrieval needs for one split (features from a frozen backbone)."""

    video_ids: list[str]           # V gallery videos
    frames: torch.Tensor           # [V, F, D] float32 frame embeddings, F uniform frames per video
    texts: list[str]               # T captions (several per video allowed)
    text_emb: torch.Tensor         # [T, D] float32 sentence embeddings
    text_to_video: torch.Tensor    # [T] long, index of each caption's video in video_ids

    def __post_init__(self) -> None:
        V, _, D = self.frames.shape
        T = len(self.texts)
        if self.text_emb.shape != (T, D):
            raise ValueError(f"text_emb is {tuple(self.text_emb.shape)}, expected ({T}, {D})")
        if len(self.video_ids) != V or self.text_to_video.shape != (T,):
            raise ValueError("video_ids / text_to_video sizes do not match frames / texts")
        if T and (int(self.text_to_video.min()) < 0 or int(self.text_to_video.max()) >= V):
            raise ValueError("text_to_video holds an index outside the gallery")


@dataclass
class MomentSample:
    """One grounding query with the clip features of its video (the fine stage's unit)."""

    qid: str | int
    query: str
    vid: str
    duration: float                # seconds
    clip_len: float                # seconds covered by one clip feature
    clip_feats: torch.Tensor       # [L, Dv] float32, clip i covers [i*clip_len, (i+1)*clip_len)
    token_feats: torch.Tensor      # [Lq, Dt] float32 per-token text features (padding removed)
    windows: list[list[float]]     # ground-truth [start, end] seconds, possibly several
    saliency: torch.Tensor | None = None  # [L] float32 per-clip saliency target, or None
    token_ids: torch.Tensor | None = None  # [Lq] long tokenizer ids of token_feats' rows, or None
                                           # (features stored without ids, e.g. released npz files)
