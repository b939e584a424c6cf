"""The explorer's result view: one row per searched video (coarse order), plus the ground-truth video when
the coarse stage left it out; per row, frames taken at the predicted and ground-truth moments (with their
times), the moment timeline with the corpus top-1 marked, and the fine model's saliency scaled to 0–1."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

PRED, GT = "tab:orange", "tab:green"


@dataclass
class Row:
    """One video of the result view."""

    vid: str
    coarse_rank: int | None                    # 1-based coarse rank (None: below the recorded ranking)
    coarse_score: float | None
    duration: float
    searched: bool                             # False: the GT video, outside the K searched videos
    moments: list[tuple[int, float, float, float]] = field(default_factory=list)  # (corpus rank, s, e, fused)
    gt_windows: list[Sequence[float]] = field(default_factory=list)
    unsearched_pick: Sequence[float] | None = None   # the fine model's best window here, had it been searched
    saliency: Sequence[float] | None = None
    frames: list[tuple[float, str, np.ndarray]] = field(default_factory=list)  # (seconds, "pred"|"gt", [H, W, 3])


def scale_saliency(rows: Sequence[Row]) -> tuple[float, float]:
    """(low, high) over every row's saliency: one min–max scale, so rows compare and a flat curve stays flat."""
    values = [x for r in rows for x in (r.saliency or [])]
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    return low, (high if high > low else low + 1.0)


def _frames(ax, row: Row) -> None:
    ax.axis("off")
    if not row.frames:
        ax.text(0.5, 0.5, "(no video file)", ha="center", va="center", fontsize=7, color="grey",
                transform=ax.transAxes)
        return
    h = max(f.shape[0] for _, _, f in row.frames)
    gap = max(2, h // 16)
    x = 0
    for seconds, kind, frame in row.frames:
        w = frame.shape[1]
        ax.imshow(frame, extent=(x, x + w, h, h - frame.shape[0]))
        colour = PRED if kind == "pred" else GT
        ax.add_patch(Rectangle((x, 0), w, h, fill=False, edgecolor=colour, linewidth=2.5))
        ax.text(x + w / 2, h + 1, f"{seconds:.1f} s", ha="center", va="top", fontsize=7, color=colour,
                fontweight="bold")
        x += w + gap
    ax.set_xlim(0, x - gap)
    ax.set_ylim(h + 0.3 * h, 0)


def result_figure(rows: Sequence[Row], clip_len: float, title: str, verdict: str, hit: bool | None) -> plt.Figure:
    """The figure of one search; `verdict` (a line under the title) is green for a hit, red for a miss."""
    low, high = scale_saliency(rows)
    fig, axes = plt.subplots(len(rows), 2, figsize=(11, 1.75 * len(rows) + 1.5), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 2.4]})
    for (frame_ax, line_ax), row in zip(axes, rows):
        _frames(frame_ax, row)
        rank = f"coarse #{row.coarse_rank}" if row.coarse_rank else "coarse rank beyond the list"
        score = f", score {row.coarse_score:.3f}" if row.coarse_score is not None else ""
        where = "" if row.searched else "  — ground-truth video, NOT searched (outside K)"
        frame_ax.set_title(f"{rank}: {row.vid}{score}{where}", fontsize=8, loc="left",
                           color="black" if row.searched else GT)
        # one lane per predicted moment (best of the video on top), so overlapping windows stay apart
        lane = 0.45 / max(1, len(row.moments))
        for i, (corpus_rank, start, end, fused) in enumerate(row.moments):
            top, y = corpus_rank == 1, 0.97 - (i + 1) * lane
            line_ax.add_patch(Rectangle((start, y + 0.08 * lane), end - start, 0.84 * lane, facecolor=PRED,
                                        alpha=max(0.25, 0.9 / np.sqrt(corpus_rank)),
                                        edgecolor="black" if top else "none", linewidth=2 if top else 0))
            label = f"TOP-1 (fused {fused:.2f})" if top else f"#{corpus_rank}"
            line_ax.text(start + 0.01 * row.duration, y + lane / 2, label, ha="left", va="center",
                         fontsize=7 if top else 6, fontweight="bold" if top else "normal")
        if row.unsearched_pick is not None:
            start, end = row.unsearched_pick[:2]
            line_ax.add_patch(Rectangle((start, 0.55), end - start, 0.38, fill=False, edgecolor=PRED,
                                        hatch="//", linewidth=1))
            line_ax.text((start + end) / 2, 0.74, "fine pick if searched", ha="center", va="center", fontsize=6,
                         backgroundcolor="white")
        for start, end in row.gt_windows:
            line_ax.add_patch(Rectangle((start, 0.07), end - start, 0.38, facecolor=GT, alpha=0.6))
            line_ax.text((start + end) / 2, 0.26, f"ground truth {start:.1f}–{end:.1f} s", ha="center",
                         va="center", fontsize=7)
        line_ax.set_xlim(0, row.duration)
        line_ax.set_ylim(0, 1)
        line_ax.set_yticks([])
        line_ax.tick_params(labelsize=7)
        if row.saliency:
            sal_ax = line_ax.twinx()
            centres = (np.arange(len(row.saliency)) + 0.5) * clip_len
            sal_ax.plot(centres, (np.asarray(row.saliency, dtype=float) - low) / (high - low), color="tab:blue", lw=1.2, alpha=0.85)
            sal_ax.set_ylim(-0.05, 1.05)  # one 0–1 scale for every row (min–max over the rows shown)
            sal_ax.set_yticks([0, 0.5, 1])
            sal_ax.set_ylabel("saliency\n(0–1)", fontsize=7, color="tab:blue")
            sal_ax.tick_params(labelsize=6, colors="tab:blue")
    axes[-1][1].set_xlabel("time in the video (s)", fontsize=8)
    handles = [Patch(facecolor=PRED, alpha=0.7, label="predicted moment, #n = corpus rank by fused score "
                     "(darker = higher)"),
               Patch(facecolor=PRED, edgecolor="black", linewidth=2, label="top-1 moment of the whole corpus"),
               Patch(facecolor=GT, alpha=0.6, label="ground-truth window"),
               Line2D([], [], color="tab:blue", label="fine-model saliency per clip, min–max scaled to 0–1 "
                      "over the rows shown"),
               Patch(facecolor="white", edgecolor=PRED, linewidth=2, label="frame at a predicted moment"),
               Patch(facecolor="white", edgecolor=GT, linewidth=2, label="frame at the ground truth")]
    if any(r.unsearched_pick is not None for r in rows):
        handles.append(Patch(facecolor="white", edgecolor=PRED, hatch="//", label="the fine model's pick in the "
                             "ground-truth video, had the coarse stage passed it on"))
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=10, y=0.995)
    colour = "black" if hit is None else ("tab:green" if hit else "tab:red")
    fig.text(0.5, 0.995 - 0.3 / fig.get_figheight(), verdict, ha="center", va="top", fontsize=9, color=colour,
             fontweight="bold", wrap=True)
    fig.tight_layout(rect=(0, 0.75 / fig.get_figheight() + 0.02, 1, 1 - 0.75 / fig.get_figheight()))
    return fig
