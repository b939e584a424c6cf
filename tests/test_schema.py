"""The unified annotation schema: exact round trips, and malformed records rejected with the
file, the line and the field named."""
from __future__ import annotations

import json

import pytest

from c2f_lib.data.schema import (MomentQuery, SchemaError, VideoCaptions, read_captions, read_moments,
                                 write_captions, write_moments)

GOOD_MOMENT = {"qid": "q1", "query": "the red circle moves left", "vid": "v1", "duration": 30.0,
               "relevant_windows": [[2.0, 6.5]]}
GOOD_CAPTIONS = {"vid": "v1", "captions": ["a red circle"], "duration": 30.0}


def _write_lines(path, records) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))


def test_round_trip_is_exact(tmp_path):
    moments = [MomentQuery(qid="a", query="q one", vid="v1", duration=20.0, relevant_windows=[[0.0, 2.5]],
                           relevant_clip_ids=[0, 1], saliency_scores=[[4], [2]], meta={"action": "spin"}),
               MomentQuery(qid=7, query="q two", vid="v2", duration=12.5,
                           relevant_windows=[[1.0, 3.0], [5.0, 12.5]])]
    captions = [VideoCaptions(vid="v1", captions=["one", "two"], duration=20.0, meta={"k": [1, 2]}),
                VideoCaptions(vid="v2", captions=["ünïcode"])]
    write_moments(tmp_path / "m.jsonl", moments)
    write_captions(tmp_path / "c.jsonl", captions)
    assert read_moments(tmp_path / "m.jsonl") == moments
    assert read_captions(tmp_path / "c.jsonl") == captions
    # A second write of what was read gives the same bytes.
    first = (tmp_path / "m.jsonl").read_bytes()
    write_moments(tmp_path / "m.jsonl", read_moments(tmp_path / "m.jsonl"))
    assert (tmp_path / "m.jsonl").read_bytes() == first


@pytest.mark.parametrize("change, field", [
    ({"qid": None}, "qid"),                                   # missing (removed below)
    ({"query": 3}, "query"),                                  # bad type
    ({"duration": "30"}, "duration"),
    ({"duration": -1.0}, "duration"),
    ({"relevant_windows": [[6.0, 2.0]]}, "relevant_windows[0]"),   # reversed
    ({"relevant_windows": [[2.0, 31.0]]}, "relevant_windows[0]"),  # past the duration
    ({"relevant_windows": [[1.0, 2.0], [3.0]]}, "relevant_windows[1]"),
    ({"relevant_windows": []}, "relevant_windows"),
    ({"relevant_clip_ids": [0], "saliency_scores": [[1], [2]]}, "saliency_scores"),
    ({"colour": "red"}, "colour"),                            # unknown field
])
def test_malformed_moment_names_file_line_and_field(tmp_path, change, field):
    bad = {k: v for k, v in {**GOOD_MOMENT, **change}.items() if v is not None}
    path = tmp_path / "moments.jsonl"
    _write_lines(path, [GOOD_MOMENT, bad])
    with pytest.raises(SchemaError) as err:
        read_moments(path)
    assert (err.value.path, err.value.line, err.value.field) == (str(path), 2, field)
    assert str(err.value).endswith(f", {path}:2:{field}")


def test_bad_json_line_is_reported(tmp_path):
    path = tmp_path / "moments.jsonl"
    _write_lines(path, [GOOD_MOMENT, "", '{"qid": "q2", "query": '])
    with pytest.raises(SchemaError, match=r"not valid JSON .*, \S*moments.jsonl:3:<json>$"):
        read_moments(path)


@pytest.mark.parametrize("record, line, field", [
    ([GOOD_CAPTIONS, {"vid": "v2"}], 2, "captions"),
    ([GOOD_CAPTIONS, {"vid": "v2", "captions": ["ok", ""]}], 2, "captions[1]"),
    ([GOOD_CAPTIONS, {"vid": "v2", "captions": ["ok"], "duration": 0}], 2, "duration"),
    ([GOOD_CAPTIONS, GOOD_CAPTIONS], 2, "vid"),                  # duplicate video
    (["[1, 2]"], 1, "<record>"),
])
def test_malformed_captions_name_file_line_and_field(tmp_path, record, line, field):
    path = tmp_path / "captions.jsonl"
    _write_lines(path, record)
    with pytest.raises(SchemaError) as err:
        read_captions(path)
    assert (err.value.path, err.value.line, err.value.field) == (str(path), line, field)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_moments(tmp_path / "nope.jsonl")


def test_unlabelled_queries_need_labelled_false(tmp_path):
    path = tmp_path / "hidden_test.jsonl"
    _write_lines(path, [{"qid": 1, "query": "a dog runs", "vid": "v1", "duration": 30},
                        {"qid": 2, "query": "a cat sits", "vid": "v2", "duration": 30, "relevant_windows": []},
                        {"qid": 3, "query": "a bird", "vid": "v3", "duration": 30, "relevant_windows": [[1, 2]]}])
    with pytest.raises(SchemaError, match=r"^no window \(an unlabelled.*, \S*hidden_test.jsonl:1:relevant_windows$"):
        read_moments(path)
    records = read_moments(path, labelled=False)
    assert [r.labelled for r in records] == [False, False, True] and records[0].relevant_windows == []
    write_moments(tmp_path / "out.jsonl", records)  # unlabelled queries round-trip with explicit []
    assert read_moments(tmp_path / "out.jsonl", labelled=False) == records
    with pytest.raises(SchemaError, match=r"^no window \(an unlabelled.*, \S*out.jsonl:1:relevant_windows$"):
        read_moments(tmp_path / "out.jsonl")
    _write_lines(path, [{"qid": 1, "query": "q", "vid": "v", "duration": 30, "relevant_windows": [[5, 1]]}])
    with pytest.raises(SchemaError, match="not inside"):  # windows that are given are still checked
        read_moments(path, labelled=False)


def test_repeated_ids_name_the_file_line_of_the_repeat(tmp_path):
    """Lines are the file's (blank lines count), not entry indices; qid 1 and "1" collide as in evaluation."""
    path = tmp_path / "moments.jsonl"
    _write_lines(path, [GOOD_MOMENT, "", {**GOOD_MOMENT, "qid": 1}, "", {**GOOD_MOMENT, "qid": "1"}])
    with pytest.raises(SchemaError) as err:
        read_moments(path)
    assert str(err.value) == f"qid '1' given twice (first on line 3), {path}:5:qid"
    path = tmp_path / "captions.jsonl"
    _write_lines(path, ["", GOOD_CAPTIONS, "", GOOD_CAPTIONS])
    with pytest.raises(SchemaError) as err:
        read_captions(path)
    assert str(err.value) == f"vid 'v1' given twice (first on line 2), {path}:4:vid"


def test_unlabelled_split_message_speaks_to_the_user_and_extraction_reads_it(tmp_path):
    """Issue 18 (audit): the error named a Python argument ("read with labelled=False"), and `c2f features
    --dataset-dir` refused an exported folder holding a hidden (unlabelled) test split."""
    import json

    from c2f_lib.data.schema import SchemaError, read_moments
    from c2f_lib.features.extract import dataset_annotations

    path = tmp_path / "moments_test.jsonl"
    path.write_text(json.dumps({"qid": 1, "query": "a man cooks", "vid": "v1", "duration": 30.0}) + "\n")
    with pytest.raises(SchemaError) as err:
        read_moments(path)
    assert "labelled=" not in str(err.value) and "hidden test set" in str(err.value)
    assert dataset_annotations(tmp_path) == (["v1"], ["a man cooks"])
