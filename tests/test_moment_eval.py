"""The moment-retrieval evaluator: hand-computed cases, an independent re-implementation, CLI, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from c2f_lib.cli import main as c2f
from c2f_lib.evaluation.moments import (
    PredictionError, detection_ap, evaluate_moments, ranking_ap, temporal_iou)


def _gt(qid, windows, duration=150.0, **extra):
    return {"qid": qid, "query": f"q{qid}", "vid": f"v{qid}", "duration": duration,
            "relevant_windows": windows, **extra}


def _pred(qid, windows, saliency=None):
    out = {"qid": qid, "query": f"q{qid}", "vid": f"v{qid}", "pred_relevant_windows": windows}
    if saliency is not None:
        out["pred_saliency_scores"] = saliency
    return out


# ------------------------------------------------------------------ hand-computed cases
@pytest.mark.parametrize("pred, gt, expected", [
    ([0, 10], [0, 10], 1.0),        # identical
    ([0, 5], [5, 10], 0.0),         # touching
    ([0, 5], [6, 10], 0.0),         # disjoint
    ([2, 4], [0, 10], 0.2),         # contained
    ([3, 3], [0, 10], 0.0),         # zero length
    ([0, 7], [0, 10], 0.7),
    ([5, 15], [0, 10], 5 / 15),     # half overlap
])
def test_temporal_iou_cases(pred, gt, expected):
    assert temporal_iou(np.array([pred]), np.array([gt]))[0, 0] == pytest.approx(expected)


def test_detection_ap_by_hand_two_gt_windows():
    # GT [0,10], [20,30]; ranked preds: TP, FP, TP -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    # Envelope: 1 on (0, .5], 2/3 on (.5, 1] -> AP = .5 * 1 + .5 * 2/3 = 5/6 at every threshold.
    preds = np.array([[40, 50], [20, 30], [0, 10]], dtype=float)
    scores = np.array([0.8, 0.7, 0.9])          # deliberately not listed in score order
    ap = detection_ap(preds, scores, np.array([[0, 10], [20, 30]], dtype=float))
    np.testing.assert_allclose(ap, 5 / 6)


def test_detection_ap_duplicate_is_false_positive_and_threshold_matters():
    gt = np.array([[0.0, 10.0]])
    # The duplicate cannot claim the locked GT, but it comes after full recall: AP stays 1.
    assert detection_ap(np.array([[0, 10], [0, 10]], float), np.array([0.9, 0.8]), gt)[0] == 1.0
    # IoU 0.7 exactly: a TP for θ <= 0.7, an FP above -> 5 of 10 thresholds.
    ap = detection_ap(np.array([[0, 7]], float), np.array([1.0]), gt)
    assert ap.tolist() == [1.0] * 5 + [0.0] * 5


def test_r1_map_and_buckets_by_hand():
    gts = [_gt(0, [[0, 10], [20, 30]]), _gt(1, [[0, 40]])]
    preds = [_pred(0, [[0, 10, 0.9], [40, 50, 0.8], [20, 30, 0.7]]),
             _pred(1, [[0, 28, 0.9]])]                  # IoU 0.7 with [0, 40]
    out = evaluate_moments(preds, gts)
    full = out["MR-full"]
    assert full["R1@0.5"] == 100.0 and full["R1@0.7"] == 100.0 and full["R1@0.75"] == 50.0
    # query 0: 5/6 at every θ; query 1: 1 for θ <= .7 (5 thresholds), else 0.
    assert full["mAP"] == pytest.approx(round(100 * (5 / 6 + 0.5) / 2, 2))
    assert full["mAP@0.5"] == pytest.approx(round(100 * (5 / 6 + 1) / 2, 2))
    assert full["mAP@0.75"] == pytest.approx(round(100 * (5 / 6) / 2, 2))
    # short bucket keeps query 0 with both of its 10-s windows; long keeps query 1 only.
    assert out["MR-short"]["n_queries"] == 1 and out["MR-short"]["mAP"] == pytest.approx(83.33)
    assert out["MR-middle"]["n_queries"] == 0 and "MR-middle-mAP" not in out["brief"]
    assert out["MR-long"]["n_queries"] == 1 and out["MR-long"]["mAP"] == 50.0
    # R5 takes the best of the first five listed windows; mIoU is the top-1 IoU.
    assert out["recall"]["R1@0.7"] == 100.0 and out["recall"]["mIoU"] == pytest.approx(85.0)


def test_bucket_counts_out_of_bucket_hit_as_false_positive():
    gts = [_gt(0, [[0, 8], [50, 100]])]
    preds = [_pred(0, [[50, 100, 0.9], [0, 8, 0.5]])]
    out = evaluate_moments(preds, gts)
    assert out["MR-full"]["mAP"] == 100.0
    # short: only [0,8] stays; the top prediction is an FP -> precision 1/2 at recall 1.
    assert out["MR-short"]["mAP"] == 50.0


def test_ranking_ap_by_hand_and_conventions():
    # ranked labels 1,0,0,1 -> interpolated precision 1 and 1/2 at the two positives.
    assert ranking_ap(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.1, 0.5])) == pytest.approx(0.75)
    assert ranking_ap(np.zeros(4), np.arange(4.0)) == 0.0
    assert ranking_ap(np.ones(4), np.arange(4.0)) == 1.0
    # tied scores form one threshold: 2 positives among 4 tied clips -> precision 1/2.
    assert ranking_ap(np.array([1, 0, 1, 0]), np.zeros(4)) == pytest.approx(0.5)


def test_highlight_metrics_by_hand():
    gt = _gt(0, [[0, 4]], duration=8.0, relevant_clip_ids=[0, 2],
             saliency_scores=[[4, 2, 1], [1, 3, 4]])       # 4 clips x 3 annotators
    pred = _pred(0, [[0, 4, 1.0]], saliency=[0.1, 0.2, 0.9, 0.3])
    hl = evaluate_moments([pred], [gt])["HL"]
    # Fair (>=2): columns [1,0,0,0], [1,0,1,0], [0,0,1,0]; ranking by score: clip 2,3,1,0.
    # AP col0 = 1/4; col1 = (1 + 2/4)/2 = 3/4; col2 = 1. Top clip 2 is positive for annotator 2/3.
    assert hl["HL-min-Fair-mAP"] == pytest.approx(round(100 * (0.25 + 0.75 + 1) / 3, 2))
    assert hl["HL-min-Fair-Hit1"] == 100.0
    # VeryGood (>=4): columns [1,0,0,0], all-zero, [0,0,1,0] -> (1/4 + 0 + 1)/3.
    assert hl["HL-min-VeryGood-mAP"] == pytest.approx(round(100 * 1.25 / 3, 2))


# ------------------------------------------------------------------ independent re-implementation
def _naive_iou(a, b):
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


def _naive_ap(pred, gt_windows, theta):
    ranked = sorted(pred["pred_relevant_windows"][:10], key=lambda w: -w[2])
    free, hits = list(gt_windows), []
    for w in ranked:
        best = max(free, key=lambda g: _naive_iou(w, g), default=None)
        ok = best is not None and _naive_iou(w, best) >= theta
        if ok:
            free.remove(best)
        hits.append(ok)
    # AP = sum over true positives of (best precision at this or any later rank) / #GT
    precisions = [sum(hits[:k + 1]) / (k + 1) for k in range(len(hits))]
    return sum(max(precisions[k:]) for k in range(len(hits)) if hits[k]) / len(gt_windows)


def _naive_ranking_ap(labels, scores):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    pos_ranks = [r for r, i in enumerate(order) if labels[i]]
    prec = [(k + 1) / (r + 1) for k, r in enumerate(pos_ranks)]
    return sum(max(prec[k:]) for k in range(len(prec))) / len(prec)


def test_matches_naive_implementation_on_random_predictions():
    rng = np.random.default_rng(0)
    gts, preds = [], []
    for q in range(60):
        starts = np.sort(rng.uniform(0, 100, rng.integers(1, 4)))
        windows = [[float(s), float(s + rng.uniform(2, 40))] for s in starts]
        gts.append(_gt(q, windows))
        p_s = rng.uniform(0, 120, 12)
        preds.append(_pred(q, [[float(s), float(s + rng.uniform(1, 40)), float(rng.uniform())]
                               for s in p_s]))
    out = evaluate_moments(preds, gts)["MR-full"]
    thetas = [0.5 + 0.05 * i for i in range(10)]
    naive = np.array([[_naive_ap(p, g["relevant_windows"], t) for t in thetas] for p, g in zip(preds, gts)])
    assert out["mAP"] == pytest.approx(round(100 * naive.mean(), 2), abs=0.006)
    assert out["mAP@0.5"] == pytest.approx(round(100 * naive[:, 0].mean(), 2), abs=0.006)
    top1 = [max(_naive_iou(p["pred_relevant_windows"][0], g) for g in gt["relevant_windows"])
            for p, gt in zip(preds, gts)]
    assert out["R1@0.5"] == pytest.approx(100 * np.mean(np.array(top1) >= 0.5), abs=0.006)

    for _ in range(20):
        labels = rng.integers(0, 2, 15)
        labels[0] = 1 - labels[1] if labels.min() == labels.max() else labels[0]
        scores = rng.uniform(size=15)
        assert ranking_ap(labels, scores) == pytest.approx(_naive_ranking_ap(labels, scores))


# ------------------------------------------------------------------ errors and CLI
def test_unknown_and_missing_qids_are_errors():
    gts = [_gt(0, [[0, 10]]), _gt(1, [[0, 10]])]
    with pytest.raises(PredictionError, match="not in the ground truth"):
        evaluate_moments([_pred(0, [[0, 10, 1]]), _pred(7, [[0, 10, 1]])], gts)
    with pytest.raises(PredictionError, match="have no prediction"):
        evaluate_moments([_pred(0, [[0, 10, 1]])], gts)
    assert evaluate_moments([_pred(0, [[0, 10, 1]])], gts, match_number=False)["n_queries"] == 1
    with pytest.raises(PredictionError, match="start, end, score"):
        evaluate_moments([_pred(0, [[0, 10]]), _pred(1, [[0, 10, 1]])], gts)


def test_cli_writes_metrics(tmp_path, capsys):
    gt_path, pred_path, out = tmp_path / "gt.jsonl", tmp_path / "p.jsonl", tmp_path / "m.json"
    gt_path.write_text(json.dumps(_gt("a", [[0, 10]], duration=30.0)) + "\n")
    pred_path.write_text(json.dumps(_pred("a", [[0, 10, 0.5]])) + "\n")
    assert c2f(["eval-moments", str(pred_path), str(gt_path), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["brief"]["MR-full-R1@0.7"] == 100.0
    pred_path.write_text(json.dumps(_pred("b", [[0, 10, 0.5]])) + "\n")
    assert c2f(["eval-moments", str(pred_path), str(gt_path)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"qid 'b' is not in the ground truth, {pred_path}:1:qid")


def _eval_error(tmp_path, capsys, gt_rows, pred_rows, *flags) -> str:
    """The one line `c2f eval-moments` prints for these files (rows: dicts or raw text lines)."""
    gt_path, pred_path, out = tmp_path / "gt.jsonl", tmp_path / "p.jsonl", tmp_path / "m.json"
    for path, rows in ((gt_path, gt_rows), (pred_path, pred_rows)):
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    assert c2f(["eval-moments", str(pred_path), str(gt_path), "--out", str(out), *flags]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and not out.exists(), lines
    return lines[0].replace(str(tmp_path) + "/", "")


GT = [_gt(1, [[0, 10]], duration=30.0), _gt(2, [[5, 10]], duration=30.0)]
PRED = [_pred(1, [[0, 10, 0.9]]), _pred(2, [[5, 10, 0.9]])]


@pytest.mark.parametrize("gt_rows, pred_rows, expected", [
    # Defect 5: each of these was accepted (rc 0), scored as a miss, or gave NaN metrics / invalid JSON.
    (GT + [_gt(1, [[1, 2]], duration=30.0)], PRED, "qid 1 given twice (first on line 1), gt.jsonl:3:qid"),
    (GT, PRED + [_pred(2, [[5, 10, 0.5]])], "qid 2 predicted twice (first on line 2), p.jsonl:3:qid"),
    (GT, [PRED[0], '{"qid": 2, "pred_relevant_windows": [[NaN, 10, 0.9]]}'],
     "expected three finite numbers [start, end, score], got [nan, 10, 0.9], p.jsonl:2:pred_relevant_windows[0]"),
    (GT, [PRED[0], _pred(2, [["a", 10, 0.9]])],
     "expected three finite numbers [start, end, score], got ['a', 10, 0.9], p.jsonl:2:pred_relevant_windows[0]"),
    (GT, [PRED[0], _pred(2, [[-50, 100, 0.9]])],
     "window [-50, 100, 0.9] does not start inside the video (0 <= start < 30 s), p.jsonl:2:pred_relevant_windows[0]"),
    (GT, [PRED[0], _pred(2, [[5, 10, 0.9], [31, 40, 0.1]])],
     "window [31, 40, 0.1] does not start inside the video (0 <= start < 30 s), p.jsonl:2:pred_relevant_windows[1]"),
    (GT, [PRED[0], _pred(2, [[9, 5, 0.9]])], "ends before it starts (write [start, end, score] with start <= end), "
                                             "p.jsonl:2:pred_relevant_windows[0]"),
    (GT, ["", "5", PRED[1]], "expected a JSON object, got int 5, p.jsonl:2"),
    (GT, [PRED[0]], "1 ground-truth qid(s) have no prediction, e.g. ['2'] (evaluate only the predicted ones with "
                    "--allow-missing; in Python, match_number=False), p.jsonl"),
    ([], [], "no ground-truth queries (an empty file?), gt.jsonl"),
    (GT, [], "no predictions (an empty file?), p.jsonl"),
    (GT, ["{"], "not valid JSON (Expecting property name enclosed in double quotes), p.jsonl:1:<json>"),
])
def test_cli_refuses_bad_input_in_one_line(tmp_path, capsys, gt_rows, pred_rows, expected):
    assert _eval_error(tmp_path, capsys, gt_rows, pred_rows).endswith(expected)


def test_cli_refuses_a_folder_and_a_zero_clip_length(tmp_path, capsys):
    (tmp_path / "gt.jsonl").write_text(json.dumps(GT[0]) + "\n")
    assert c2f(["eval-moments", str(tmp_path), str(tmp_path / "gt.jsonl")]) == 2
    assert capsys.readouterr().err.strip() == f"c2f eval-moments: is a folder, expected a .jsonl file, {tmp_path}"
    with pytest.raises(SystemExit):
        c2f(["eval-moments", "p.jsonl", "gt.jsonl", "--clip-len", "0"])
    assert "argument --clip-len: must be a positive number, got 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="clip_len must be positive"):
        evaluate_moments(PRED, GT, clip_len=0.0)


def test_allow_missing_evaluates_the_subset_and_writes_strict_json(tmp_path, capsys):
    gt_path, pred_path, out = tmp_path / "gt.jsonl", tmp_path / "p.jsonl", tmp_path / "m.json"
    gt_path.write_text("".join(json.dumps(g) + "\n" for g in GT))
    pred_path.write_text(json.dumps(PRED[0]) + "\n")
    assert c2f(["eval-moments", str(pred_path), str(gt_path), "--allow-missing", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the metrics file"))
    assert metrics["n_queries"] == 1 and metrics["brief"]["MR-full-R1@0.5"] == 100.0


def test_qvhighlights_val_ground_truth_as_predictions(shared_datasets):
    from c2f_lib.data.schema import read_moments

    gts = [m.to_json() for m in read_moments(shared_datasets / "qvhighlights" / "highlight_val_release.jsonl")]
    preds = [_pred(g["qid"], [[s, e, 1.0 - 0.01 * i] for i, (s, e) in enumerate(g["relevant_windows"])])
             for g in gts]
    out = evaluate_moments(preds, gts, match_number=False)
    # Bucket sizes of the official evaluator on val (spec fine.md §3.1): 429 / 957 / 574 of 1550.
    assert [out[f"MR-{b}"]["n_queries"] for b in ("full", "short", "middle", "long")] == [1550, 429, 957, 574]
    assert out["MR-full"]["R1@0.7"] == 100.0
    # Only the first 10 predictions count: a query with n > 10 GT windows reaches recall 10/n at precision 1.
    expected = np.mean([min(1.0, 10 / len(g["relevant_windows"])) for g in gts])
    assert out["MR-full"]["mAP"] == pytest.approx(round(100 * expected, 2)) and out["MR-full"]["mAP"] < 100


def test_cli_refuses_unlabelled_ground_truth(tmp_path, capsys):
    gt_path, pred_path = tmp_path / "hidden_gt.jsonl", tmp_path / "p.jsonl"
    gt_path.write_text(json.dumps({"qid": "a", "query": "qa", "vid": "va", "duration": 30.0}) + "\n")
    pred_path.write_text(json.dumps(_pred("a", [[0, 10, 0.5]])) + "\n")
    assert c2f(["eval-moments", str(pred_path), str(gt_path)]) == 2
    err = capsys.readouterr().err
    assert str(gt_path) in err and "no relevant_windows" in err and "'a'" in err


def test_qvhighlights_test_predict_and_submit_but_not_evaluate(shared_datasets, tmp_path, capsys):
    """The hidden QVHighlights test split loads unlabelled, goes through a fine model into a
    submission file, and `c2f eval-moments` refuses it as ground truth."""
    from c2f_lib.data import registry
    from c2f_lib.data.schema import write_moments
    from c2f_lib.evaluation.moments import read_jsonl, write_predictions
    from c2f_lib.features.store_bundles import load_moment_samples
    from c2f_lib.features.testing import make_random_store
    from c2f_lib.models.moment_detr import MomentDETR, MomentDETRConfig

    split = registry.load_split("qvhighlights", "test", shared_datasets)
    assert not split.labelled and len(split.moments) == 1542 and not any(m.labelled for m in split.moments)
    split.validate()
    gt_path = tmp_path / "moments_test.jsonl"
    write_moments(gt_path, split.moments[:6])
    store = make_random_store(tmp_path / "store.h5", split.moments[:6], [], dim=8, token_dim=8)
    with pytest.raises(ValueError, match="no window"):
        load_moment_samples(store, gt_path)
    samples = load_moment_samples(store, gt_path, labelled=False)
    model = MomentDETR(MomentDETRConfig(video_dim=8, text_dim=8, hidden_dim=16, n_heads=2, ffn_dim=32)).eval()
    pred_path = tmp_path / "submission.jsonl"
    write_predictions(pred_path, model.predict(samples))
    assert [p["qid"] for p in read_jsonl(pred_path)] == [m.qid for m in split.moments[:6]]
    real = shared_datasets / "qvhighlights" / "highlight_test_release.jsonl"
    assert c2f(["eval-moments", str(pred_path), str(real)]) == 2
    err = capsys.readouterr().err
    assert "1542 ground-truth queries have no relevant_windows" in err and err.strip().endswith(str(real))


# ------------------------------------------------------------------ official-evaluator regression
def _official_regression_case():
    """4 queries: tied scores, an unsorted listing, a window past the video end, 11 windows (the best-scored
    hit is the 11th, so it is cut), saliency lists too long / too short, every length bucket."""
    gts = [
        _gt(1, [[0, 10], [20, 40]], relevant_clip_ids=[0, 1, 2, 10, 11],
            saliency_scores=[[4, 2, 1], [3, 3, 0], [1, 4, 2], [2, 2, 2], [0, 1, 4]]),
        _gt(2, [[10, 50]], duration=60.0, relevant_clip_ids=[5, 6, 7],
            saliency_scores=[[1, 1, 1], [4, 4, 4], [2, 3, 1]]),
        _gt(3, [[4, 6], [8, 10]], duration=30.0, relevant_clip_ids=[2, 4], saliency_scores=[[3, 2, 4], [4, 4, 4]]),
        _gt(4, [[2, 14]], duration=20.0, relevant_clip_ids=[1, 2, 3, 4, 5, 6],
            saliency_scores=[[0, 0, 0], [2, 2, 2], [2, 1, 3], [3, 3, 3], [1, 2, 2], [4, 0, 0]]),
    ]
    preds = [
        _pred(1, [[20, 40, 0.9], [0, 8, 0.9], [50, 60, 0.5]], [0.5, 0.5, 0.9] + [0.0] * 72),
        _pred(2, [[0, 20, 0.2], [12, 50, 0.8], [40, 70, 0.8]], [0.1] * 6 + [0.7, 0.7] + [0.1] * 30),
        _pred(3, [[4, 7, 0.3]] + [[20, 22, 0.5]] * 9 + [[8, 10, 0.99]], [0.0, 0.2, 0.2, 0.9]),
        _pred(4, [[2, 12, 0.6], [0, 14, 0.6]], [0, 1, 2, 3, 3, 2, 1, 0, 0, 0]),
    ]
    return preds, gts


def test_matches_official_evaluator_on_hand_made_case():
    """Expected numbers were produced by the official QVHighlights evaluator (jayleicn/moment_detr
    standalone_eval/eval.py @ 2fa9e32eb6e0097ba8b4f841046aa3345d748cee, run outside this repo) - an
    independent implementation. The MR ones also follow by hand: per-query AP at θ=0.5 is
    Q1 1 (ties keep listed order), Q2 1 (IoU 38/40), Q3 0.05 (the [8,10] hit is the 11th window; [4,7] is
    a TP at rank 10), Q4 1 -> 76.25; R1 uses the first *listed* window (IoUs 1, 0.2, 2/3, 5/6)."""
    out = evaluate_moments(*_official_regression_case())
    expected = {  # bucket -> (mAP avg, mAP@0.5, mAP@0.75, mAP@0.85, R1@0.5, R1@0.7)
        "full": (65.5, 76.25, 75.0, 50.0, 75.0, 50.0), "short": (18.5, 27.5, 25.0, 0.0, 50.0, 0.0),
        "middle": (87.5, 100.0, 100.0, 75.0, 100.0, 100.0), "long": (100.0, 100.0, 100.0, 100.0, 0.0, 0.0)}
    for bucket, values in expected.items():
        got = out[f"MR-{bucket}"]
        assert tuple(got[k] for k in ("mAP", "mAP@0.5", "mAP@0.75", "mAP@0.85", "R1@0.5", "R1@0.7")) == values
    assert out["HL"] == {"HL-min-Fair-mAP": 60.94, "HL-min-Fair-Hit1": 75.0, "HL-min-Good-mAP": 49.69,
                         "HL-min-Good-Hit1": 75.0, "HL-min-VeryGood-mAP": 28.17, "HL-min-VeryGood-Hit1": 50.0}


def test_reversed_windows_are_refused():
    # The official code scores [14, 12] against GT [10, 12] as 0/0 = NaN, which its matching counts as a hit.
    with pytest.raises(PredictionError, match="ends before it starts"):
        evaluate_moments([_pred(0, [[0, 2, 0.9], [14, 12, 0.5]])], [_gt(0, [[10, 12]])])
