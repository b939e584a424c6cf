"""TACoS (2D-TAN split; timestamps in frames) and TACoS-CG (LLM-written whole-video captions).

Video ids drop the `.avi` suffix (kept in meta["video_file"]) so moments and coarse captions of
the same video share one id.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from c2f_lib.data.adapters.base import (CleaningReport, LoadedSplit, expect_keys, moments_from_sentences,
                                        read_json_file)
from c2f_lib.data.schema import MomentQuery, VideoCaptions

TACOS_DEFAULT_FPS = 29.4
TACOS_CG_FILES = {"train": "cg_train.json", "val": "cg_val.json", "test": "cg_test.json"}


def tacos_vid(video_file: str) -> str:
    return video_file[:-4] if video_file.endswith(".avi") else video_file


def tacos_moments(path: Path, data: dict, report: CleaningReport,
                  videos: set[str] | None = None) -> tuple[list[MomentQuery], int]:
    """Frames -> seconds with each video's fps (29.4 when absent). Returns (moments, n_source)."""
    moments, n_source = [], 0
    for video_file, entry in data.items():
        vid = tacos_vid(video_file)
        if videos is not None and vid not in videos:
            continue
        expect_keys(path, video_file, entry, ("timestamps", "sentences", "num_frames"))
        fps = float(entry.get("fps") or TACOS_DEFAULT_FPS)
        windows = [[start / fps, end / fps] for start, end in entry["timestamps"]]
        n_source += len(entry["sentences"])
        moments += moments_from_sentences(path, vid, entry["num_frames"] / fps, windows, entry["sentences"],
                                          report, meta={"video_file": video_file})
    return moments, n_source


def load_tacos(folder: Path, split: str) -> LoadedSplit:
    path = folder / f"{split}.json"
    data = read_json_file(path)
    report = CleaningReport()
    moments, n_source = tacos_moments(path, data, report)
    return LoadedSplit("tacos", split, moments, [], report, [str(path)],
                       {"queries": n_source, "videos": len(data)})


def load_tacos_cg(folder: Path, split: str) -> LoadedSplit:
    """Captions: cg_<split>.json (5 LLM captions per video). Moments: the split's videos in
    tacos.json (all 127 TACoS videos, fine-grained sentences)."""
    cg_path, fine_path = folder / TACOS_CG_FILES[split], folder / "tacos.json"
    rows = read_json_file(cg_path)
    report = CleaningReport()
    by_video: dict[str, list[str]] = defaultdict(list)
    lengths: dict[str, float] = {}
    for i, row in enumerate(rows):
        expect_keys(cg_path, f"row {i + 1}", row, ("video_id", "summarized_sentence", "num_frames"))
        vid = tacos_vid(row["video_id"])
        caption = row["summarized_sentence"].strip()
        if caption:
            by_video[vid].append(caption)
        else:
            report.add("dropped empty caption", vid)
        lengths[vid] = row["num_frames"] / float(row.get("fps") or TACOS_DEFAULT_FPS)
    captions = [VideoCaptions(vid=vid, captions=caps, duration=lengths[vid], meta={"video_file": f"{vid}.avi"})
                for vid, caps in by_video.items()]
    moments, n_source = tacos_moments(fine_path, read_json_file(fine_path), report, videos=set(lengths))
    return LoadedSplit("tacos_cg", split, moments, captions, report, [str(cg_path), str(fine_path)],
                       {"captions": len(rows), "queries": n_source, "videos": len(lengths)})
