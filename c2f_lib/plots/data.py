"""Plots of video-moment datasets: frames, event timelines, split statistics, composition tables.

Each function takes plain data (arrays, meta.json dicts, schema records) and returns a Figure.
"""
from __future__ import annotations

from collections import Counter

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from c2f_lib.data.schema import MomentQuery


def frame_strip(frames: np.ndarray, fps: float, n: int = 12, title: str = "") -> Figure:
    """`n` evenly spaced frames of one video ([T, H, W, 3] uint8), labelled with their time."""
    idx = np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int)
    fig, axes = plt.subplots(1, len(idx), figsize=(1.1 * len(idx), 1.5), squeeze=False)
    for ax, i in zip(axes[0], idx):
        ax.imshow(frames[i])
        ax.set_title(f"{i / fps:.1f}s", fontsize=7)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def event_timeline(video: dict) -> Figure:
    """Gantt chart of a SynthMoments video (an entry of meta.json["videos"]): one row per actor,
    one bar per event, drawn in the actor's colour at the event start."""
    from c2f_lib.data.synth_grammar import COLOURS

    actors = video["actors"]
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(actors) + 1.0))
    for event in video["events"]:
        row = event["actor"]["id"]
        rgb = np.array(COLOURS[event["actor"]["colour"]].rgb) / 255
        ax.barh(row, event["end"] - event["start"], left=event["start"], color=rgb, edgecolor="black",
                height=0.6, hatch="//" if event.get("novel") else None)
        ax.text((event["start"] + event["end"]) / 2, row, event["action"].replace("_", " "),
                ha="center", va="center", fontsize=7)
    ax.set_yticks(range(len(actors)), [f"{a['size']} {a['colour']} {a['shape']}" for a in actors])
    ax.set_xlim(0, video["duration"])
    ax.set_ylim(len(actors) - 0.5, -0.5)
    ax.set_xlabel("time (s)")
    ax.set_title(f"{video['vid']} ({video['split']}; hatched = novel composition)", fontsize=9)
    fig.tight_layout()
    return fig


def split_statistics(moments: dict[str, list[MomentQuery]]) -> Figure:
    """Per split: video durations, moment lengths, query lengths (words) and action counts."""
    splits = list(moments)
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    durations = {s: list({m.vid: m.duration for m in ms}.values()) for s, ms in moments.items()}
    lengths = {s: [e - b for m in ms for b, e in m.relevant_windows] for s, ms in moments.items()}
    words = {s: [len(m.query.split()) for m in ms] for s, ms in moments.items()}
    for ax, data, label in ((axes[0], durations, "video duration (s)"), (axes[1], lengths, "moment length (s)"),
                            (axes[2], words, "query length (words)")):
        ax.hist([data[s] for s in splits], bins=12, label=splits, density=True)
        ax.set_xlabel(label)
    axes[0].legend(fontsize=7)
    actions = sorted({m.meta.get("action", "?") for ms in moments.values() for m in ms})
    width = 0.8 / len(splits)
    for k, split in enumerate(splits):
        counts = Counter(m.meta.get("action", "?") for m in moments[split])
        total = max(1, len(moments[split]))
        axes[3].bar(np.arange(len(actions)) + k * width, [counts[a] / total for a in actions], width, label=split)
    axes[3].set_xticks(np.arange(len(actions)) + 0.4, [a.replace("_", " ") for a in actions],
                       rotation=60, ha="right", fontsize=7)
    axes[3].set_ylabel("share of queries")
    fig.tight_layout()
    return fig


def composition_table(counts: dict[str, Counter], colours: list[str], actions: list[str],
                      heldout: list[tuple[str, str]]) -> Figure:
    """(colour, action) event counts, one heatmap per group of splits; held-out pairs boxed in red.
    `counts[name][(colour, action)]` -> number of events."""
    fig, axes = plt.subplots(1, len(counts), figsize=(5.5 * len(counts), 3.6), squeeze=False)
    for ax, (name, counter) in zip(axes[0], counts.items()):
        table = np.array([[counter.get((c, a), 0) for a in actions] for c in colours])  # [C, A]
        ax.imshow(table, cmap="Greys")
        for i, c in enumerate(colours):
            for j, a in enumerate(actions):
                ax.text(j, i, str(table[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if table[i, j] > table.max() / 2 else "black")
                if (c, a) in heldout:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
        ax.set_xticks(range(len(actions)), [a.replace("_", " ") for a in actions], rotation=60, ha="right",
                      fontsize=7)
        ax.set_yticks(range(len(colours)), colours, fontsize=7)
        ax.set_title(name, fontsize=9)
    fig.tight_layout()
    return fig
