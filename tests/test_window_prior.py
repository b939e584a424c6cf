"""The window prior: the relative windows that overlap the most training windows, scaled to each video."""
from __future__ import annotations

import pytest
import torch

from c2f_lib.evaluation.moments import evaluate_moments
from c2f_lib.evaluation.window_prior import WindowPrior
from c2f_lib.features.types import MomentSample
from c2f_lib.training.fine import samples_to_ground_truth


def _sample(qid: str, duration: float, windows: list[list[float]]) -> MomentSample:
    clips = int(duration // 2)
    return MomentSample(qid=qid, query="q", vid=f"v{qid}", duration=duration, clip_len=2.0,
                        clip_feats=torch.zeros(clips, 4), token_feats=torch.zeros(3, 4), windows=windows)


def test_prior_predicts_the_most_frequent_relative_window():
    # 3 of 4 training windows are the second fifth of their video, one is the last fifth.
    train = [_sample("a", 20.0, [[4.0, 8.0]]), _sample("b", 40.0, [[8.0, 16.0]]),
             _sample("c", 60.0, [[12.0, 24.0]]), _sample("d", 20.0, [[16.0, 20.0]])]
    prior = WindowPrior.fit(train)
    assert prior.windows[0] == pytest.approx((0.2, 0.4)) and prior.frequency[0] == pytest.approx(0.75)
    test = [_sample("t", 100.0, [[20.0, 40.0]])]
    preds = prior.predict(test)
    assert preds[0]["pred_relevant_windows"][0][:2] == [20.0, 40.0]               # scaled to this video
    assert preds[0]["pred_relevant_windows"][1][:2] == [80.0, 100.0]
    saliency = preds[0]["pred_saliency_scores"]
    assert len(saliency) == 50 and saliency[15] == pytest.approx(0.75) and saliency[2] == 0.0
    metrics = evaluate_moments(preds, samples_to_ground_truth(test))["brief"]
    assert metrics["MR-full-R1@0.7"] == 100.0


def test_prior_prefers_the_window_that_overlaps_most_over_the_most_frequent_one():
    # (0.8, 1.0) occurs twice, but (0.15, 0.35) overlaps three windows at IoU 0.6 each: a better top-1.
    train = [_sample("a", 40.0, [[4.0, 12.0]]), _sample("b", 40.0, [[6.0, 14.0]]), _sample("c", 40.0, [[8.0, 16.0]]),
             _sample("d", 40.0, [[32.0, 40.0]]), _sample("e", 40.0, [[32.0, 40.0]])]
    prior = WindowPrior.fit(train)
    assert prior.windows == [pytest.approx((0.15, 0.35)), pytest.approx((0.8, 1.0))]
    assert prior.frequency == pytest.approx([0.6, 0.4])        # then every training window is overlapped
    r1 = evaluate_moments(prior.predict(train), samples_to_ground_truth(train))["brief"]["MR-full-R1@0.5"]
    assert r1 == pytest.approx(60.0)


def test_prior_needs_windows():
    with pytest.raises(ValueError, match="ground-truth windows"):
        WindowPrior.fit([])
