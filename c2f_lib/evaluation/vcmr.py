"""Video-corpus moment retrieval (VCMR) metrics: VR, SVMR and VCMR recall, plus the shortlist ceiling.

Definitions follow TVRetrieval's ``standalone_eval/eval.py`` (spec ecosystem.md §6):

* **VR R@K** — the ground-truth video is among the first K ranked videos (times ignored).
* **SVMR R@K, IoU θ** — among the first K moments predicted *inside the ground-truth video*, one
  reaches temporal IoU >= θ with a ground-truth window.
* **VCMR R@K, IoU θ** — among the first K moments of the *corpus-wide* ranked list, one lies in the
  ground-truth video **and** reaches IoU >= θ: a moment in the wrong video has IoU 0 whatever its times.
* **Ceiling@K** — the fraction of queries whose ground-truth video is in the coarse shortlist of K
  videos. A coarse-to-fine system that localises only inside its shortlist cannot exceed it in VCMR.

With several ground-truth windows (e.g. QVHighlights) the best-overlapping one counts, as in
``c2f_lib.evaluation.moments``. Only the rank order matters; scores are kept for fusion analyses.
All numbers are percentages.

Prediction format (JSON lines, one object per query; ``write_predictions`` / ``read_predictions``)::

    {"qid": 7, "query": "the red circle jumps", "gt_vid": "vid003",
     "ranked_videos": [["vid003", 0.91], ["vid010", 0.85], ...],      # coarse ranking, best first
     "moments":       [["vid003", 4.0, 9.5, 0.72], ["vid010", 0.0, 6.0, 0.40], ...],  # corpus list
     "gt_moments":    [[4.0, 9.5, 0.80], ...],                         # optional: fine model run on
                                                                        # the GT video (for SVMR)
     "coarse_query":  "a man cooks eggs and ..."}                      # optional: two-query mode, the
                                                                        # text the coarse stage used

``gt_vid`` is what the system was asked to find; the ground-truth windows come from the moment
annotations (``MomentQuery`` records, matched by ``qid``). Extra keys are allowed and ignored.
`evaluate_vcmr` records the query mode in its output: ``"query_mode": "two"`` when every record has a
``coarse_query`` (coarse stage searched with a video caption), ``"single"`` when none has; a mix is an error.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from c2f_lib.errors import MissingFileError, UserError
from c2f_lib.evaluation.moments import temporal_iou
from c2f_lib.utils import atomic_path

RECALL_KS = (1, 5, 10, 100)
IOU_THRESHOLDS = (0.5, 0.7)


class VCMRPredictionError(UserError, ValueError):
    """A prediction file or record that does not fit the format above or the ground truth."""


# ----------------------------------------------------------------------------- file format
def validate_record(record: Any, where: str = "<memory>") -> dict:
    """Check one prediction record; return it unchanged (raises naming `where` and the field)."""
    if not isinstance(record, dict):
        raise VCMRPredictionError(f"expected a JSON object, got {type(record).__name__}", where)
    for key in ("qid", "gt_vid", "ranked_videos", "moments"):
        if key not in record:
            raise VCMRPredictionError(f"missing field '{key}'", where)
    for i, row in enumerate(record["ranked_videos"]):
        if not (isinstance(row, (list, tuple)) and len(row) == 2 and isinstance(row[0], str)):
            raise VCMRPredictionError(f"ranked_videos[{i}] must be [vid, score], got {row!r}", where)
    for i, row in enumerate(record["moments"]):
        if not (isinstance(row, (list, tuple)) and len(row) == 4 and isinstance(row[0], str)):
            raise VCMRPredictionError(f"moments[{i}] must be [vid, start, end, score], got {row!r}", where)
    if not isinstance(record.get("coarse_query", ""), str):
        raise VCMRPredictionError(f"coarse_query must be a string, got {record['coarse_query']!r}", where)
    for i, row in enumerate(record.get("gt_moments") or []):
        if not (isinstance(row, (list, tuple)) and len(row) == 3):
            raise VCMRPredictionError(f"gt_moments[{i}] must be [start, end, score], got {row!r}", where)
    return record


def write_predictions(path: str | Path, records: Iterable[dict]) -> None:
    """Atomically write prediction records as JSON lines."""
    with atomic_path(path) as tmp, tmp.open("w") as handle:
        for i, record in enumerate(records):
            handle.write(json.dumps(validate_record(record, f"record {i}"), ensure_ascii=False) + "\n")


def read_predictions(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise MissingFileError("prediction file not found", path)
    records = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise VCMRPredictionError(f"not valid JSON ({err.msg})", path, line_no) from None
        records.append(validate_record(record, f"{path}:{line_no}"))
    return records


# ----------------------------------------------------------------------------- per-query hit arrays
def _gt_windows(gts: Sequence[dict]) -> dict[str, np.ndarray]:
    """qid (as str) -> [M, 2] ground-truth windows, from MomentQuery-like dicts."""
    return {str(g["qid"]): np.asarray(g["relevant_windows"], dtype=float).reshape(-1, 2) for g in gts}


def _align(records: Sequence[dict], gts: Sequence[dict]) -> list[tuple[dict, np.ndarray]]:
    windows = _gt_windows(gts)
    vids = {str(g["qid"]): g["vid"] for g in gts}
    aligned = []
    for record in records:
        qid = str(record["qid"])
        if qid not in windows:
            raise VCMRPredictionError(f"qid {record['qid']!r} is not in the ground truth")
        if record["gt_vid"] != vids[qid]:
            raise VCMRPredictionError(f"qid {record['qid']!r}: gt_vid {record['gt_vid']!r} != "
                                      f"annotated video {vids[qid]!r}")
        aligned.append((record, windows[qid]))
    return aligned


def moment_ious(rows: Sequence[Sequence[Any]], gt_vid: str | None, gt_windows: np.ndarray) -> np.ndarray:
    """[N] best IoU of each moment with the GT; rows are [vid, s, e, ...] (or [s, e, ...] with gt_vid=None).

    Moments in another video than `gt_vid` get IoU 0 (the VCMR same-video rule).
    """
    if not rows:
        return np.zeros(0)
    if gt_vid is None:
        spans = np.asarray([r[:2] for r in rows], dtype=float)
        same = np.ones(len(rows), dtype=bool)
    else:
        spans = np.asarray([r[1:3] for r in rows], dtype=float)
        same = np.asarray([r[0] == gt_vid for r in rows])
    return np.where(same, temporal_iou(spans, gt_windows).max(axis=1), 0.0)


def _recall_at(hits: list[np.ndarray], k: int) -> float:
    """Percent of queries with a hit among their first k entries."""
    return float(f"{100 * np.mean([h[:k].any() for h in hits]):.2f}") if hits else float("nan")


# ----------------------------------------------------------------------------- metrics
def video_recall(records: Sequence[dict], ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """VR-R@k: the GT video among the first k ranked videos."""
    hits = [np.asarray([vid == r["gt_vid"] for vid, _ in r["ranked_videos"]], dtype=bool) for r in records]
    return {f"VR-R@{k}": _recall_at(hits, k) for k in ks}


def shortlist_ceiling(records: Sequence[dict], k_videos: Sequence[int]) -> dict[str, float]:
    """Ceiling@K: fraction of queries whose GT video is in the top-K shortlist (same as VR-R@K)."""
    return {f"Ceiling@{k}": v for k, v in zip(k_videos, video_recall(records, k_videos).values())}


def moment_recall(records: Sequence[dict], gts: Sequence[dict], setting: str = "VCMR",
                  ks: Sequence[int] = RECALL_KS,
                  thresholds: Sequence[float] = IOU_THRESHOLDS) -> dict[str, float]:
    """`setting` "VCMR": corpus list with the same-video rule; "SVMR": the `gt_moments` list."""
    if setting not in ("VCMR", "SVMR"):
        raise ValueError(f"unknown setting {setting!r}: use 'VCMR' or 'SVMR'")
    ious = []
    for record, windows in _align(records, gts):
        if setting == "VCMR":
            ious.append(moment_ious(record["moments"], record["gt_vid"], windows))
        else:
            if record.get("gt_moments") is None:
                raise VCMRPredictionError(f"qid {record['qid']!r}: SVMR needs 'gt_moments'")
            ious.append(moment_ious(record["gt_moments"], None, windows))
    return {f"{setting}-R@{k}-IoU{t:g}": _recall_at([iou >= t for iou in ious], k)
            for t in thresholds for k in ks}


def query_mode(records: Sequence[dict]) -> str:
    """The query mode of one system's records: "two" when every record carries a coarse_query,
    "single" when none does."""
    two = [r.get("coarse_query") is not None for r in records]
    if any(two) and not all(two):
        raise VCMRPredictionError(f"{sum(two)} of {len(two)} records have a coarse_query: "
                                  f"one system's predictions use one query mode")
    return "two" if all(two) else "single"


def evaluate_vcmr(records: Sequence[dict], gts: Sequence[dict], ks: Sequence[int] = RECALL_KS,
                  thresholds: Sequence[float] = IOU_THRESHOLDS,
                  k_videos: Sequence[int] = ()) -> dict[str, Any]:
    """All metrics for one system: VR, SVMR (if every record has gt_moments), VCMR, Ceiling@k_videos,
    plus num_queries and query_mode."""
    if not records:
        raise VCMRPredictionError("no prediction records to evaluate")
    qids = [str(r["qid"]) for r in records]
    if len(set(qids)) != len(qids):
        raise VCMRPredictionError("a qid is predicted twice")
    out: dict[str, Any] = {"num_queries": len(records), "query_mode": query_mode(records)}
    out.update(video_recall(records, ks))
    if all(r.get("gt_moments") is not None for r in records):
        out.update(moment_recall(records, gts, "SVMR", ks, thresholds))
    out.update(moment_recall(records, gts, "VCMR", ks, thresholds))
    out.update(shortlist_ceiling(records, k_videos))
    return out


def iou_of_top1(records: Sequence[dict], gts: Sequence[dict], setting: str = "VCMR") -> np.ndarray:
    """[Q] IoU of each query's first moment (0 for a wrong video or no moment), for distributions."""
    out = []
    for record, windows in _align(records, gts):
        if setting == "VCMR":
            iou = moment_ious(record["moments"][:1], record["gt_vid"], windows)
        else:
            iou = moment_ious((record.get("gt_moments") or [])[:1], None, windows)
        out.append(float(iou[0]) if len(iou) else 0.0)
    return np.asarray(out)
