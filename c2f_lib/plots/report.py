"""Figures of the evaluation report (notebook 06). Each function returns a matplotlib Figure."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from c2f_lib.evaluation.vcmr import IOU_THRESHOLDS, RECALL_KS


def recall_curves(metrics_by_method: dict[str, dict[str, float]], setting: str = "VCMR",
                  ks: Sequence[int] = RECALL_KS) -> plt.Figure:
    """R@K against K (log axis), one line per method, one panel per IoU threshold. Methods whose curves are
    identical (SVMR: every coarse method hands the same fine model the ground-truth video) share one line."""
    curves: dict[tuple, list[str]] = {}
    for method, metrics in metrics_by_method.items():
        key = tuple(metrics.get(f"{setting}-R@{k}-IoU{t:g}") for t in IOU_THRESHOLDS for k in ks)
        curves.setdefault(key, []).append(method)
    rows = [{"method": " = ".join(methods), "K": k, "IoU": f"IoU ≥ {t:g}",
             "recall": metrics_by_method[methods[0]][f"{setting}-R@{k}-IoU{t:g}"]}
            for methods in curves.values() for t in IOU_THRESHOLDS for k in ks
            if f"{setting}-R@{k}-IoU{t:g}" in metrics_by_method[methods[0]]]
    grid = sns.relplot(pd.DataFrame(rows), x="K", y="recall", hue="method", col="IoU", kind="line",
                       marker="o", height=3, aspect=1.2)
    grid.set_titles(col_template="{col_name}")
    grid.set(xscale="log", xlabel="K (a hit among the first K moments)", ylabel=f"{setting} R@K (%)")
    return grid.figure


def iou_distributions(ious_by_method: dict[str, Sequence[float]]) -> plt.Figure:
    """Histogram of each query's top-1 IoU (0 = wrong video or no overlap)."""
    rows = [{"method": m, "IoU": float(v)} for m, ious in ious_by_method.items() for v in ious]
    fig, ax = plt.subplots(figsize=(6, 3))
    sns.histplot(pd.DataFrame(rows), x="IoU", hue="method", bins=20, binrange=(0, 1), element="step", ax=ax)
    ax.set_title("top-1 moment IoU per query")
    fig.tight_layout()
    return fig


def effect_of_k(by_k: dict[str, dict[int, dict[str, float]]], metric: str = "VCMR-R@1-IoU0.5") -> plt.Figure:
    """`metric` and the shortlist ceiling against the number of videos searched, per method."""
    rows = []
    for method, per_k in by_k.items():
        for k, m in per_k.items():
            rows.append({"method": method, "K": k, "value": m[metric], "curve": metric})
            rows.append({"method": method, "K": k, "value": m[f"Ceiling@{k}"], "curve": "ceiling"})
    fig, ax = plt.subplots(figsize=(6, 3))
    sns.lineplot(pd.DataFrame(rows), x="K", y="value", hue="method", style="curve", marker="o", ax=ax)
    ax.set(xlabel="videos handed to the fine model", ylabel="percent of queries")
    ax.set_title(f"{metric.replace('-', ' ')} and the shortlist ceiling")
    fig.tight_layout()
    return fig


def split_bars(metrics: pd.DataFrame, metric: str = "VCMR-R@1-IoU0.5") -> plt.Figure:
    """Bars of `metric` per split (columns: method, split, and the metric)."""
    fig, ax = plt.subplots(figsize=(6, 3))
    sns.barplot(metrics, x="split", y=metric, hue="method", ax=ax)
    ax.set_title(metric)
    fig.tight_layout()
    return fig
