"""Real-dataset adapters against the real annotation files (skipped when ../shared/datasets is absent)."""
from __future__ import annotations

import json

import pytest

from c2f_lib.data import registry
from c2f_lib.data.adapters.base import CleaningReport, DatasetFormatError, clean_window
from c2f_lib.data.schema import read_captions, read_moments, write_captions, write_moments

ALL_SPLITS = [(info.name, split) for info in registry.list_datasets() for split in info.splits
              if not (info.name == "msrvtt" and split.startswith("train"))]  # needs MSRVTT_data.json


@pytest.fixture(scope="module")
def loaded(shared_datasets):
    """Every split loaded once for the module: {(name, split): LoadedSplit}."""
    return {(name, split): registry.load_split(name, split, shared_datasets) for name, split in ALL_SPLITS}


@pytest.mark.parametrize("name,split", ALL_SPLITS)
def test_counts_match_published(loaded, name, split):
    data = loaded[name, split]
    published = registry.get_dataset(name).published[split]
    assert data.source_counts == {**data.source_counts, **published}
    # Cleaning may drop windows (counted), never silently.
    dropped = sum(n for action, n in data.report.counts.items() if action.startswith("dropped"))
    if "queries" in published:
        assert len(data.moments) + dropped == published["queries"]
    if "captions" in published and not data.moments:
        assert sum(len(v.captions) for v in data.captions) == published["captions"]


@pytest.mark.parametrize("name,split", ALL_SPLITS)
def test_valid_and_round_trip(loaded, name, split, tmp_path):
    data = loaded[name, split]   # reading back runs the schema checks on every record
    if data.moments:
        write_moments(tmp_path / "m.jsonl", data.moments)
        assert read_moments(tmp_path / "m.jsonl", labelled=data.labelled) == data.moments
    if data.captions:
        write_captions(tmp_path / "c.jsonl", data.captions)
        assert read_captions(tmp_path / "c.jsonl") == data.captions


def test_published_headline_counts(loaded):
    def counts(name, split):
        data = loaded[name, split]
        return len(data.moments), len(data.video_ids)
    assert counts("charades_sta", "test") == (3720, 1334)
    assert counts("tacos", "test") == (4001, 25)
    assert counts("qvhighlights", "val") == (1550, 1519)
    assert len(loaded["msrvtt", "test"].captions) == 1000
    assert sum(len(v.captions) for v in loaded["msvd", "test"].captions) == 27763


def test_charades_sta_train_cleaning_is_reported(loaded):
    report = loaded["charades_sta", "train"].report.counts
    assert report["swapped reversed window"] == 4
    assert report["dropped window starting after the video end"] == 3
    assert report["clipped end to duration"] == 1802     # 1,805 ends past the video, 3 of them dropped
    assert len(loaded["charades_sta", "train"].moments) == 12405


def test_tacos_frames_to_seconds(loaded, shared_datasets):
    raw = json.loads((shared_datasets / "tacos" / "test.json").read_text())["s30-d52.avi"]
    first = next(m for m in loaded["tacos", "test"].moments if m.qid == "s30-d52_0")
    assert first.vid == "s30-d52" and first.duration == pytest.approx(raw["num_frames"] / 29.4)
    assert first.relevant_windows[0] == pytest.approx([raw["timestamps"][0][0] / 29.4, raw["timestamps"][0][1] / 29.4])


def test_tacos_cg_joins_moments_and_captions(loaded):
    data = loaded["tacos_cg", "test"]
    assert {c.vid for c in data.captions} == {m.vid for m in data.moments} == set(loaded["tacos", "test"].video_ids)
    assert all(len(c.captions) == 5 for c in data.captions)


def test_qvhighlights_keeps_saliency(loaded):
    query = loaded["qvhighlights", "val"].moments[0]
    assert query.saliency_scores and len(query.saliency_scores) == len(query.relevant_clip_ids)


def test_clean_window_rules():
    report = CleaningReport()
    assert clean_window(8.0, 2.0, 10.0, report, "a") == [2.0, 8.0]
    assert clean_window(2.0, 12.0, 10.0, report, "b") == [2.0, 10.0]
    assert clean_window(11.0, 12.0, 10.0, report, "c") is None
    assert clean_window(3.0, 3.0, 10.0, report, "d") is None
    assert clean_window(-1.0, 3.0, 10.0, report, "e") == [0.0, 3.0]
    assert sum(report.counts.values()) == 5 and report.examples["swapped reversed window"] == ["a"]


def test_bad_file_named_in_error(tmp_path):
    (tmp_path / "charades_sta").mkdir()
    folder = tmp_path / "charades_sta"
    (folder / "Charades_v1_train.csv").write_text("id,length\nAAAAA,10.0\n")
    (folder / "Charades_v1_test.csv").write_text("id,length\n")
    (folder / "charades_sta_test.txt").write_text("AAAAA 1.0 2.0 no separator\n")
    with pytest.raises(DatasetFormatError, match="charades_sta_test.txt"):
        registry.load_split("charades_sta", "test", tmp_path)
    with pytest.raises(FileNotFoundError, match="charades_sta_train.txt"):
        registry.load_split("charades_sta", "train", tmp_path)


def test_msrvtt_train_from_user_json(tmp_path):
    folder = tmp_path / "msrvtt"
    folder.mkdir()
    (folder / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo1\n")
    with pytest.raises(FileNotFoundError, match="MSRVTT_data.json"):
        registry.load_split("msrvtt", "train_9k", tmp_path)
    data = {"videos": [{"video_id": "video0", "start time": 1.0, "end time": 11.0},
                       {"video_id": "video1", "start time": 0.0, "end time": 5.0},
                       {"video_id": "video9", "start time": 0.0, "end time": 5.0}],
            "sentences": [{"video_id": "video0", "caption": "a cat"}, {"video_id": "video0", "caption": "a dog"},
                          {"video_id": "video1", "caption": "a car"}, {"video_id": "video9", "caption": "x"}]}
    (folder / "MSRVTT_data.json").write_text(json.dumps(data))
    split = registry.load_split("msrvtt", "train_9k", tmp_path)
    assert [(c.vid, c.captions, c.duration) for c in split.captions] == [
        ("video0", ["a cat", "a dog"], 10.0), ("video1", ["a car"], 5.0)]


def test_find_videos_lists_missing(shared_datasets, tmp_path):
    vids = registry.load_split("tacos", "test", shared_datasets).video_ids
    (tmp_path / "sub").mkdir()
    for vid in vids[:3]:
        (tmp_path / "sub" / f"{vid}.avi").write_bytes(b"")
    present, missing = registry.find_videos("tacos", tmp_path, "test", shared_datasets)
    assert sorted(present) == sorted(vids[:3]) and sorted(missing) == sorted(vids[3:])


def test_export_into_run_dir(shared_datasets, tmp_path):
    from c2f_lib.paths import RunPaths

    target = registry.export_dataset("tacos", tmp_path, shared_datasets, splits=["test"])
    paths = RunPaths(tmp_path)
    assert target == paths.dataset_dir("tacos")
    assert len(read_moments(paths.moments_file("tacos", "test"))) == 4001
    captions = read_captions(paths.captions_file("tacos", "test"))     # offline coarse captions
    assert len(captions) == 25 and all(1 <= len(c.captions) <= 5 for c in captions)
    meta = json.loads((target / "meta.json").read_text())
    assert meta["splits"]["test"]["captions_from"] == "offline"
    assert meta["splits"]["test"]["cleaning"]["counts"] == {"clipped end to duration": 5}


def test_cli_list_and_stats(shared_datasets, capsys):
    from c2f_lib.cli import main

    assert main(["data", "--root", str(shared_datasets), "list"]) == 0
    assert "charades_sta" in capsys.readouterr().out
    assert main(["data", "--root", str(shared_datasets), "stats", "lsmdc"]) == 0
    assert "1000" in capsys.readouterr().out
    assert main(["data", "download", "lsmdc", "--print-only"]) == 0
    assert "permission" in capsys.readouterr().out
    assert main(["data", "stats", "no_such_dataset"]) == 2


def test_qvhighlights_hidden_test_loads_unlabelled_and_only_there(tmp_path):
    from c2f_lib.data.adapters.qvhighlights import load_qvhighlights
    row = {"qid": 5, "query": "a man cooks", "vid": "v_0.0_150.0", "duration": 150}
    for split in ("test", "val"):
        (tmp_path / f"highlight_{split}_release.jsonl").write_text(json.dumps(row) + "\n")
    test = load_qvhighlights(tmp_path, "test")
    assert not test.labelled and test.moments[0].relevant_windows == [] and test.moments[0].qid == 5
    test.validate()
    with pytest.raises(DatasetFormatError, match="no relevant_windows .*highlight_val_release.jsonl:1:relevant_windows"):
        load_qvhighlights(tmp_path, "val")
