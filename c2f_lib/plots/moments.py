"""Figures of the fine stage: predicted vs GT timelines, saliency curves, IoU histograms, metric bars."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from c2f_lib.evaluation.moments import temporal_iou


def timelines(preds: list[dict], gts: list[dict], n: int = 6, top_k: int = 3) -> Figure:
    """One panel per query: GT windows (green) above the top-k predictions (blue, one row per rank)."""
    pairs = list(zip(preds, gts))[:n]
    fig, axes = plt.subplots(len(pairs), 1, figsize=(8, (0.35 * top_k + 0.7) * len(pairs) + 0.6), squeeze=False)
    for ax, (p, g) in zip(axes[:, 0], pairs):
        for s, e in g["relevant_windows"]:
            ax.barh(1, e - s, left=s, height=0.6, color="tab:green")
        for rank, (s, e, score) in enumerate(p["pred_relevant_windows"][:top_k]):
            ax.barh(-rank, e - s, left=s, height=0.6, color="tab:blue", alpha=1.0 / (rank + 1))
            ax.text(e, -rank, f" {score:.2f}", va="center", fontsize=7)
        ax.set_xlim(0, g["duration"])
        ax.set_yticks([1] + [-r for r in range(top_k)], ["GT"] + [f"#{r + 1}" for r in range(top_k)], fontsize=7)
        ax.set_title(g["query"][:80], fontsize=8, loc="left")
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    return fig


def saliency_curves(preds: list[dict], gts: list[dict], clip_len: float, n: int = 4) -> Figure:
    """Predicted per-clip saliency with the GT windows shaded."""
    pairs = list(zip(preds, gts))[:n]
    fig, axes = plt.subplots(len(pairs), 1, figsize=(8, 1.3 * len(pairs) + 0.4), squeeze=False)
    for ax, (p, g) in zip(axes[:, 0], pairs):
        t = (np.arange(len(p["pred_saliency_scores"])) + 0.5) * clip_len
        ax.plot(t, p["pred_saliency_scores"], color="tab:blue")
        for s, e in g["relevant_windows"]:
            ax.axvspan(s, e, color="tab:green", alpha=0.25)
        ax.set_title(g["query"][:80], fontsize=8, loc="left")
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    return fig


def top1_ious(preds: list[dict], gts: list[dict]) -> np.ndarray:
    """IoU of each query's first window with its best-overlapping GT window -> [Q]."""
    return np.array([temporal_iou(np.array([p["pred_relevant_windows"][0][:2]]),
                                  np.array(g["relevant_windows"])).max() for p, g in zip(preds, gts)])


def iou_histograms(runs: dict[str, tuple[list[dict], list[dict]]], bins: int = 10) -> Figure:
    """Overlaid top-1 IoU histograms, one per model name."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, (preds, gts) in runs.items():
        ax.hist(top1_ious(preds, gts), bins=bins, range=(0, 1), histtype="step", linewidth=2, label=name)
    ax.set_xlabel("top-1 IoU")
    ax.set_ylabel("queries")
    ax.legend()
    fig.tight_layout()
    return fig


def metric_bars(table: dict[str, dict[str, float]], metrics: list[str]) -> Figure:
    """Grouped bars: table[model][metric] (mean over seeds)."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.8 / max(len(table), 1)
    x = np.arange(len(metrics))
    for i, (name, values) in enumerate(table.items()):
        ax.bar(x + i * width, [values.get(m, np.nan) for m in metrics], width, label=name)
    ax.set_xticks(x + 0.4 - width / 2, metrics, fontsize=8)
    ax.set_ylabel("%")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
