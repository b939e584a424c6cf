"""QVHighlights: already in the unified layout (windows + 2-s clip ids + 3 saliency raters).

The test release hides its labels (rows hold qid, query, vid, duration only). Its queries load as
*unlabelled* moments (no windows; `LoadedSplit.labelled` is False) so a model can predict them and
write a submission file; a labelled split without windows is still an error.
"""
from __future__ import annotations

import json
from pathlib import Path

from c2f_lib.data.adapters.base import CleaningReport, DatasetFormatError, LoadedSplit, clean_window, need_file
from c2f_lib.data.schema import MomentQuery

UNLABELLED_SPLITS = ("test",)


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(file line, record) of every non-blank line."""
    rows = []
    for line_no, line in enumerate(need_file(path).read_text().splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetFormatError(path, f"not valid JSON ({err.msg})", line=line_no) from None
            if not isinstance(row, dict):
                raise DatasetFormatError(path, f"expected a JSON object, got {type(row).__name__}", line=line_no)
            rows.append((line_no, row))
    return rows


def load_qvhighlights(folder: Path, split: str) -> LoadedSplit:
    path = folder / f"highlight_{split}_release.jsonl"
    labelled = split not in UNLABELLED_SPLITS
    report = CleaningReport()
    moments = []
    rows = _read_jsonl(path)
    first_line: dict[str, int] = {}
    for line_no, row in rows:
        missing = [key for key in ("qid", "query", "vid", "duration") if key not in row]
        if missing:
            raise DatasetFormatError(path, "missing", line_no, missing[0])
        if "relevant_windows" not in row and labelled:
            raise DatasetFormatError(path, f"no relevant_windows in labelled split {split!r}", line_no,
                                     "relevant_windows")
        qid = str(row.get("qid"))
        if qid in first_line:
            raise DatasetFormatError(path, f"qid {row['qid']!r} given twice (first on line {first_line[qid]})",
                                     line_no, "qid")
        first_line[qid] = line_no
        where = f"{path.name}:{line_no}"
        windows = [w for w in (clean_window(s, e, row["duration"], report, where)
                               for s, e in row.get("relevant_windows", [])) if w is not None]
        if labelled and not windows:
            report.add("dropped query without a valid window", where)
            continue
        moments.append(MomentQuery(qid=row["qid"], query=row["query"], vid=row["vid"],
                                   duration=float(row["duration"]), relevant_windows=windows,
                                   relevant_clip_ids=row.get("relevant_clip_ids"),
                                   saliency_scores=row.get("saliency_scores")))
    return LoadedSplit("qvhighlights", split, moments, [], report, [str(path)],
                       {"queries": len(rows), "videos": len({r["vid"] for _, r in rows})}, labelled=labelled)
