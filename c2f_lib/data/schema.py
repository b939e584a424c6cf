"""The one annotation schema every stage reads, for every dataset.

Two record kinds, both stored as JSON lines:

* ``MomentQuery`` — one natural-language query grounded in one video (QVHighlights layout):
  ``{"qid", "query", "vid", "duration", "relevant_windows": [[start, end], ...],
  "relevant_clip_ids"?: [int], "saliency_scores"?: [[int, ...], ...], "meta"?: {...}}``.
  Times are seconds; windows satisfy ``0 <= start < end <= duration``. A labelled query has at
  least one window; an *unlabelled* one (a benchmark's hidden test split, e.g. QVHighlights test)
  has none (``relevant_windows`` empty or absent) and is accepted only when the reader is told so:
  ``read_moments(path, labelled=False)``. Such files serve prediction, never evaluation.
* ``VideoCaptions`` — the whole-video captions used by coarse (text -> video) retrieval:
  ``{"vid", "duration"?, "captions": [str, ...], "meta"?: {...}}``.

Files are validated on load; a malformed record raises ``SchemaError`` naming the file, the line
(1-based, as an editor shows it) and the field, so a bad annotation never reaches a model. A qid (moments)
or vid (captions) given twice in one file is an error too.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from c2f_lib.errors import MissingFileError, UserError
from c2f_lib.utils import atomic_path

# Tolerance when checking windows against the duration: annotations are often rounded.
WINDOW_EPS = 1e-3


class SchemaError(UserError, ValueError):
    """A malformed record: ``<problem>, <file>:<line>:<field>``."""

    def __init__(self, path: str | Path, line: int, field_name: str, problem: str):
        super().__init__(problem, str(path), line, field_name)

    @property
    def path(self) -> str:
        return self.file

    @property
    def problem(self) -> str:
        return self.what


@dataclass
class MomentQuery:
    qid: str | int
    query: str
    vid: str
    duration: float
    relevant_windows: list[list[float]]
    relevant_clip_ids: list[int] | None = None
    saliency_scores: list[list[int]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def labelled(self) -> bool:
        return bool(self.relevant_windows)

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        return {k: v for k, v in record.items() if v is not None and not (k == "meta" and not v)}


@dataclass
class VideoCaptions:
    vid: str
    captions: list[str]
    duration: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        return {k: v for k, v in record.items() if v is not None and not (k == "meta" and not v)}


def _require(record: dict, key: str, kinds: tuple[type, ...], where: tuple[Path, int]) -> Any:
    if key not in record:
        raise SchemaError(*where, key, "missing")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise SchemaError(*where, key, f"expected {names}, got {type(value).__name__} {value!r}")
    return value


def _check_unknown(record: dict, allowed: set[str], where: tuple[Path, int]) -> None:
    unknown = sorted(set(record) - allowed)
    if unknown:
        raise SchemaError(*where, unknown[0], f"unknown field (allowed: {sorted(allowed)})")


def parse_moment(record: Any, path: str | Path = "<memory>", line: int = 0,
                 labelled: bool = True) -> MomentQuery:
    """Validate one record; `labelled=False` also accepts a query without windows (see the module doc)."""
    where = (Path(path), line)
    if not isinstance(record, dict):
        raise SchemaError(*where, "<record>", f"expected a JSON object, got {type(record).__name__}")
    _check_unknown(record, {f for f in MomentQuery.__dataclass_fields__}, where)
    qid = _require(record, "qid", (str, int), where)
    query = _require(record, "query", (str,), where)
    if not query.strip():
        raise SchemaError(*where, "query", "empty query")
    vid = _require(record, "vid", (str,), where)
    if not vid:
        raise SchemaError(*where, "vid", "empty video id")
    duration = float(_require(record, "duration", (int, float), where))
    if not math.isfinite(duration) or duration <= 0:
        raise SchemaError(*where, "duration", f"must be a positive number, got {duration}")
    if "relevant_windows" in record:
        windows = _require(record, "relevant_windows", (list,), where)
    else:
        windows = []
    if labelled and not windows:
        raise SchemaError(*where, "relevant_windows", "no window (an unlabelled split, e.g. a benchmark's "
                                                      "hidden test set? it serves prediction only)")
    for i, window in enumerate(windows):
        if (not isinstance(window, list) or len(window) != 2
                or not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in window)):
            raise SchemaError(*where, f"relevant_windows[{i}]", f"expected [start, end], got {window!r}")
        start, end = window
        if not (0 <= start < end <= duration + WINDOW_EPS):
            raise SchemaError(*where, f"relevant_windows[{i}]",
                              f"window {window} is not inside 0 <= start < end <= duration={duration}")
    clip_ids = record.get("relevant_clip_ids")
    saliency = record.get("saliency_scores")
    if clip_ids is not None and not all(isinstance(c, int) and c >= 0 for c in clip_ids):
        raise SchemaError(*where, "relevant_clip_ids", "expected a list of non-negative integers")
    if saliency is not None:
        if clip_ids is None or len(saliency) != len(clip_ids):
            raise SchemaError(*where, "saliency_scores", "needs one row per relevant_clip_ids entry")
        if not all(isinstance(row, list) and all(isinstance(s, (int, float)) for s in row) for row in saliency):
            raise SchemaError(*where, "saliency_scores", "expected a list of lists of numbers")
    meta = record.get("meta", {})
    if not isinstance(meta, dict):
        raise SchemaError(*where, "meta", "expected an object")
    return MomentQuery(qid=qid, query=query, vid=vid, duration=duration,
                       relevant_windows=[[float(s), float(e)] for s, e in windows],
                       relevant_clip_ids=clip_ids, saliency_scores=saliency, meta=meta)


def parse_captions(record: Any, path: str | Path = "<memory>", line: int = 0) -> VideoCaptions:
    where = (Path(path), line)
    if not isinstance(record, dict):
        raise SchemaError(*where, "<record>", f"expected a JSON object, got {type(record).__name__}")
    _check_unknown(record, {f for f in VideoCaptions.__dataclass_fields__}, where)
    vid = _require(record, "vid", (str,), where)
    if not vid:
        raise SchemaError(*where, "vid", "empty video id")
    captions = _require(record, "captions", (list,), where)
    if not captions:
        raise SchemaError(*where, "captions", "no caption")
    for i, caption in enumerate(captions):
        if not isinstance(caption, str) or not caption.strip():
            raise SchemaError(*where, f"captions[{i}]", f"expected a non-empty string, got {caption!r}")
    duration = record.get("duration")
    if duration is not None:
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not duration > 0:
            raise SchemaError(*where, "duration", f"must be a positive number or null, got {duration!r}")
        duration = float(duration)
    meta = record.get("meta", {})
    if not isinstance(meta, dict):
        raise SchemaError(*where, "meta", "expected an object")
    return VideoCaptions(vid=vid, captions=list(captions), duration=duration, meta=meta)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, decoded record) for every non-blank line; bad JSON names the file and line."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError("file not found", path)
    if path.is_dir():
        raise UserError("is a folder, expected a .jsonl file", path)
    with path.open() as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as err:
                raise SchemaError(path, line_no, "<json>", f"not valid JSON ({err.msg})") from None


def _read_jsonl(path: str | Path, parse, unique: str, **options: Any) -> list:
    """Parse every line; the `unique` field (qid / vid) may not repeat (as str: qid 1 and "1" collide)."""
    records, first_line = [], {}
    for line_no, raw in iter_jsonl(path):
        record = parse(raw, path, line_no, **options)
        key = str(getattr(record, unique))
        if key in first_line:
            raise SchemaError(path, line_no, unique, f"{unique} {getattr(record, unique)!r} given twice "
                                                     f"(first on line {first_line[key]})")
        first_line[key] = line_no
        records.append(record)
    return records


def _write_jsonl(path: str | Path, records: Iterable) -> None:
    with atomic_path(path) as tmp, tmp.open("w") as handle:
        for record in records:
            handle.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")


def read_moments(path: str | Path, labelled: bool = True) -> list[MomentQuery]:
    """Load and validate a moment-query jsonl file.

    labelled=False: queries may lack windows (a hidden test split, read for prediction only).
    """
    return _read_jsonl(path, parse_moment, "qid", labelled=labelled)


def unlabelled_queries(path: str | Path) -> list[MomentQuery]:
    """The queries of a moment file that have no window (empty when it can be evaluated against)."""
    return [m for m in read_moments(path, labelled=False) if not m.labelled]


def write_moments(path: str | Path, records: Iterable[MomentQuery]) -> None:
    _write_jsonl(path, records)


def read_captions(path: str | Path) -> list[VideoCaptions]:
    """Load and validate a video-captions jsonl file."""
    return _read_jsonl(path, parse_captions, "vid")


def write_captions(path: str | Path, records: Iterable[VideoCaptions]) -> None:
    _write_jsonl(path, records)
