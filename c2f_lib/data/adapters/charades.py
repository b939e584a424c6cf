"""Charades-STA (`VID start end##sentence` lines, durations from the Charades csv) and the
Charades-CG compositional-generalisation splits (json: vid -> timestamps, sentences, duration)."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from c2f_lib.data.adapters.base import (CleaningReport, DatasetFormatError, LoadedSplit, clean_window,
                                        expect_keys, moments_from_sentences, numbered_lines, read_csv_rows,
                                        read_json_file)
from c2f_lib.data.schema import MomentQuery

CHARADES_CG_FILES = {"train": "train.json", "novel_composition": "novel_composition.json",
                     "novel_word": "novel_word.json", "test_trivial": "test_trivial.json"}


def charades_durations(folder: Path) -> dict[str, float]:
    """Video length (s) from the `length` column of Charades_v1_{train,test}.csv."""
    durations = {}
    for name in ("Charades_v1_train.csv", "Charades_v1_test.csv"):
        path = folder / name
        for row in read_csv_rows(path, ("id", "length")):
            try:
                durations[row["id"]] = float(row["length"])
            except ValueError:
                raise DatasetFormatError(path, f"video {row['id']}: length {row['length']!r} is not a number") from None
    return durations


def load_charades_sta(folder: Path, split: str) -> LoadedSplit:
    path = folder / f"charades_sta_{split}.txt"
    durations = charades_durations(folder)
    report = CleaningReport()
    moments: list[MomentQuery] = []
    per_video: dict[str, int] = defaultdict(int)
    lines = numbered_lines(path)
    for line_no, line in lines:
        head, sep, sentence = line.partition("##")
        fields = head.split()
        if not sep or len(fields) != 3:
            raise DatasetFormatError(path, f"expected 'VID start end##sentence', got {line!r}", line=line_no)
        vid, start, end = fields[0], float(fields[1]), float(fields[2])
        if vid not in durations:
            raise DatasetFormatError(path, f"video {vid} has no length in the Charades csv", line=line_no)
        index = per_video[vid]
        per_video[vid] += 1
        window = clean_window(start, end, durations[vid], report, f"{path.name}:{line_no}")
        if window is None:
            continue
        moments.append(MomentQuery(qid=f"{vid}_{index}", query=sentence.strip(), vid=vid,
                                   duration=durations[vid], relevant_windows=[window]))
    return LoadedSplit("charades_sta", split, moments, [], report, [str(path)],
                       {"queries": len(lines), "videos": len(per_video)})


def load_charades_cg(folder: Path, split: str) -> LoadedSplit:
    """Novel-composition / novel-word splits keep their `novels` / `news` tags in `meta`."""
    path = folder / CHARADES_CG_FILES[split]
    data = read_json_file(path)
    report = CleaningReport()
    moments: list[MomentQuery] = []
    n_queries = 0
    for vid, entry in data.items():
        expect_keys(path, vid, entry, ("timestamps", "sentences", "duration"))
        n_queries += len(entry["sentences"])
        tags = entry.get("novels") or entry.get("news")
        tag_key = "novel" if "novels" in entry else "new_word"
        window_meta = [{tag_key: tag} for tag in tags] if tags else None
        moments += moments_from_sentences(path, vid, float(entry["duration"]), entry["timestamps"],
                                          entry["sentences"], report, window_meta=window_meta)
    return LoadedSplit("charades_cg", split, moments, [], report, [str(path)],
                       {"queries": n_queries, "videos": len(data)})
