"""Figures of notebook 02: tiny-CLIP training loss, feature similarity over time, nearest captions, motion."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F


def plot_training_loss(log: dict, batch_size: int) -> plt.Figure:
    """Tiny-CLIP training: the whole loss and its contrastive part per step, against the contrastive loss of
    a model that knows nothing, log(2 x batch) (each sentence meets two clips per step)."""
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(log["loss"], lw=1, label="total (InfoNCE + attribute heads)")
    if "nce" in log:
        ax.plot(log["nce"], lw=1, label="InfoNCE")
    ax.axhline(np.log(2 * batch_size), color="grey", ls="--", label=f"InfoNCE at chance = log {2 * batch_size}")
    ax.set(xlabel="step", ylabel="loss (train)", title="tiny video CLIP training")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_feature_similarity(clip_feats: torch.Tensor, clip_len: float, windows: list[list[float]] | None = None,
                            title: str = "") -> plt.Figure:
    """Cosine similarity between every pair of clip features of one video; event windows marked."""
    x = F.normalize(torch.as_tensor(clip_feats).float(), dim=-1)  # [L, D]
    sims = (x @ x.T).numpy()                                       # [L, L]
    extent = (0, len(x) * clip_len, len(x) * clip_len, 0)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    image = ax.imshow(sims, extent=extent, cmap="viridis")
    for start, end in windows or []:
        ax.axvspan(start, end, color="white", alpha=0.15)
    ax.set(xlabel="time (s)", ylabel="time (s)", title=title or "clip-feature similarity")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def plot_nearest_captions(frame: np.ndarray, scores: torch.Tensor, texts: list[str], k: int = 5,
                          truth: str | None = None) -> plt.Figure:
    """One frame and the k texts whose embeddings are closest to it (the true one in green)."""
    top = torch.as_tensor(scores).topk(min(k, len(texts)))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3), gridspec_kw={"width_ratios": [1, 2.5]})
    left.imshow(frame)
    left.axis("off")
    names = [texts[i] for i in top.indices.tolist()][::-1]
    colours = ["tab:green" if t == truth else "tab:blue" for t in names]
    right.barh(range(len(names)), top.values.tolist()[::-1], color=colours)
    right.set_yticks(range(len(names)), [n if len(n) < 60 else n[:57] + "..." for n in names], fontsize=8)
    right.set(xlabel="cosine similarity", title="nearest texts to this frame")
    fig.tight_layout()
    return fig


def plot_motion(motion: np.ndarray, clip_len: float, bin_names: list[str],
                windows: list[tuple[list[float], str]] | None = None, title: str = "") -> plt.Figure:
    """Colour-motion descriptor of one video over time: changed area per colour bin (gained + lost), with
    the event windows (shaded, labelled with their query)."""
    n_bins = len(bin_names)
    motion = np.asarray(motion, dtype=np.float32)                     # [L, 4 * n_bins]
    energy = (motion[:, :n_bins] ** 2 + motion[:, n_bins:2 * n_bins] ** 2).T   # [n_bins, L] changed area
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.imshow(energy, aspect="auto", cmap="magma", extent=(0, energy.shape[1] * clip_len, n_bins - 0.5, -0.5))
    for i, (window, query) in enumerate(windows or []):
        start, end = window
        ax.axvspan(start, end, ymin=0, ymax=0.06, color=f"C{i % 10}")
        ax.text(start, n_bins - 0.6, query if len(query) < 30 else query[:27] + "...", color=f"C{i % 10}",
                fontsize=7, rotation=90, va="bottom")
    ax.set_yticks(range(n_bins), bin_names, fontsize=7)
    ax.set(xlabel="time (s)", title=title or "changed area per colour bin")
    fig.tight_layout()
    return fig


def plot_sentence_clip_similarity(similarities: dict[str, np.ndarray], windows: dict[str, list[list[float]]],
                                  clip_len: float, title: str = "") -> plt.Figure:
    """One row per query of a video: cosine of its sentence to every clip over time, its window shaded.
    A groundable feature peaks inside the query's own window and not in the others'."""
    fig, axes = plt.subplots(len(similarities), 1, figsize=(8, 1.1 * len(similarities) + 0.6), sharex=True,
                             squeeze=False)
    for ax, (query, sims) in zip(axes[:, 0], similarities.items()):
        times = (np.arange(len(sims)) + 0.5) * clip_len
        for start, end in windows[query]:
            ax.axvspan(start, end, color="tab:green", alpha=0.25, lw=0)
        ax.plot(times, sims, color="tab:blue", marker=".", lw=1)
        ax.set_ylabel("cos", fontsize=7)
        ax.set_title(query if len(query) < 80 else query[:77] + "...", fontsize=8, loc="left")
    axes[-1, 0].set_xlabel("time (s); green = the query's ground-truth window")
    fig.suptitle(title or "sentence-clip similarity over time", fontsize=9)
    fig.tight_layout()
    return fig
