"""Dataset statistics figures: video durations, moment lengths, query/caption lengths."""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from c2f_lib.data.adapters.base import LoadedSplit


def plot_split_stats(splits: list[LoadedSplit], title: str | None = None) -> Figure:
    """Three histograms, one line per split: video duration (s), moment length as a fraction of the
    video, and words per query (or per caption for caption-only datasets)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for split in splits:
        label = f"{split.split} ({len(split.video_ids)} videos)"
        durations = {m.vid: m.duration for m in split.moments}
        durations.update({c.vid: c.duration for c in split.captions if c.duration and c.vid not in durations})
        if durations:
            axes[0].hist(list(durations.values()), bins=40, histtype="step", label=label)
        fractions = [(e - s) / m.duration for m in split.moments for s, e in m.relevant_windows]
        if fractions:
            axes[1].hist(fractions, bins=40, range=(0, 1), histtype="step", label=label)
        words = [len(m.query.split()) for m in split.moments] or \
                [len(c.split()) for v in split.captions for c in v.captions]
        axes[2].hist(words, bins=range(0, max(words, default=1) + 2), histtype="step", label=label)
    axes[0].set(xlabel="video duration (s)", ylabel="videos")
    axes[1].set(xlabel="moment length / video duration", ylabel="moments")
    axes[2].set(xlabel="words per query" if any(s.moments for s in splits) else "words per caption",
                ylabel="texts")
    for ax in axes:
        if ax.has_data():
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not annotated", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title or splits[0].dataset)
    fig.tight_layout()
    return fig


def plot_caption_comparison(table, columns: tuple[str, ...] = ("mean_words",)) -> Figure:
    """Bar chart of a `compare_captions` table: mean caption length and word recall/precision."""
    overlap = [c for c in table.columns if c.startswith("word_")]
    cols = list(columns) + overlap
    fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols), 3))
    for ax, column in zip(axes, cols):
        ax.bar(table.index.astype(str), table[column], color=["C0", "C1", "C2", "C3"][: len(table)])
        ax.set_title(column.replace("_", " "), fontsize=9)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.tight_layout()
    return fig
