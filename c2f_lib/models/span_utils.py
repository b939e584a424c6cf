"""Span geometry for the fine stage: (center, width) <-> (start, end), GIoU, post-processing, NMS.

Spans inside the models are normalised by the clip features' time extent (clips x clip_len): (c, w) in [0, 1].
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


POSTPROCESS_PROTOCOLS = ("correct", "reference")


def postprocess_windows(spans_cw: torch.Tensor, scores: torch.Tensor, extent: float, clip_len: float,
                        top_k: int = 10, nms_threshold: float | None = None,
                        round_to_clip: bool = True, duration: float | None = None,
                        protocol: str = "correct", max_ts_val: float = 150.0) -> list[list[float]]:
    """Normalised (c, w) spans [Q,2] + scores [Q] -> ranked [[start_s, end_s, score], ...].

    As the references (compute_mr_results + PostProcessorDETR): rank by the *unrounded* score (stable,
    so tied scores keep the query-slot order), round start, end and score to 4 decimals, clamp, snap to
    the clip grid (`round_to_clip`), then optional temporal NMS and top-k. `protocol`:
    * "correct" (ours): spans are fractions of `extent` seconds, the clip features' time span (what the
      model was trained on), clamped to the video [0, `duration`] (default `extent`); a window that
      collapses to zero length when snapped gets one clip (the video's last one if it sits on the end).
    * "reference" (the official code): spans are fractions of `duration`, clamped to [0, `max_ts_val`]
      (150 s on QVHighlights), zero-length windows kept.
    """
    if protocol not in POSTPROCESS_PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; use one of {POSTPROCESS_PROTOCOLS}")
    duration = extent if duration is None else duration
    reference = protocol == "reference"
    scores = scores.float()
    order = torch.sort(scores, descending=True, stable=True).indices
    se = cw_to_se(spans_cw.float()[order]) * (duration if reference else extent)   # [Q, 2] seconds
    rows = [[round(v, 4) for v in row] for row in torch.cat([se, scores[order, None]], 1).tolist()]
    se = torch.tensor([r[:2] for r in rows], dtype=torch.float32).reshape(-1, 2)
    se = se.clamp(0, max_ts_val if reference else duration)
    if round_to_clip and clip_len > 0:
        se = torch.round(se / clip_len) * clip_len
        if not reference:
            # a window snapped onto the video's end (start == duration) keeps its last clip, not zero length
            se[:, 0] = se[:, 0].clamp(max=max(duration - clip_len, 0.0))
            se[:, 1] = torch.maximum(se[:, 1], se[:, 0] + clip_len)
            se = se.clamp(0, duration)
    rows = [[round(s, 4), round(e, 4), r[2]] for (s, e), r in zip(se.tolist(), rows)]
    if nms_threshold is not None:
        rows = temporal_nms(rows, nms_threshold)
    return rows[:top_k]
