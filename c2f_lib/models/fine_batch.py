"""Padding a list of MomentSample into one batch of tensors (+ masks) for the DETR-family models."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from c2f_lib.features.types import MomentSample
from c2f_lib.models.span_utils import se_to_cw


@dataclass
class MomentBatch:
    video: torch.Tensor          # [B, L, Dv] clip features, zero-padded
    video_mask: torch.Tensor     # [B, L] bool, True = real clip
    text: torch.Tensor           # [B, Lq, Dt] token features, zero-padded
    text_mask: torch.Tensor      # [B, Lq] bool
    saliency: torch.Tensor       # [B, L] float target (GT-window membership when the sample has none)
    spans: list[torch.Tensor]    # B x [n_i, 2] normalised (center, width) GT windows
    vids: list[str]
    durations: list[float]
    token_ids: torch.Tensor | None = None  # [B, Lq] long tokenizer ids (0 at padding); None unless every
                                           # sample carries them (MESM then falls back to feature targets)
    # The random draws of a training step, to reproduce another implementation's (None: drawn as usual).
    partner: torch.Tensor | None = None       # [B] long, the negative pair's query (models)
    pos_clips: torch.Tensor | None = None     # [B, P] long, hinge positives (fine_losses.saliency_pairs)
    neg_clips: torch.Tensor | None = None     # [B, P] long, hinge negatives
    masked_words: torch.Tensor | None = None  # [B, Lq] bool, MESM's masked words (MESM.mask_words)

    def to(self, device: str | torch.device) -> "MomentBatch":
        moved = {f.name: getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, spans=[s.to(device, non_blocking=True) for s in self.spans], **moved)

    def window_clip_mask(self) -> torch.Tensor:
        """[B, L] bool: clips whose centre lies inside any GT window."""
        B, L = self.video_mask.shape
        centers = (torch.arange(L, device=self.video.device) + 0.5) / self.video_mask.sum(1, keepdim=True)
        inside = torch.zeros(B, L, dtype=torch.bool, device=self.video.device)
        for b, spans in enumerate(self.spans):
            for c, w in spans.tolist():
                inside[b] |= (centers[b] >= c - w / 2) & (centers[b] <= c + w / 2)
        return inside & self.video_mask


def group_key(vid: str) -> str:
    """QVHighlights-style 'ytid_start_end' -> 'ytid'; any other id is its own group."""
    parts = vid.rsplit("_", 2)
    try:
        float(parts[1]), float(parts[2])
    except (IndexError, ValueError):
        return vid
    return parts[0]


def _pad(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad [L_i, D] tensors to [B, max L, D] with a [B, max L] validity mask."""
    length = max(t.shape[0] for t in tensors)
    out = tensors[0].new_zeros(len(tensors), length, tensors[0].shape[1])
    mask = torch.zeros(len(tensors), length, dtype=torch.bool)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
        mask[i, : t.shape[0]] = True
    return out, mask


def collate_moments(samples: list[MomentSample], clip_spans: bool = True) -> MomentBatch:
    """Pad clip and token features; GT windows become (c, w) spans normalised by each sample's clip
    extent (clips x clip_len), clipped to [0, 1] unless `clip_spans` is False (the references: a window
    past the features' end then gets a span past 1, which no sigmoid output reaches)."""
    if not samples:
        raise ValueError("collate_moments: empty list of samples")
    video, video_mask = _pad([s.clip_feats.float() for s in samples])
    text, text_mask = _pad([s.token_feats.float() for s in samples])
    spans, saliency = [], torch.zeros(video_mask.shape)
    for i, s in enumerate(samples):
        length = s.clip_feats.shape[0] * s.clip_len      # the features' time extent
        se = torch.tensor(s.windows, dtype=torch.float32).reshape(-1, 2) / max(length, 1e-6)
        spans.append(se_to_cw(se.clamp(0, 1) if clip_spans else se))
        if s.saliency is not None:
            saliency[i, : len(s.saliency)] = s.saliency.float()
        else:
            t = (torch.arange(s.clip_feats.shape[0]) + 0.5) * s.clip_len
            saliency[i, : len(t)] = torch.stack([(t >= a) & (t <= b) for a, b in s.windows]).any(0).float()
    return MomentBatch(video, video_mask, text, text_mask, saliency, spans,
                       [s.vid for s in samples], [float(s.duration) for s in samples], _token_ids(samples, text_mask))


def _token_ids(samples: list[MomentSample], text_mask: torch.Tensor) -> torch.Tensor | None:
    """[B, Lq] padded token ids, or None when any sample lacks them (a batch has one kind of MLM target)."""
    if any(s.token_ids is None for s in samples):
        return None
    ids = torch.zeros(text_mask.shape, dtype=torch.long)
    for i, s in enumerate(samples):
        if s.token_ids.shape != (s.token_feats.shape[0],):
            raise ValueError(f"sample {s.qid!r}: {tuple(s.token_ids.shape)} token ids for "
                             f"{s.token_feats.shape[0]} token features")
        ids[i, : len(s.token_ids)] = s.token_ids
    return ids
