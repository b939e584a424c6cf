"""Figures of notebook 04 (TextDiff): text embeddings travelling toward their videos, step ablation."""
from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure


def _pca_2d(points: np.ndarray) -> np.ndarray:
    """[N, D] -> the [D, 2] top principal directions (deterministic sign)."""
    centred = points - points.mean(0)
    _, _, vh = np.linalg.svd(centred, full_matrices=False)
    basis = vh[:2].T
    return basis * np.sign(basis[np.abs(basis).argmax(0), [0, 1]])


def plot_text_trajectories(texts: torch.Tensor, pooled: torch.Tensor, max_pairs: int = 12) -> Figure:
    """texts [S+1, N, D] (input + after each sampler step), pooled [N, D] (each text's video, pooled by it).

    Left: a 2-D PCA projection of the unit-normalised embeddings; each pair is one colour, the path
    runs from the query (circle) through the steps to the refined text (triangle); the star is the
    video. Right: cos(text after step s, its video) for every pair and the mean.
    """
    texts = F.normalize(texts[:, :max_pairs].float(), dim=-1).cpu().numpy()    # [S+1, n, D]
    videos = F.normalize(pooled[:max_pairs].float(), dim=-1).cpu().numpy()    # [n, D]
    steps, n, _ = texts.shape
    basis = _pca_2d(np.concatenate([texts.reshape(-1, texts.shape[-1]), videos]))
    mean = np.concatenate([texts.reshape(-1, texts.shape[-1]), videos]).mean(0)
    path, star = (texts - mean) @ basis, (videos - mean) @ basis               # [S+1, n, 2], [n, 2]
    cos = (texts * videos[None]).sum(-1)                                       # [S+1, n]

    fig, (ax, ax_cos) = plt.subplots(1, 2, figsize=(11, 4.6))
    colors = plt.get_cmap("tab20")(np.arange(n) % 20)
    for i in range(n):
        ax.plot(path[:, i, 0], path[:, i, 1], "-", color=colors[i], alpha=0.7, lw=1)
        ax.plot(*path[0, i], "o", color=colors[i], ms=5)
        ax.plot(*path[-1, i], "^", color=colors[i], ms=6)
        ax.plot(*star[i], "*", color=colors[i], ms=11, mec="k", mew=0.5)
    ax.set(title="text -> refined text (^) and its video (*), PCA of unit vectors",
           xlabel="PC 1", ylabel="PC 2")
    x = np.arange(steps)
    ax_cos.plot(x, cos, color="0.7", lw=0.8)
    ax_cos.plot(x, cos.mean(1), "k-o", lw=2, label="mean over pairs")
    ax_cos.set(xlabel="sampler step (0 = input text)", ylabel="cos(text, its pooled video)",
               title="how far each query moved toward its video")
    ax_cos.legend()
    fig.tight_layout()
    return fig


def plot_step_ablation(results: Mapping[int, Mapping[str, float]], metric: str = "R@1") -> Figure:
    """results {num_steps: {split: metric value}} -> one line per split against the number of steps."""
    steps = sorted(results)
    splits = sorted({split for r in results.values() for split in r})
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for split in splits:
        ax.plot(steps, [results[k].get(split, np.nan) for k in steps], "-o", label=split)
    ax.set(xlabel="diffusion steps K", ylabel=f"t2v {metric}", xticks=steps,
           title="TextDiff: number of diffusion steps")
    ax.legend()
    fig.tight_layout()
    return fig
