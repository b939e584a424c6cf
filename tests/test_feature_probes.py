"""Training-free probes of a feature store (grounding AUC, moment -> video recall) and the script oracle."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from c2f_lib.data.schema import MomentQuery
from c2f_lib.evaluation.feature_probes import grounding_auc, moment_video_recall
from c2f_lib.evaluation.script_oracle import script_oracle_records
from c2f_lib.evaluation.vcmr import evaluate_vcmr
from c2f_lib.features.types import MomentSample


def _sample(vid: str, window: list[float], query: str = "q") -> MomentSample:
    return MomentSample(qid=f"{vid}{window}", query=query, vid=vid, duration=10.0, clip_len=2.0,
                        clip_feats=torch.zeros(5, 2), token_feats=torch.zeros(1, 2), windows=[window])


def test_grounding_auc_is_100_for_a_perfect_feature_50_for_a_flat_one_and_0_reversed():
    clips = {"a": torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])}
    sample = _sample("a", [4.0, 10.0])                       # clips 2-4 inside
    assert grounding_auc([sample], torch.tensor([[0.0, 1.0]]), clips) == 100.0
    assert grounding_auc([sample], torch.tensor([[1.0, 0.0]]), clips) == 0.0
    flat = {"a": torch.ones(5, 2)}
    assert grounding_auc([sample], torch.tensor([[0.0, 1.0]]), flat) == 50.0
    with pytest.raises(ValueError, match="cover part"):
        grounding_auc([_sample("a", [0.0, 10.0])], torch.tensor([[0.0, 1.0]]), clips)


def test_moment_video_recall_ranks_videos_by_their_best_clip():
    clips = {"a": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "b": torch.tensor([[0.7, 0.7], [0.7, 0.7]])}
    samples = [_sample("a", [0.0, 2.0]), _sample("b", [0.0, 2.0])]
    recall = moment_video_recall(samples, torch.tensor([[0.0, 1.0], [1.0, 1.0]]), clips, ks=(1, 2))
    # query 1 ([0, 1]): a's second clip is exact -> a first; query 2 ([1, 1]): b's clips point there -> b first
    assert recall == {"R@1": 100.0, "R@2": 100.0, "videos": 2.0}
    recall = moment_video_recall(samples[:1], torch.tensor([[1.0, 1.0]]), clips, ks=(1, 2))
    assert recall["R@1"] == 0.0 and recall["R@2"] == 100.0


def _video(vid: str, events: list[tuple[str, str, str, float, float]]) -> dict:
    return {"vid": vid, "events": [{"actor": {"colour": c, "shape": s}, "action": a, "start": t0, "end": t1}
                                   for c, s, a, t0, t1 in events]}


def test_script_oracle_finds_every_matching_video_and_guesses_among_them():
    videos = [_video("v0", [("red", "circle", "spin", 2.0, 6.0), ("blue", "bar", "grow", 0.0, 4.0)]),
              _video("v1", [("red", "circle", "spin", 10.0, 12.0)]),          # the same event elsewhere
              _video("v2", [("red", "square", "spin", 2.0, 6.0)])]
    queries = [MomentQuery(qid="q0", query="the red circle spins", vid="v0", duration=20.0,
                           relevant_windows=[[2.0, 6.0]], meta={"colour": "red", "shape": "circle", "action": "spin"}),
               MomentQuery(qid="q1", query="the blue bar grows", vid="v0", duration=20.0,
                           relevant_windows=[[0.0, 4.0]], meta={"colour": "blue", "shape": "bar", "action": "grow"})]
    gts = [{"qid": q.qid, "vid": q.vid, "relevant_windows": q.relevant_windows} for q in queries]
    hits = []
    for seed in range(40):
        records = script_oracle_records(videos, queries, seed=seed)
        assert {records[0]["ranked_videos"][0][0], records[0]["ranked_videos"][1][0]} == {"v0", "v1"}
        assert records[1]["ranked_videos"][0][0] == "v0" and records[1]["moments"] == [["v0", 0.0, 4.0, 1.0]]
        metrics = evaluate_vcmr(records, gts, k_videos=(2,))
        assert metrics["SVMR-R@1-IoU0.7"] == 100.0 and metrics["Ceiling@2"] == 100.0
        hits.append(metrics["VCMR-R@1-IoU0.5"])
    assert set(hits) == {50.0, 100.0} and 60 < np.mean(hits) < 90     # q0 is a coin flip between v0 and v1
    with pytest.raises(ValueError, match="needs the query's"):
        script_oracle_records(videos, [MomentQuery(qid="x", query="?", vid="v0", duration=1.0,
                                                   relevant_windows=[[0.0, 1.0]])])
