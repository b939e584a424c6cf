"""VCMR metrics: hand-built cases with known answers and a brute-force cross-check."""
from __future__ import annotations

import numpy as np
import pytest

from c2f_lib.evaluation.vcmr import (VCMRPredictionError, evaluate_vcmr, iou_of_top1, moment_recall,
                                     query_mode, read_predictions, shortlist_ceiling, video_recall,
                                     write_predictions)

GTS = [{"qid": 1, "vid": "a", "relevant_windows": [[10.0, 20.0]]},
       {"qid": 2, "vid": "b", "relevant_windows": [[0.0, 4.0], [30.0, 40.0]]}]


def _records():
    return [
        {"qid": 1, "query": "q1", "gt_vid": "a",
         "ranked_videos": [["b", 0.9], ["a", 0.8], ["c", 0.1]],
         # right times in the wrong video first, then the right video at IoU 10/12 = 0.83
         "moments": [["b", 10.0, 20.0, 0.9], ["a", 10.0, 22.0, 0.8], ["a", 0.0, 5.0, 0.7]],
         "gt_moments": [[10.0, 22.0, 0.8], [0.0, 5.0, 0.7]]},
        {"qid": 2, "query": "q2", "gt_vid": "b",
         "ranked_videos": [["b", 0.7], ["a", 0.6], ["c", 0.5]],
         # IoU with the second GT window: 6/10 = 0.6 -> counts at 0.5 only
         "moments": [["b", 30.0, 36.0, 0.5], ["a", 30.0, 40.0, 0.4]],
         "gt_moments": [[30.0, 36.0, 0.5]]},
    ]


def test_video_recall_and_ceiling():
    vr = video_recall(_records(), ks=(1, 2))
    assert vr == {"VR-R@1": 50.0, "VR-R@2": 100.0}
    assert shortlist_ceiling(_records(), [1, 2]) == {"Ceiling@1": 50.0, "Ceiling@2": 100.0}


def test_vcmr_same_video_rule_and_multiple_windows():
    out = moment_recall(_records(), GTS, "VCMR", ks=(1, 2), thresholds=(0.5, 0.7))
    # q1: rank 1 is the wrong video (IoU forced to 0); rank 2 hits at both thresholds.
    # q2: rank 1 hits at 0.5 (0.6 with the best-overlapping window), never at 0.7.
    assert out == {"VCMR-R@1-IoU0.5": 50.0, "VCMR-R@2-IoU0.5": 100.0,
                   "VCMR-R@1-IoU0.7": 0.0, "VCMR-R@2-IoU0.7": 50.0}


def test_svmr_uses_gt_video_list():
    out = moment_recall(_records(), GTS, "SVMR", ks=(1,), thresholds=(0.5, 0.7))
    assert out == {"SVMR-R@1-IoU0.5": 100.0, "SVMR-R@1-IoU0.7": 50.0}
    np.testing.assert_allclose(iou_of_top1(_records(), GTS, "VCMR"), [0.0, 0.6])
    np.testing.assert_allclose(iou_of_top1(_records(), GTS, "SVMR"), [10 / 12, 0.6])


def test_evaluate_vcmr_bounds_and_errors(tmp_path):
    out = evaluate_vcmr(_records(), GTS, ks=(1, 2), k_videos=(1,))
    assert out["num_queries"] == 2 and out["Ceiling@1"] == 50.0
    assert out["VCMR-R@2-IoU0.7"] <= out["VCMR-R@2-IoU0.5"]
    bad = _records()
    bad[0]["gt_vid"] = "z"
    with pytest.raises(VCMRPredictionError, match="annotated video"):
        evaluate_vcmr(bad, GTS)
    path = tmp_path / "p.jsonl"
    write_predictions(path, _records())
    assert read_predictions(path) == _records()
    path.write_text('{"qid": 1, "gt_vid": "a", "ranked_videos": [], "moments": [["a", 1]]}\n')
    with pytest.raises(VCMRPredictionError, match=r"^moments\[0\] .*, .*p.jsonl:1$"):
        read_predictions(path)


def test_query_mode_is_recorded(tmp_path):
    """Two-query records carry the coarse stage's text; the metrics say which mode made them."""
    assert evaluate_vcmr(_records(), GTS)["query_mode"] == "single"
    two = _records()
    for r, caption in zip(two, ("a video of a", "a video of b")):
        r["coarse_query"] = caption
    assert evaluate_vcmr(two, GTS)["query_mode"] == "two"
    write_predictions(tmp_path / "p.jsonl", two)
    assert query_mode(read_predictions(tmp_path / "p.jsonl")) == "two"
    with pytest.raises(VCMRPredictionError, match="1 of 2 records"):
        evaluate_vcmr([two[0], _records()[1]], GTS)
    two[0]["coarse_query"] = ["not", "text"]
    with pytest.raises(VCMRPredictionError, match="coarse_query must be a string"):
        write_predictions(tmp_path / "q.jsonl", two)


def _brute_force(records, gts, k, t):
    """Loop-by-loop restatement of the TVR rule: hit if any of the first k is same-video & IoU >= t."""
    windows = {g["qid"]: g["relevant_windows"] for g in gts}
    hits = 0
    for r in records:
        for vid, s, e, _ in r["moments"][:k]:
            if vid != r["gt_vid"]:
                continue
            best = 0.0
            for gs, ge in windows[r["qid"]]:
                inter = max(0.0, min(e, ge) - max(s, gs))
                best = max(best, inter / ((e - s) + (ge - gs) - inter))
            if best >= t:
                hits += 1
                break
    return 100 * hits / len(records)


def test_matches_brute_force_on_random_predictions():
    rng = np.random.default_rng(0)
    vids = [f"v{i}" for i in range(5)]
    gts, records = [], []
    for q in range(60):
        start = float(rng.uniform(0, 20))
        gts.append({"qid": q, "vid": vids[q % 5], "relevant_windows": [[start, start + rng.uniform(1, 10)]]})
        moments = []
        for _ in range(int(rng.integers(1, 12))):
            s = float(rng.uniform(0, 25))
            moments.append([vids[int(rng.integers(0, 5))], s, s + float(rng.uniform(0.5, 10)), 0.0])
        records.append({"qid": q, "gt_vid": vids[q % 5], "ranked_videos": [], "moments": moments})
    out = moment_recall(records, gts, "VCMR", ks=(1, 3, 10), thresholds=(0.3, 0.5, 0.7))
    for t in (0.3, 0.5, 0.7):
        for k in (1, 3, 10):
            assert out[f"VCMR-R@{k}-IoU{t:g}"] == pytest.approx(_brute_force(records, gts, k, t), abs=0.01)
    assert 0 < out["VCMR-R@10-IoU0.3"] < 100  # the random case exercises both outcomes
