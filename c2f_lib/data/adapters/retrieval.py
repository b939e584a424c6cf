"""Caption-only text -> video retrieval benchmarks: MSR-VTT, MSVD, LSMDC, DiDeMo (paragraphs).

These have no moment annotations; each split becomes a list of `VideoCaptions`.
"""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from c2f_lib.data.adapters.base import (CleaningReport, DatasetFormatError, LoadedSplit, numbered_lines,
                                        read_csv_rows, read_json_file, read_lines)
from c2f_lib.data.schema import VideoCaptions

MSRVTT_TRAIN_LISTS = {"train_9k": "MSRVTT_train.9k.csv", "train_7k": "MSRVTT_train.7k.csv"}


def _captions_split(dataset: str, split: str, by_video: dict[str, list[str]], report: CleaningReport,
                    sources: list[Path], durations: dict[str, float | None] | None = None,
                    meta: dict[str, dict] | None = None) -> LoadedSplit:
    records = []
    for vid, captions in by_video.items():
        kept = [c.strip() for c in captions if c.strip()]
        if len(kept) < len(captions):
            report.add("dropped empty caption", vid)
        if not kept:
            report.add("dropped video without captions", vid)
            continue
        duration = (durations or {}).get(vid)
        records.append(VideoCaptions(vid=vid, captions=kept, duration=duration, meta=(meta or {}).get(vid, {})))
    source_counts = {"videos": len(by_video), "captions": sum(len(c) for c in by_video.values())}
    return LoadedSplit(dataset, split, [], records, report, [str(p) for p in sources], source_counts)


def load_msrvtt(folder: Path, split: str) -> LoadedSplit:
    """`test`: the JSFusion 1k-A csv (one caption per video). `train_9k`/`train_7k`: the csv lists
    the video ids; their 20 captions each come from MSRVTT_data.json, which the user supplies."""
    report = CleaningReport()
    if split == "test":
        path = folder / "MSRVTT_JSFUSION_test.csv"
        by_video: dict[str, list[str]] = defaultdict(list)
        for row in read_csv_rows(path, ("video_id", "sentence")):
            by_video[row["video_id"]].append(row["sentence"])
        return _captions_split("msrvtt", split, by_video, report, [path])
    list_path = folder / MSRVTT_TRAIN_LISTS[split]
    ids = [row["video_id"] for row in read_csv_rows(list_path, ("video_id",))]
    data_path = folder / "MSRVTT_data.json"
    if not data_path.is_file():
        raise FileNotFoundError(
            f"{data_path}: MSR-VTT train captions are not shipped with the annotation folder; "
            "download MSRVTT_data.json (see `c2f data download msrvtt`) and put it there")
    data = read_json_file(data_path)
    if not isinstance(data, dict) or "sentences" not in data or "videos" not in data:
        raise DatasetFormatError(data_path, "expected an object with 'videos' and 'sentences'")
    wanted = set(ids)
    by_video = {vid: [] for vid in ids}
    for sentence in data["sentences"]:
        if sentence["video_id"] in wanted:
            by_video[sentence["video_id"]].append(sentence["caption"])
    durations = {v["video_id"]: float(v["end time"]) - float(v["start time"])
                 for v in data["videos"] if v["video_id"] in wanted and "end time" in v}
    durations = {vid: d if d > 0 else None for vid, d in durations.items()}
    return _captions_split("msrvtt", split, by_video, report, [list_path, data_path], durations)


_MSVD_SPAN = re.compile(r"^(?P<ytid>.+)_(?P<start>\d+)_(?P<end>\d+)$")


def _msvd_duration(vid: str) -> float | None:
    """MSVD ids are `<youtube id>_<start s>_<end s>`; the clip length follows from them."""
    match = _MSVD_SPAN.match(vid)
    if not match:
        return None
    length = float(match["end"]) - float(match["start"])
    return length if length > 0 else None


def load_msvd(folder: Path, split: str) -> LoadedSplit:
    captions_path, list_path = folder / "captions_msvd.json", folder / f"{split}_list.txt"
    captions = read_json_file(captions_path)
    ids = read_lines(list_path)
    missing = [vid for vid in ids if vid not in captions]
    if missing:
        raise DatasetFormatError(list_path, f"{len(missing)} video id(s) have no captions in "
                                            f"{captions_path.name}, e.g. {missing[:3]}")
    by_video = {vid: list(captions[vid]) for vid in ids}
    return _captions_split("msvd", split, by_video, CleaningReport(), [captions_path, list_path],
                           {vid: _msvd_duration(vid) for vid in ids})


def _lsmdc_seconds(stamp: str, path: Path) -> float:
    """LSMDC timestamps are `HH.MM.SS.mmm`."""
    parts = stamp.split(".")
    if len(parts) != 4:
        raise DatasetFormatError(path, f"timestamp {stamp!r} is not HH.MM.SS.mmm")
    hours, minutes, seconds, millis = (int(p) for p in parts)
    return hours * 3600 + minutes * 60 + seconds + millis / 1000


def load_lsmdc(folder: Path, split: str) -> LoadedSplit:
    """The LSMDC16 public test (1,000 clips, tab-separated: clip, start, end, start, end, sentence)."""
    path = folder / "LSMDC16_challenge_1000_publictect.csv"
    by_video: dict[str, list[str]] = {}
    durations, meta = {}, {}
    for line_no, line in numbered_lines(path):
        fields = line.split("\t")
        if len(fields) != 6:
            raise DatasetFormatError(path, f"expected 6 tab-separated fields, got {len(fields)}", line=line_no)
        clip, start, end, sentence = fields[0], fields[1], fields[2], fields[5]
        by_video.setdefault(clip, []).append(sentence)
        length = _lsmdc_seconds(end, path) - _lsmdc_seconds(start, path)
        durations[clip] = length if length > 0 else None
        meta[clip] = {"movie": clip.rsplit("_", 1)[0]}
    return _captions_split("lsmdc", split, by_video, CleaningReport(), [path], durations, meta)


def load_didemo(folder: Path, split: str) -> LoadedSplit:
    """Paragraph retrieval: one row per video, `text` = all of the video's sentences joined.

    The video id is the video file name without extension (unique per row); the csv's start/end
    columns are tensor reprs of the whole-video span [0, 31] and carry no information.
    """
    path = folder / f"didemo_{split}_label.csv"
    by_video: dict[str, list[str]] = {}
    meta: dict[str, dict] = {}
    for row in read_csv_rows(path, ("video_path", "text")):
        file_name = row["video_path"].rsplit("/", 1)[-1]
        vid = file_name.rsplit(".", 1)[0] if "." in file_name else file_name
        if vid in by_video:
            raise DatasetFormatError(path, f"video {vid!r} appears in two rows")
        by_video[vid] = [row["text"]]
        meta[vid] = {"video_file": file_name}
    return _captions_split("didemo", split, by_video, CleaningReport(), [path], meta=meta)
