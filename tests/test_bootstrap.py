"""The paired video bootstrap of a difference between two methods, and per-caption hits."""
from __future__ import annotations

import pytest
import torch

from c2f_lib.evaluation.bootstrap import paired_difference_ci
from c2f_lib.evaluation.retrieval import evaluate_retrieval, hits_at, seeded_scores
from c2f_lib.features.types import CoarseSplit
from c2f_lib.models.meanpool import MeanPool, MeanPoolConfig


def test_no_difference_and_a_constant_difference_have_no_spread():
    groups = torch.arange(40) // 4
    hits = (torch.arange(40) % 3 == 0).float()
    assert paired_difference_ci(hits, hits, groups) == {"diff": 0.0, "low": 0.0, "high": 0.0, "level": 0.95}
    shifted = paired_difference_ci(hits + 0.5, hits, groups)
    assert shifted["diff"] == shifted["low"] == shifted["high"] == pytest.approx(50.0)


def test_the_video_is_the_unit_copies_of_a_caption_add_no_certainty():
    g = torch.Generator().manual_seed(0)
    a, b = (torch.rand(50, generator=g) < 0.3).float(), (torch.rand(50, generator=g) < 0.2).float()
    one = paired_difference_ci(a, b, torch.arange(50))
    five = paired_difference_ci(a.repeat_interleave(5), b.repeat_interleave(5), torch.arange(50).repeat_interleave(5))
    assert five == pytest.approx(one)                       # 5 identical captions per video: the same interval
    assert one["low"] < one["diff"] < one["high"]
    wider = paired_difference_ci(a, b, torch.arange(50), level=0.99)
    assert wider["low"] < one["low"] and wider["high"] > one["high"]
    independent = paired_difference_ci(a.repeat_interleave(5), b.repeat_interleave(5), torch.arange(250))
    assert independent["high"] - independent["low"] < 0.6 * (one["high"] - one["low"])   # treated as new videos


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="equal 1-d"):
        paired_difference_ci(torch.zeros(3), torch.zeros(4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="level"):
        paired_difference_ci(torch.zeros(3), torch.zeros(3), torch.zeros(3, dtype=torch.long), level=1.0)


def test_hits_at_are_the_captions_behind_r_at_1():
    g = torch.Generator().manual_seed(1)
    split = CoarseSplit([f"v{i}" for i in range(6)], torch.randn(6, 4, 8, generator=g), [f"t{i}" for i in range(12)],
                        torch.randn(12, 8, generator=g), torch.arange(12) % 6)
    model = MeanPool(MeanPoolConfig(dim=8))
    sims = seeded_scores(model, split, seed=3)                            # as notebook 03 scores
    hits = hits_at(sims, split.text_to_video)
    assert hits.dtype == torch.bool and hits.shape == (12,)
    assert hits.float().mean().item() * 100 == pytest.approx(evaluate_retrieval(model, split, seed=3)["t2v_R@1"])
    assert (hits_at(sims, split.text_to_video, k=6)).all()
