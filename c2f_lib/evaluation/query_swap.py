"""Does a grounding model read the sentence? The query-swap test.

Every query whose video has another, clearly different moment (ground-truth IoU below `max_iou`)
is asked again with that *partner's* sentence, on the same video. A model that grounds the sentence
follows the new text to the partner's moment; one that has only learnt where moments usually are,
or what the video looks like, predicts the same windows as before. Three numbers tell them apart
(R1@0.5 on the queries that have a partner):

* ``own``: the usual score, the query's own sentence against its own windows;
* ``swapped_vs_own``: the partner's sentence against the query's own windows. A text-blind model
  keeps ``own``; a grounding model drops;
* ``swapped_vs_partner``: the partner's sentence against the partner's windows. A grounding model
  keeps ``own``; a text-blind one drops.

``query_dependence = own - swapped_vs_own`` is 0 for anything that ignores the text (the window prior
scores exactly 0) and ``own`` for a perfect grounder. DETR-style grounding models are known to lean on
such biases (CG-DETR, Moon et al. 2023, measures the same effect with irrelevant queries); the plain
metrics cannot show it, this can.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from c2f_lib.evaluation.moments import evaluate_moments, temporal_iou
from c2f_lib.features.types import MomentSample

Predictor = Callable[[list[MomentSample]], list[dict]]   # e.g. model.predict or WindowPrior.predict


def swap_partners(samples: list[MomentSample], max_iou: float = 0.3, seed: int = 0) -> dict[int, int]:
    """{i: j}: for each sample i with one, a random other sample j of the same video whose windows all
    overlap i's below `max_iou` (a different moment). Deterministic given `seed`."""
    rng = np.random.default_rng(seed)
    by_video: dict[str, list[int]] = {}
    for i, sample in enumerate(samples):
        by_video.setdefault(sample.vid, []).append(i)
    partners = {}
    for i, sample in enumerate(samples):
        others = [j for j in by_video[sample.vid] if j != i
                  and temporal_iou(np.array(sample.windows), np.array(samples[j].windows)).max() < max_iou]
        if others:
            partners[i] = int(others[rng.integers(len(others))])
    return partners


def with_text_of(sample: MomentSample, donor: MomentSample) -> MomentSample:
    """`sample` (same qid, video, windows) asking `donor`'s sentence."""
    return dataclasses.replace(sample, query=donor.query, token_feats=donor.token_feats, token_ids=donor.token_ids)


def _r1(preds: list[dict], targets: list[MomentSample]) -> float:
    """R1@0.5 of preds[k] against targets[k]'s windows (qids renumbered: a partner can serve twice)."""
    preds = [{**p, "qid": k} for k, p in enumerate(preds)]
    gts = [{"qid": k, "duration": t.duration, "relevant_windows": t.windows} for k, t in enumerate(targets)]
    return evaluate_moments(preds, gts)["brief"]["MR-full-R1@0.5"]


def query_swap(predict: Predictor, samples: list[MomentSample], max_iou: float = 0.3, seed: int = 0
               ) -> dict[str, float]:
    """The query-swap scores (percent) of `predict` on `samples`; see the module docstring."""
    partners = swap_partners(samples, max_iou, seed)
    if not partners:
        raise ValueError("query swap needs videos with at least two distinct moments; none in these samples")
    index = sorted(partners)
    own = [samples[i] for i in index]
    partner = [samples[partners[i]] for i in index]
    own_preds = predict(own)
    swapped_preds = predict([with_text_of(s, p) for s, p in zip(own, partner)])
    scores = {"own": _r1(own_preds, own), "swapped_vs_own": _r1(swapped_preds, own),
              "swapped_vs_partner": _r1(swapped_preds, partner)}
    return {**scores, "query_dependence": scores["own"] - scores["swapped_vs_own"], "n_queries": float(len(index))}
