"""What every dataset adapter shares: the loaded-split container, window cleaning, file readers.

Adapters turn one benchmark's original files into the unified schema (`c2f_lib.data.schema`).
Annotation errors the originals fix silently (reversed windows, windows past the video end) are
fixed or dropped here too, but every change is counted in a `CleaningReport`.
"""
from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from c2f_lib.data.schema import MomentQuery, VideoCaptions, parse_captions, parse_moment
from c2f_lib.errors import MissingFileError, UserError


class DatasetFormatError(UserError, ValueError):
    """An original annotation file does not have the layout its adapter expects."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None, field: str | None = None):
        super().__init__(problem, str(path), line, field)


@dataclass
class CleaningReport:
    """Counts of the fixes applied while loading, with a few examples of each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 3

    def add(self, action: str, example: str) -> None:
        self.counts[action] += 1
        kept = self.examples.setdefault(action, [])
        if len(kept) < self.max_examples:
            kept.append(example)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def to_json(self) -> dict[str, Any]:
        return {"counts": dict(sorted(self.counts.items())), "examples": self.examples}

    def summary(self) -> str:
        if not self.counts:
            return "no fixes needed"
        return ", ".join(f"{action}: {n}" for action, n in sorted(self.counts.items()))


@dataclass
class LoadedSplit:
    """One split of one dataset in the unified schema.

    `moments` is empty for caption-only (text -> video retrieval) datasets; `captions` is empty
    for moment datasets that have no whole-video captions of their own (see coarse_captions.py).
    """

    dataset: str
    split: str
    moments: list[MomentQuery]
    captions: list[VideoCaptions]
    report: CleaningReport
    sources: list[str]
    # What the original files hold before cleaning: {"queries"|"captions": n, "videos": n}.
    source_counts: dict[str, int]
    # False for a hidden test split: its moments have no windows (read back with labelled=False).
    labelled: bool = True

    @property
    def video_ids(self) -> list[str]:
        """Every video of the split, in first-seen order."""
        seen = dict.fromkeys(m.vid for m in self.moments)
        seen.update(dict.fromkeys(c.vid for c in self.captions))
        return list(seen)

    def validate(self) -> None:
        """Run the schema checks on every record (raises SchemaError naming the record)."""
        for i, moment in enumerate(self.moments):
            parse_moment(moment.to_json(), f"<{self.dataset}/{self.split} moments>", i + 1, self.labelled)
        for i, caption in enumerate(self.captions):
            parse_captions(caption.to_json(), f"<{self.dataset}/{self.split} captions>", i + 1)


def clean_window(start: float, end: float, duration: float, report: CleaningReport,
                 where: str) -> list[float] | None:
    """Return a valid [start, end] inside [0, duration], or None when the window must be dropped.

    Fixes, as the reference code bases do: a reversed window is swapped (MESM), an end past the
    video is clipped to the duration, a negative start is clipped to 0. A window that starts at or
    after the end of the video, or has zero length, has nothing to localise and is dropped.
    """
    if start > end:
        start, end = end, start
        report.add("swapped reversed window", where)
    if start < 0:
        start = 0.0
        report.add("clipped negative start", where)
    if start >= duration:
        report.add("dropped window starting after the video end", where)
        return None
    if end > duration:
        end = duration
        report.add("clipped end to duration", where)
    if end <= start:
        report.add("dropped zero-length window", where)
        return None
    return [float(start), float(end)]


def moments_from_sentences(path: Path, vid: str, duration: float, windows: list, sentences: list[str],
                           report: CleaningReport, qid_prefix: str | None = None,
                           meta: dict[str, Any] | None = None,
                           window_meta: list[dict[str, Any]] | None = None) -> list[MomentQuery]:
    """One MomentQuery per (window, sentence) of a video, cleaned; qids `<prefix>_<index>`."""
    moments = []
    prefix = qid_prefix if qid_prefix is not None else vid
    if len(windows) != len(sentences):
        raise DatasetFormatError(path, f"video {vid!r}: {len(windows)} windows but {len(sentences)} sentences")
    for i, ((start, end), sentence) in enumerate(zip(windows, sentences)):
        query = sentence.strip()
        if not query:
            report.add("dropped empty sentence", f"{vid}#{i}")
            continue
        window = clean_window(float(start), float(end), duration, report, f"{vid}#{i}")
        if window is None:
            continue
        extra = dict(meta or {})
        if window_meta:
            extra.update(window_meta[i])
        moments.append(MomentQuery(qid=f"{prefix}_{i}", query=query, vid=vid, duration=float(duration),
                                   relevant_windows=[window], meta=extra))
    return moments


def need_file(path: Path) -> Path:
    if not path.is_file():
        raise MissingFileError("annotation file not found (see `c2f data download`)", path)
    return path


def read_json_file(path: Path) -> Any:
    try:
        return json.loads(need_file(path).read_text())
    except json.JSONDecodeError as err:
        raise DatasetFormatError(path, f"not valid JSON ({err.msg})", line=err.lineno) from None


def read_csv_rows(path: Path, required: tuple[str, ...], delimiter: str = ",") -> list[dict[str, str]]:
    with need_file(path).open(newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetFormatError(path, f"missing column(s) {missing}; found {reader.fieldnames}")
        return list(reader)


def read_lines(path: Path) -> list[str]:
    return [line for _, line in numbered_lines(path)]


def numbered_lines(path: Path) -> list[tuple[int, str]]:
    """(file line number, stripped text) of every non-blank line."""
    lines = need_file(path).read_text().splitlines()
    return [(number, line.strip()) for number, line in enumerate(lines, start=1) if line.strip()]


def expect_keys(path: Path, key: str, record: Any, keys: tuple[str, ...]) -> None:
    if not isinstance(record, dict) or any(k not in record for k in keys):
        found = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DatasetFormatError(path, f"entry {key!r} must have keys {list(keys)}, found {found}")
