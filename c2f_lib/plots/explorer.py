"""The explorer's result view: per video, frame thumbnails, a moment timeline and the saliency curve."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np


def result_figure(record: dict, durations: dict[str, float], clip_len: float,
                  thumbnails: dict[str, np.ndarray] | None = None,
                  gt: tuple[str, Sequence[Sequence[float]]] | None = None, max_videos: int = 5) -> plt.Figure:
    """One row per searched video (coarse order): thumbnails [N, H, W, 3] | timeline + saliency.

    Predicted moments are orange bars (opacity ~ rank), ground-truth windows green; the saliency
    curve (fine model, per clip) is drawn on a twin axis with one scale shared by all rows.
    """
    searched = list(record.get("saliency") or dict.fromkeys(m[0] for m in record["moments"]))[:max_videos]
    values = [x for v in searched for x in (record.get("saliency") or {}).get(v) or []]
    pad = 0.05 * (max(values) - min(values)) + 1e-6 if values else 1.0
    saliency_range = (min(values) - pad, max(values) + pad) if values else (0.0, 1.0)
    fig, axes = plt.subplots(len(searched), 2, figsize=(10, 1.6 * len(searched) + 0.4), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 2.2]})
    coarse = dict((v, s) for v, s in record["ranked_videos"])
    for row, vid in enumerate(searched):
        thumb_ax, line_ax = axes[row]
        thumb_ax.axis("off")
        if thumbnails and vid in thumbnails:
            thumb_ax.imshow(np.concatenate(list(thumbnails[vid]), axis=1))
        thumb_ax.set_title(f"{vid}  (coarse {coarse.get(vid, float('nan')):.3f})", fontsize=8, loc="left")
        duration = durations[vid]
        moments = [m for m in record["moments"] if m[0] == vid]
        for rank, (_, start, end, _) in enumerate(moments):
            line_ax.axvspan(start, end, ymin=0.55, ymax=0.95, color="tab:orange", alpha=max(0.15, 0.8 / (rank + 1)))
        if gt is not None and gt[0] == vid:
            for start, end in gt[1]:
                line_ax.axvspan(start, end, ymin=0.05, ymax=0.45, color="tab:green", alpha=0.6)
        line_ax.set_xlim(0, duration)
        line_ax.set_yticks([])
        saliency = (record.get("saliency") or {}).get(vid)
        if saliency:
            sal_ax = line_ax.twinx()
            centres = (np.arange(len(saliency)) + 0.5) * clip_len
            sal_ax.plot(centres, saliency, color="tab:blue", lw=1)
            sal_ax.set_ylim(*saliency_range)  # one scale for all rows: a flat curve stays flat
            sal_ax.tick_params(labelsize=6)
    axes[-1][1].set_xlabel("seconds  (orange: predicted, green: ground truth, blue: saliency)")
    fig.suptitle(f"“{record['query']}”", fontsize=10)
    fig.tight_layout()
    return fig
