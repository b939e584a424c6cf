"""Span geometry for the fine stage: (center, width) <-> (start, end), GIoU, post-processing, NMS.

Spans inside the models are normalised by the video duration: (c, w) in [0, 1].
"""
from __future__ import annotations

import torch


def cw_to_se(spans: torch.Tensor) -> torch.Tensor:
    """[..., 2] (center, width) -> (start, end)."""
    c, w = spans.unbind(-1)
    return torch.stack([c - 0.5 * w, c + 0.5 * w], dim=-1)


def se_to_cw(spans: torch.Tensor) -> torch.Tensor:
    """[..., 2] (start, end) -> (center, width)."""
    s, e = spans.unbind(-1)
    return torch.stack([0.5 * (s + e), e - s], dim=-1)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def paired_giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GIoU of matched (start, end) spans a[i], b[i]: [M, 2] x [M, 2] -> [M]."""
    return pairwise_iou_giou(a[:, None], b[:, None])[1][:, 0, 0]


def pairwise_iou_giou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, end) spans a [..., N,2], b [..., M,2] -> IoU [..., N,M], GIoU [..., N,M] (leading dims broadcast)."""
    a, b = a[..., :, None, :], b[..., None, :, :]                               # [..., N, 1, 2], [..., 1, M, 2]
    inter = (torch.min(a[..., 1], b[..., 1]) - torch.max(a[..., 0], b[..., 0])).clamp(min=0)
    union = (a[..., 1] - a[..., 0]) + (b[..., 1] - b[..., 0]) - inter
    iou = inter / union.clamp(min=1e-6)
    hull = torch.max(a[..., 1], b[..., 1]) - torch.min(a[..., 0], b[..., 0])
    return iou, iou - (hull - union) / hull.clamp(min=1e-6)


def temporal_nms(windows: list[list[float]], iou_threshold: float) -> list[list[float]]:
    """Greedy NMS over [start, end, score] rows sorted by score: drop rows with IoU > threshold to a kept one."""
    kept: list[list[float]] = []
    for w in sorted(windows, key=lambda r: -r[2]):
        box = torch.tensor([w[:2]])
        if all(pairwise_iou_giou(box, torch.tensor([k[:2]]))[0].item() <= iou_threshold for k in kept):
            kept.append(w)
    return kept


def postprocess_windows(spans_cw: torch.Tensor, scores: torch.Tensor, extent: float, clip_len: float,
                        top_k: int = 10, nms_threshold: float | None = None,
                        round_to_clip: bool = True, duration: float | None = None) -> list[list[float]]:
    """Normalised (c, w) spans [Q,2] + scores [Q] -> ranked [[start_s, end_s, score], ...].

    Spans are fractions of `extent` seconds (the clip features' time span). Clamp to the video
    (`duration`, default `extent`), optionally snap to the clip grid (the reference PostProcessorDETR),
    optional temporal NMS, then top-k. Windows that collapse to zero length when snapped get one clip.
    """
    duration = extent if duration is None else duration
    se = (cw_to_se(spans_cw.float()) * extent).clamp(0, duration)                # [Q, 2] seconds
    if round_to_clip and clip_len > 0:
        se = torch.round(se / clip_len) * clip_len
        se[:, 1] = torch.maximum(se[:, 1], se[:, 0] + clip_len)
        se = se.clamp(0, duration)
    rows = [[round(float(s), 4), round(float(e), 4), round(float(p), 4)]
            for (s, e), p in zip(se.tolist(), scores.float().tolist())]
    rows.sort(key=lambda r: -r[2])
    if nms_threshold is not None:
        rows = temporal_nms(rows, nms_threshold)
    return rows[:top_k]
