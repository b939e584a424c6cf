"""Moment-retrieval and highlight-detection metrics (QVHighlights standard + Charades/TACoS style).

Follows the official QVHighlights evaluator (Moment-DETR ``standalone_eval/eval.py``) to the second
decimal (spec fine.md §3.1):

* ``MR-<bucket>-R1@θ``: the *first listed* window against the GT window it overlaps most, hit if IoU >= θ.
* ``MR-<bucket>-mAP``: per-query ActivityNet-style detection AP over the first 10 predictions (sorted by
  score, stable), averaged over θ in 0.5:0.05:0.95; also ``mAP@0.5`` / ``mAP@0.75``. Buckets filter the
  GT windows by length (short (0,10], middle (10,30], long (30,150]); "full" keeps everything.
* ``HL-min-{Fair,Good,VeryGood}-{mAP,Hit1}`` from per-clip saliency scores (thresholds 2/3/4) when the GT
  carries ``relevant_clip_ids`` + ``saliency_scores``.

Plus ``R1@m``, ``R5@m`` (m in 0.3/0.5/0.7) and ``mIoU`` of the top-1 window for single-window datasets
(Charades-STA, TACoS); with several GT windows the best-overlapping one counts. All numbers are percent.
Inputs are plain dicts: predictions in the QVHighlights submission format, ground truth as
``MomentQuery.to_json()`` records. Windows with end < start are refused: the official code scores them
by accident (a 0/0 IoU compares as a hit), so there is no official number to match. So are windows that
start outside the video (before 0 or after its end), non-numeric or NaN values, repeated qids and empty
inputs (no NaN metric is ever returned); errors name the predictions file, its line and the field.
Checked against the official code (moment_detr@2fa9e32) on 3 x 1550 synthetic val submissions:
every metric equal after rounding to 2 decimals.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from c2f_lib.data.schema import WINDOW_EPS, iter_jsonl, read_moments
from c2f_lib.errors import UserError

MAP_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
R1_THRESHOLDS = MAP_THRESHOLDS
RECALL_THRESHOLDS = (0.3, 0.5, 0.7)
# name -> (min, max] GT-window length in seconds; None = no filter.
QVH_BUCKETS: dict[str, tuple[float, float] | None] = {
    "full": None, "short": (0.0, 10.0), "middle": (10.0, 30.0), "long": (30.0, 150.0)}
SALIENCY_LEVELS = {"Fair": 2, "Good": 3, "VeryGood": 4}
MAX_PRED_WINDOWS = 10


class PredictionError(UserError, ValueError):
    """Predictions that do not fit the ground truth (unknown/missing qids, malformed entries)."""


# ----------------------------------------------------------------------------- IoU
def temporal_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of every pred window with every gt window: pred [N,2], gt [M,2] -> [N,M] (0 when disjoint)."""
    pred = np.asarray(pred, dtype=float).reshape(-1, 2)
    gt = np.asarray(gt, dtype=float).reshape(-1, 2)
    inter = np.clip(np.minimum(pred[:, None, 1], gt[None, :, 1])
                    - np.maximum(pred[:, None, 0], gt[None, :, 0]), 0, None)
    union = (pred[:, 1] - pred[:, 0])[:, None] + (gt[:, 1] - gt[:, 0])[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


# ----------------------------------------------------------------------------- AP helpers
def interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC-2011 all-point AP: monotone precision envelope, summed over recall steps (sentinels 0 and 1)."""
    prec = np.concatenate([[0.0], precision, [0.0]])
    rec = np.concatenate([[0.0], recall, [1.0]])
    prec = np.maximum.accumulate(prec[::-1])[::-1]
    step = np.flatnonzero(rec[1:] != rec[:-1]) + 1
    return float(np.sum((rec[step] - rec[step - 1]) * prec[step]))


def detection_ap(pred_windows: np.ndarray, scores: np.ndarray, gt_windows: np.ndarray,
                 thresholds: Sequence[float] = MAP_THRESHOLDS) -> np.ndarray:
    """ActivityNet detection AP of one query at each IoU threshold -> [len(thresholds)].

    Predictions are visited by decreasing score (ties keep their listed order); each one takes the
    unclaimed GT window with the highest IoU >= θ, else it is a false positive.
    """
    ap = np.zeros(len(thresholds))
    if len(pred_windows) == 0:
        return ap
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    ious = temporal_iou(np.asarray(pred_windows)[order], gt_windows)  # [N, M]
    n_pred, n_gt = ious.shape
    for t, theta in enumerate(thresholds):
        taken = np.zeros(n_gt, dtype=bool)
        tp = np.zeros(n_pred)
        for i in range(n_pred):
            for j in np.argsort(ious[i])[::-1]:   # highest IoU first, same tie order as the reference
                if ious[i, j] < theta:
                    break
                if not taken[j]:
                    taken[j] = True
                    tp[i] = 1
                    break
        cum_tp = np.cumsum(tp)
        precision = cum_tp / np.arange(1, n_pred + 1)
        ap[t] = interpolated_ap(precision, cum_tp / n_gt)
    return ap


def ranking_ap(labels: np.ndarray, scores: np.ndarray) -> float:
    """AP of binary `labels` ranked by `scores`, as in the QVHighlights highlight metric.

    All-zero labels give 0 and all-one labels give 1 (the reference's convention). Otherwise the
    precision-recall curve over distinct score thresholds, precision made monotone from the high-recall
    end, averaged at every point where recall changes (sklearn's curve + the reference's interpolation).
    """
    labels = np.asarray(labels, dtype=float)
    if labels.min() == labels.max():
        return float(labels[0] == 1)
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    sorted_scores = np.asarray(scores, dtype=float)[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(sorted_scores) - 1]
    tps = np.cumsum(labels[order])[last_of_tie]
    precision = tps / (last_of_tie + 1)
    recall = (tps / tps[-1]).astype(np.float32)
    # sklearn order: decreasing recall, then a final (precision 1, recall 0) point.
    precision = np.r_[precision[::-1], 1.0]
    recall = np.r_[recall[::-1], np.float32(0.0)]
    precision = np.maximum.accumulate(precision)
    return float(np.mean(precision[np.flatnonzero(np.diff(recall))]))


# ----------------------------------------------------------------------------- validation
def _pct(value: float) -> float:
    return float(f"{100 * value:.2f}")


def _key(qid: Any) -> str:
    return str(qid)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _check_windows(pred: dict, duration: float | None, where: tuple[str, int]) -> None:
    """[start, end, score] rows of finite numbers, start <= end, starting inside [0, duration)."""
    windows = pred.get("pred_relevant_windows")
    if not isinstance(windows, list) or not windows:
        raise PredictionError("must be a non-empty list of [start, end, score]", *where, "pred_relevant_windows")
    for j, window in enumerate(windows):
        field = f"pred_relevant_windows[{j}]"
        if not isinstance(window, (list, tuple)) or len(window) != 3 or not all(map(_number, window)):
            raise PredictionError(f"expected three finite numbers [start, end, score], got {window!r}", *where, field)
        start, end, _ = window
        if end < start:
            # The official evaluator gets 0/0 IoU for such a window against a GT window of the opposite
            # length and counts that NaN as a hit, so any number we gave would disagree with it.
            raise PredictionError(f"window {window} ends before it starts (write [start, end, score] with "
                                  "start <= end)", *where, field)
        if start < -WINDOW_EPS or (duration is not None and start >= duration):
            # An end past the video is scored as the official evaluator scores it (the overshoot lowers
            # the IoU); a negative start or one after the end has no time in the video to stand for.
            raise PredictionError(f"window {window} does not start inside the video "
                                  f"(0 <= start < {duration:g} s)", *where, field)


def match_predictions(preds: list[dict], gts: list[dict], match_number: bool = True,
                      source: str = "predictions", lines: Sequence[int] | None = None) -> tuple[list[dict], list[dict]]:
    """Check predictions against the GT and return them aligned (same order as the GT).

    `lines[i]` is the file line of `preds[i]` (errors name it; default: its 1-based position).
    """
    if not preds:
        raise PredictionError("no predictions (an empty file?)", source)
    lines = list(lines) if lines is not None else list(range(1, len(preds) + 1))
    durations = {_key(g["qid"]): g.get("duration") for g in gts}
    by_qid: dict[str, dict] = {}
    first_line: dict[str, int] = {}
    for pred, line in zip(preds, lines):
        where = (source, line)
        if not isinstance(pred, dict):
            raise PredictionError(f"expected a JSON object, got {type(pred).__name__} {pred!r}", *where)
        if "qid" not in pred:
            raise PredictionError("missing", *where, "qid")
        key = _key(pred["qid"])
        if key not in durations:
            raise PredictionError(f"qid {pred['qid']!r} is not in the ground truth", *where, "qid")
        if key in first_line:
            raise PredictionError(f"qid {pred['qid']!r} predicted twice (first on line {first_line[key]})",
                                  *where, "qid")
        _check_windows(pred, durations[key], where)
        by_qid[key], first_line[key] = pred, line
    missing = sorted(set(durations) - set(by_qid))
    if missing and match_number:
        raise PredictionError(f"{len(missing)} ground-truth qid(s) have no prediction, e.g. {missing[:5]} "
                              "(evaluate only the predicted ones with --allow-missing; in Python, "
                              "match_number=False)", source)
    kept = [g for g in gts if _key(g["qid"]) in by_qid]
    return [by_qid[_key(g["qid"])] for g in kept], kept


# ----------------------------------------------------------------------------- moment retrieval
def _best_iou_topk(pred: dict, gt: dict, k: int) -> np.ndarray:
    """For each of the first k listed windows, its IoU with the best-overlapping GT window -> [<=k]."""
    windows = np.asarray([w[:2] for w in pred["pred_relevant_windows"][:k]], dtype=float)
    return temporal_iou(windows, np.asarray(gt["relevant_windows"], dtype=float)).max(axis=1)


def moment_retrieval_metrics(preds: list[dict], gts: list[dict],
                             map_thresholds: Sequence[float] = MAP_THRESHOLDS,
                             r1_thresholds: Sequence[float] = R1_THRESHOLDS) -> dict[str, float]:
    """R1@θ and mAP (per θ, @0.5/@0.75, average) for aligned preds/gts (one bucket)."""
    if not gts:
        return {}
    top1 = np.array([_best_iou_topk(p, g, 1)[0] for p, g in zip(preds, gts)])
    aps = np.stack([
        detection_ap(np.asarray([w[:2] for w in p["pred_relevant_windows"][:MAX_PRED_WINDOWS]], dtype=float),
                     np.asarray([w[2] for w in p["pred_relevant_windows"][:MAX_PRED_WINDOWS]], dtype=float),
                     np.asarray(g["relevant_windows"], dtype=float), map_thresholds)
        for p, g in zip(preds, gts)])                                   # [Q, n_thresholds]
    per_threshold = aps.mean(axis=0)
    out = {"mAP": _pct(per_threshold.mean())}
    out.update({f"mAP@{t:g}": _pct(v) for t, v in zip(map_thresholds, per_threshold)})
    out.update({f"R1@{t:g}": _pct(np.mean(top1 >= t)) for t in r1_thresholds})
    return out


def recall_metrics(preds: list[dict], gts: list[dict],
                   thresholds: Sequence[float] = RECALL_THRESHOLDS, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Charades/TACoS style: R{k}@m (any of the first k listed windows reaches IoU >= m) and mIoU of top-1."""
    out: dict[str, float] = {}
    best = [_best_iou_topk(p, g, max(ks)) for p, g in zip(preds, gts)]
    for k in ks:
        hit_iou = np.array([b[:k].max() for b in best])
        out.update({f"R{k}@{m:g}": _pct(np.mean(hit_iou >= m)) for m in thresholds})
    out["mIoU"] = _pct(np.mean([b[0] for b in best]))
    return out


def _bucket(preds: list[dict], gts: list[dict], span: tuple[float, float] | None):
    if span is None:
        return preds, gts
    lo, hi = span
    kept_p, kept_g = [], []
    for p, g in zip(preds, gts):
        windows = [w for w in g["relevant_windows"] if lo < w[1] - w[0] <= hi]
        if windows:
            kept_p.append(p)
            kept_g.append({**g, "relevant_windows": windows})
    return kept_p, kept_g


# ----------------------------------------------------------------------------- highlight detection
def _saliency_matrix(gt: dict, clip_len: float) -> np.ndarray:
    """[n_clips, n_annotators] GT scores (0 outside relevant clips), n_clips = floor(duration / clip_len)."""
    scores = np.asarray(gt["saliency_scores"], dtype=float).reshape(len(gt["relevant_clip_ids"]), -1)
    full = np.zeros((int(gt["duration"] / clip_len), scores.shape[1]))
    ids = np.asarray(gt["relevant_clip_ids"], dtype=int)
    inside = ids < len(full)
    full[ids[inside]] = scores[inside]
    return full


def highlight_metrics(preds: list[dict], gts: list[dict], clip_len: float = 2.0) -> dict[str, float]:
    """HL-min-<level>-{mAP,Hit1} over queries whose GT has saliency scores.

    Skipped (empty dict) when no prediction carries ``pred_saliency_scores``, as in the reference.
    """
    pairs = [(p, g) for p, g in zip(preds, gts) if g.get("saliency_scores") and g.get("relevant_clip_ids")]
    if not pairs or not any(p.get("pred_saliency_scores") for p, _ in pairs):
        return {}
    out = {}
    for name, level in SALIENCY_LEVELS.items():
        hits, aps = [], []
        for pred, gt in pairs:
            binary = (_saliency_matrix(gt, clip_len) >= level).astype(float)  # [C, A]
            scores = np.asarray(pred.get("pred_saliency_scores") or [], dtype=float)
            if len(scores) == 0:
                raise PredictionError(f"qid {pred['qid']!r}: 'pred_saliency_scores' is empty")
            top = int(np.argmax(scores))
            hits.append(float(binary[top].max()) if top < len(binary) else 0.0)
            scores = np.pad(scores[:len(binary)], (0, max(0, len(binary) - len(scores))))
            aps.extend(ranking_ap(binary[:, a], scores) for a in range(binary.shape[1]))
        out[f"HL-min-{name}-mAP"] = _pct(np.mean(aps))
        out[f"HL-min-{name}-Hit1"] = _pct(np.mean(hits))
    return out


# ----------------------------------------------------------------------------- entry points
def evaluate_moments(preds: list[dict], gts: list[dict], buckets: dict | None = None,
                     clip_len: float = 2.0, match_number: bool = True,
                     source: str = "predictions", lines: Sequence[int] | None = None) -> dict[str, Any]:
    """All metrics. Returns {"brief": {...headline...}, "MR-<bucket>": {...}, "recall": {...}, "HL": {...}}.

    `lines`: the file line of each prediction, for error messages (see `match_predictions`).
    """
    if not clip_len > 0:
        raise ValueError(f"clip_len must be positive, got {clip_len}")
    preds, gts = match_predictions(preds, gts, match_number=match_number, source=source, lines=lines)
    buckets = QVH_BUCKETS if buckets is None else buckets
    result: dict[str, Any] = {"n_queries": len(gts)}
    brief: dict[str, float] = {}
    for name, span in buckets.items():
        bucket_preds, bucket_gts = _bucket(preds, gts, span)
        metrics = moment_retrieval_metrics(bucket_preds, bucket_gts)
        result[f"MR-{name}"] = {"n_queries": len(bucket_gts), **metrics}
        if metrics:
            brief[f"MR-{name}-mAP"] = metrics["mAP"]
            if name == "full":
                brief.update({f"MR-full-{k}": metrics[k] for k in ("mAP@0.5", "mAP@0.75", "R1@0.5", "R1@0.7")})
    result["recall"] = recall_metrics(preds, gts)
    brief.update(result["recall"])
    result["HL"] = highlight_metrics(preds, gts, clip_len)
    brief.update(result["HL"])
    result["brief"] = brief
    return result


def read_jsonl(path: str | Path) -> list[dict]:
    return [record for _, record in iter_jsonl(path)]


def evaluate_files(pred_path: str | Path, gt_path: str | Path, **kwargs) -> dict[str, Any]:
    """Evaluate a submission jsonl against a MomentQuery jsonl (validated with the schema)."""
    gts = [m.to_json() for m in read_moments(gt_path)]
    if not gts:
        raise UserError("no ground-truth queries (an empty file?)", gt_path)
    rows = list(iter_jsonl(pred_path))
    return evaluate_moments([pred for _, pred in rows], gts, source=str(pred_path),
                            lines=[line for line, _ in rows], **kwargs)


def write_predictions(path: str | Path, preds: list[dict]) -> None:
    """Atomically write predictions as a QVHighlights submission jsonl."""
    from c2f_lib.utils import atomic_path

    with atomic_path(path) as tmp, tmp.open("w") as handle:
        for pred in preds:
            handle.write(json.dumps(pred) + "\n")
