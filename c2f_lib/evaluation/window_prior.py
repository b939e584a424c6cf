"""The window prior: a grounding "model" that never looks at the video or the sentence.

It predicts, for every query, the same windows in relative time (start/duration, end/duration, on a
grid), scaled to the query's video: first the grid window that overlaps (IoU >= 0.5) the most training
windows, then, greedily, the one that overlaps the most training windows not yet overlapped, and so on.
So its top-1 is the best R1@0.5 any text-blind, video-blind answer reaches on the training set, and its
later windows cover the rest of the distribution (fewer than `top_k` when they already overlap every
training window). Its saliency is how often a training window covers each relative position.
Beating it is necessary for a fine model's numbers to mean grounding, not sufficient: a model can also
learn where moments usually are *given the video*; the query-swap test (`query_swap.py`) checks whether
it reads the sentence.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from c2f_lib.evaluation.moments import temporal_iou
from c2f_lib.features.types import MomentSample
from c2f_lib.models.span_utils import postprocess_windows, se_to_cw


@dataclass
class WindowPrior:
    windows: list[tuple[float, float]]  # relative [start, end] in [0, 1], greedy order
    frequency: list[float]              # share of training windows each newly overlaps (IoU >= 0.5)
    coverage: np.ndarray                # [bins] share of training windows covering each relative position

    @classmethod
    def fit(cls, train: list[MomentSample], grid: float = 0.05, top_k: int = 10, bins: int = 100) -> "WindowPrior":
        rel = [(s / sample.duration, e / sample.duration) for sample in train for s, e in sample.windows]
        if not rel:
            raise ValueError("the window prior needs training samples with ground-truth windows")
        steps = round(1 / grid)
        candidates = np.array([(a / steps, b / steps) for a in range(steps) for b in range(a + 1, steps + 1)])
        iou = temporal_iou(candidates, np.array(rel))                                # [C, N]
        hit = iou >= 0.5
        uncovered = np.ones(len(rel), dtype=bool)
        windows, frequency = [], []
        while len(windows) < top_k and uncovered.any():
            new_hits = hit & uncovered                                                  # [C, N]
            gain = new_hits.sum(1)                                                      # [C]
            if gain.max() == 0:                                                         # too short to hit
                break
            # ties (e.g. a window and its one-step-longer neighbour) go to the closer fit
            best = int(np.lexsort((-(iou * new_hits).sum(1), -gain))[0])
            windows.append((round(float(candidates[best, 0]), 6), round(float(candidates[best, 1]), 6)))
            frequency.append(float(gain[best]) / len(rel))
            uncovered &= ~hit[best]
        centres = (np.arange(bins) + 0.5) / bins
        coverage = np.mean([(centres >= s) & (centres < e) for s, e in rel], axis=0)
        return cls(windows=windows, frequency=frequency, coverage=coverage)

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

