"""Figures of the coarse retrieval stage; every function returns a matplotlib Figure."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure


def plot_recall_at_k(results: dict[str, list[dict[str, float]]], ks: Sequence[int] = (1, 5, 10),
                     direction: str = "t2v", title: str = "") -> Figure:
    """Grouped bars of R@K per method, mean ± std over runs. results: method -> list of metric dicts."""
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(ks) * max(1, len(results)) / 2, 3.2))
    width = 0.8 / max(1, len(results))
    x = np.arange(len(ks))
    for i, (method, runs) in enumerate(results.items()):
        values = np.array([[run[f"{direction}_R@{k}"] for k in ks] for run in runs])
        ax.bar(x + i * width, values.mean(0), width, yerr=values.std(0) if len(runs) > 1 else None,
               capsize=3, label=method)
    ax.set_xticks(x + width * (len(results) - 1) / 2, [f"R@{k}" for k in ks])
    ax.set_ylabel(f"{direction} recall (%)")
    ax.set_ylim(0, 100)
    ax.legend(frameon=False)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_recall_by_group(table: dict[str, dict[str, dict[str, float]]], ylabel: str = "t2v R@1 (%)") -> Figure:
    """One panel per split, grouped bars per caption group, one bar per method.
    table: split -> method -> group label -> value."""
    fig, axes = plt.subplots(1, len(table), figsize=(4.2 * len(table), 3.2), sharey=True, squeeze=False)
    for ax, (split, methods) in zip(axes[0], table.items()):
        groups = list(next(iter(methods.values())))
        width = 0.8 / max(1, len(methods))
        x = np.arange(len(groups))
        for i, (method, values) in enumerate(methods.items()):
            ax.bar(x + i * width, [values[g] for g in groups], width, label=method)
        ax.set_xticks(x + width * (len(methods) - 1) / 2, groups)
        ax.set_title(split)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(frameon=False)
    fig.tight_layout()
    return fig


def plot_radius_distribution(positive: torch.Tensor, negative: torch.Tensor, bins: int = 40) -> Figure:
    """Histogram of the mean T-MASS radius per (text, video) pair, matching vs. non-matching pairs."""
    fig, ax = plt.subplots(figsize=(5, 3))
    pos, neg = positive.flatten().cpu().numpy(), negative.flatten().cpu().numpy()
    edges = np.histogram_bin_edges(np.concatenate([pos, neg]), bins=bins)
    ax.hist(neg, edges, density=True, alpha=0.6, label="non-matching pairs")
    ax.hist(pos, edges, density=True, alpha=0.6, label="matching pairs")
    ax.set_xlabel("mean radius R over dimensions")
    ax.set_ylabel("density")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def plot_similarity_heatmap(sims: torch.Tensor, text_to_video: torch.Tensor, max_items: int = 30,
                            title: str = "") -> Figure:
    """Text x video similarities for the first `max_items` videos and their captions; boxes mark positives."""
    keep_v = torch.arange(min(max_items, sims.shape[1]))
    keep_t = torch.nonzero(text_to_video < len(keep_v)).squeeze(1)
    sub = sims[keep_t][:, keep_v].cpu().numpy()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    image = ax.imshow(sub, aspect="auto", cmap="viridis")
    rows = np.arange(len(keep_t))
    ax.scatter(text_to_video[keep_t].numpy(), rows, marker="s", s=12, facecolors="none", edgecolors="red",
               linewidths=0.8, label="ground truth")
    ax.set_xlabel("video")
    ax.set_ylabel("caption")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=7, frameon=False)
    fig.colorbar(image, ax=ax, label="score")
    fig.tight_layout()
    return fig
