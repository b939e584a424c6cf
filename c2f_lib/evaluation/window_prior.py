"""The window prior: a grounding "model" that never looks at the video or the sentence.

It predicts, for every query, the training set's most frequent ground-truth windows in relative time
(start/duration, end/duration, snapped to a grid), scaled to the query's video; its saliency is how
often a training window covers each relative position. Any fine model must beat it for its numbers
to mean that it grounds the sentence rather than learning where moments usually are.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from c2f_lib.features.types import MomentSample
from c2f_lib.models.span_utils import postprocess_windows, se_to_cw


@dataclass
class WindowPrior:
    windows: list[tuple[float, float]]  # relative [start, end] in [0, 1], most frequent first
    frequency: list[float]              # share of training windows at each
    coverage: np.ndarray                # [bins] share of training windows covering each relative position

    @classmethod
    def fit(cls, train: list[MomentSample], grid: float = 0.05, top_k: int = 10, bins: int = 100) -> "WindowPrior":
        rel = [(s / sample.duration, e / sample.duration) for sample in train for s, e in sample.windows]
        if not rel:
            raise ValueError("the window prior needs training samples with ground-truth windows")
        snapped = Counter(_snap(s, e, grid) for s, e in rel)
        common = snapped.most_common(top_k)
        centres = (np.arange(bins) + 0.5) / bins
        coverage = np.mean([(centres >= s) & (centres < e) for s, e in rel], axis=0)
        return cls(windows=[w for w, _ in common], frequency=[n / len(rel) for _, n in common], coverage=coverage)

    def predict(self, samples: list[MomentSample], top_k: int = 10) -> list[dict]:
        """QVHighlights submission records, like the fine models' `predict`."""
        spans = se_to_cw(torch.tensor(self.windows, dtype=torch.float32))  # [K, 2] relative (centre, width)
        scores = torch.tensor(self.frequency)
        out = []
        for sample in samples:
            clips = len(sample.clip_feats)
            centres = (np.arange(clips) + 0.5) * sample.clip_len / sample.duration
            index = np.clip((centres * len(self.coverage)).astype(int), 0, len(self.coverage) - 1)
            out.append({"qid": sample.qid, "query": sample.query, "vid": sample.vid,
                        "pred_relevant_windows": postprocess_windows(spans, scores, sample.duration,
                                                                     sample.clip_len, top_k=top_k),
                        "pred_saliency_scores": [round(float(x), 4) for x in self.coverage[index]]})
        return out


def _snap(start: float, end: float, grid: float) -> tuple[float, float]:
    """Relative window on the grid, at least one grid step long."""
    first = round(start / grid)
    last = max(round(end / grid), first + 1)
    return round(first * grid, 6), round(last * grid, 6)
