"""ActivityNet Captions: timestamped sentences per video -> moments, and the video's sentences
joined in temporal order -> one paragraph caption (paragraph retrieval, as in TextDiffs)."""
from __future__ import annotations

from pathlib import Path

from c2f_lib.data.adapters.base import (CleaningReport, LoadedSplit, expect_keys, moments_from_sentences,
                                        read_json_file)
from c2f_lib.data.schema import VideoCaptions

ACTIVITYNET_FILES = {"train": "train.json", "val_1": "val_1.json"}


def paragraph(windows: list, sentences: list[str]) -> str:
    """Sentences ordered by start time (ties keep file order), joined with single spaces."""
    order = sorted(range(len(sentences)), key=lambda i: (min(windows[i]), i))
    return " ".join(sentences[i].strip() for i in order if sentences[i].strip())


def load_activitynet(folder: Path, split: str) -> LoadedSplit:
    path = folder / ACTIVITYNET_FILES[split]
    data = read_json_file(path)
    report = CleaningReport()
    moments, captions, n_queries = [], [], 0
    for vid, entry in data.items():
        expect_keys(path, vid, entry, ("duration", "timestamps", "sentences"))
        duration = float(entry["duration"])
        n_queries += len(entry["sentences"])
        moments += moments_from_sentences(path, vid, duration, entry["timestamps"], entry["sentences"], report)
        text = paragraph(entry["timestamps"], entry["sentences"])
        if text:
            captions.append(VideoCaptions(vid=vid, captions=[text], duration=duration))
        else:
            report.add("dropped video without sentences", vid)
    return LoadedSplit("activitynet_captions", split, moments, captions, report, [str(path)],
                       {"queries": n_queries, "videos": len(data)})
