"""SynthMoments: determinism, schema validity, compositional split, decodable videos, hard
negatives, resumability, and that the pixels do what the captions say."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from c2f_lib.data import synth_grammar as grammar
from c2f_lib.data.schema import read_captions, read_moments
from c2f_lib.data.synth import (SPLITS, SynthConfig, generate_synthmoments, heldout_pairs, load_meta,
                                plan_dataset, saliency)
from c2f_lib.data.synth_render import MOVE_DISTANCE, ActorState, decode_mp4, render_frames, state_at

TINY = SynthConfig(seed=0, n_train_videos=12, n_val_videos=4, n_test_videos=4, n_test_cg_videos=4,
                   min_duration=16.0, max_duration=24.0)
JSONL = [f"{kind}_{split}.jsonl" for kind in ("moments", "captions") for split in SPLITS]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "synthmoments"
    generate_synthmoments(out, TINY)
    return out


def _events(meta: dict, splits: tuple[str, ...]) -> list[dict]:
    return [e for v in meta["videos"] if v["split"] in splits for e in v["events"]]


def test_same_seed_is_identical_and_other_seed_differs(tiny, tmp_path):
    again = tmp_path / "again"
    generate_synthmoments(again, TINY)
    for name in JSONL:
        assert (tiny / name).read_bytes() == (again / name).read_bytes(), name
    for video in sorted((tiny / "videos").glob("*.mp4")):
        np.testing.assert_array_equal(decode_mp4(video), decode_mp4(again / "videos" / video.name))
    other = tmp_path / "other"
    generate_synthmoments(other, replace(TINY, seed=1))
    assert (tiny / "moments_train.jsonl").read_bytes() != (other / "moments_train.jsonl").read_bytes()
    assert not np.array_equal(decode_mp4(tiny / "videos" / "synth_train_0000.mp4"),
                              decode_mp4(other / "videos" / "synth_train_0000.mp4"))


def test_records_validate_and_windows_fit(tiny):
    qids = []
    for split in SPLITS:
        captions = read_captions(tiny / f"captions_{split}.jsonl")
        moments = read_moments(tiny / f"moments_{split}.jsonl")
        assert len(captions) == TINY.split_sizes()[split] and moments
        durations = {c.vid: c.duration for c in captions}
        assert all(len(c.captions) == TINY.n_coarse_captions for c in captions)
        for m in moments:
            assert m.duration == durations[m.vid] and TINY.min_duration <= m.duration <= TINY.max_duration
            (start, end), = m.relevant_windows
            assert 0 <= start < end <= m.duration and end - start >= TINY.min_event_s
            assert max(m.relevant_clip_ids) < math.ceil(m.duration / TINY.clip_len)
        qids += [m.qid for m in moments]
    assert len(qids) == len(set(qids)), "qids must be unique across splits"


def test_captions_record_the_events_they_name(tiny):
    joiners = grammar.COARSE_JOINERS + grammar.COARSE_OVERLAP_JOINERS
    n_events = {v["vid"]: len(v["events"]) for v in load_meta(tiny)["videos"]}
    for split in SPLITS:
        for record in read_captions(tiny / f"captions_{split}.jsonl"):
            named = record.meta["caption_events"]
            assert len(named) == len(record.captions) and named[0] == []      # the scene caption names none
            for text, events in zip(record.captions[1:], named[1:]):
                assert 1 <= len(events) <= 3 and len(set(events)) == len(events)
                assert all(0 <= e < n_events[record.vid] for e in events)
                assert sum(text.count(j) for j in joiners) == len(events) - 1, text   # one clause per event


def test_compositional_split_has_only_unseen_pairs(tiny):
    meta = load_meta(tiny)
    heldout = {tuple(p) for p in meta["heldout_pairs"]}
    assert heldout == set(heldout_pairs(TINY)) and len(heldout) == TINY.n_heldout_pairs
    seen = {(e["actor"]["colour"], e["action"]) for e in _events(meta, ("train", "val", "test"))}
    assert not seen & heldout
    cg = read_moments(tiny / "moments_test_cg.jsonl")
    assert cg and all((m.meta["colour"], m.meta["action"]) in heldout for m in cg)
    assert {m.vid for m in cg} == {c.vid for c in read_captions(tiny / "captions_test_cg.jsonl")}
    # Each held-out colour and action still occurs in training, with other partners.
    train_colours = {c for c, _ in seen}
    train_actions = {a for _, a in seen}
    assert all(c in train_colours and a in train_actions for c, a in heldout)


def test_videos_decode_with_pyav_and_decord(tiny):
    decord = pytest.importorskip("decord")
    meta = load_meta(tiny)
    for video in meta["videos"][:6]:
        path = tiny / "videos" / f"{video['vid']}.mp4"
        frames = decode_mp4(path)  # [T, H, W, 3]
        assert frames.shape == (video["n_frames"], TINY.frame_size, TINY.frame_size, 3)
        assert video["n_frames"] == round(video["duration"] * TINY.fps)
        reader = decord.VideoReader(str(path))
        assert len(reader) == video["n_frames"] and reader.get_avg_fps() == pytest.approx(TINY.fps)
        np.testing.assert_array_equal(reader.get_batch(list(range(len(reader)))).asnumpy(), frames)


def test_hard_negatives_exist(tiny):
    meta = load_meta(tiny)
    by_vid = {v["vid"]: v for v in meta["videos"]}
    cast = lambda v: sorted((a["colour"], a["shape"]) for a in v["actors"])  # noqa: E731
    script = lambda v: sorted((e["actor"]["shape"], e["action"], e["start"]) for e in v["events"])  # noqa: E731
    same_actors = [v for v in meta["videos"] if v["twin_kind"] == "same_actors"]
    recoloured = [v for v in meta["videos"] if v["twin_kind"] == "recoloured"]
    assert same_actors and recoloured
    for v in same_actors:  # same cast, other actions
        base = by_vid[v["twin_of"]]
        assert cast(v) == cast(base) and script(v) != script(base)
    for v in recoloured:  # same script, other colours
        base = by_vid[v["twin_of"]]
        assert script(v) == script(base) and cast(v) != cast(base)


def test_captions_name_the_actor_and_action(tiny):
    meta = load_meta(tiny)
    for event in _events(meta, SPLITS):
        caption, actor = event["caption"], event["actor"]
        assert any(w in caption for w in grammar.COLOURS[actor["colour"]].words), caption
        assert any(w in caption for w in grammar.SHAPES[actor["shape"]].words), caption
    # Within a video a caption picks out one actor: no two actors share (colour, shape).
    for video in meta["videos"]:
        names = [(a["colour"], a["shape"]) for a in video["actors"]]
        assert len(names) == len(set(names))


def test_resume_skips_work_and_config_change_regenerates(tmp_path):
    out = tmp_path / "ds"
    cfg = replace(TINY, n_train_videos=3, n_val_videos=1, n_test_videos=1, n_test_cg_videos=1)
    first = generate_synthmoments(out, cfg)
    assert first["rendered"] == 6
    files = sorted(p for p in out.rglob("*") if p.is_file())
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    second = generate_synthmoments(out, cfg)
    assert second["rendered"] == 0 and {p: p.stat().st_mtime_ns for p in files} == mtimes
    (out / "videos" / "synth_val_0000.mp4").unlink()
    third = generate_synthmoments(out, cfg)
    assert third["rendered"] == 1 and third["reused"] == 5
    (out / "videos" / "synth_train_0001.mp4").write_bytes(b"not a video")  # corrupt: redone, not fatal
    fourth = generate_synthmoments(out, cfg)
    assert fourth["rendered"] == 1 and len(decode_mp4(out / "videos" / "synth_train_0001.mp4")) > 0
    changed = generate_synthmoments(out, replace(cfg, fps=2.0))
    assert changed["rendered"] == 6
    assert len(decode_mp4(out / "videos" / "synth_train_0000.mp4")) == load_meta(out)["videos"][0]["n_frames"]


@pytest.mark.parametrize("action, axis, sign", [("move_left", 1, -1), ("move_right", 1, 1),
                                                ("move_up", 0, -1), ("move_down", 0, 1)])
def test_motion_is_rendered_in_the_captioned_direction(action, axis, sign):
    """The frames show what the caption says, and only several frames tell the direction."""
    initial = ActorState(x=0.5, y=0.5, scale=1.0, angle=0.0, alpha=1.0, rgb=(220, 45, 45))
    video = {"n_frames": 16, "render_seed": 0, "background": "black",
             "actors": [{"id": 0, "shape": "circle", "size": "large", "initial": vars(initial)}],
             "events": [{"start": 0.5, "end": 3.5, "action": action, "params": {}, "actor": {"id": 0}}]}
    frames = render_frames(video, frame_size=64, fps=4.0)  # [16, 64, 64, 3]
    centroid = [np.argwhere(f[..., 0] > 150).mean(axis=0) for f in frames]  # (row, col) per frame
    travel = centroid[15][axis] - centroid[0][axis]
    assert sign * travel == pytest.approx(MOVE_DISTANCE * 64, abs=1.5)
    assert state_at(initial, video["events"], 2.0) != state_at(initial, video["events"], 0.0)


def test_saliency_scores_cover_the_window():
    ids, scores = saliency((1.0, 5.0), clip_len=2.0)
    assert ids == [0, 1, 2] and scores == [[2], [4], [2]]


def test_plan_is_cheap_and_deterministic():
    assert plan_dataset(TINY) == plan_dataset(TINY)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="min_duration"):
        SynthConfig(min_duration=30.0, max_duration=20.0)
    with pytest.raises(ValueError, match="actor"):
        SynthConfig(min_actors=3, max_actors=2)


@pytest.mark.slow
def test_notebook_runs_on_tiny_parameters(tmp_path):
    papermill = pytest.importorskip("papermill")
    from conftest import REPO_ROOT

    params = {"run_dir": str(tmp_path / "run"), "n_train_videos": 4, "n_val_videos": 2, "n_test_videos": 2,
              "n_test_cg_videos": 2, "min_duration": 16.0, "max_duration": 20.0}
    papermill.execute_notebook(str(REPO_ROOT / "notebooks" / "01_synthmoments.ipynb"), str(tmp_path / "out.ipynb"),
                               parameters=params, kernel_name="python3", cwd=str(REPO_ROOT / "notebooks"),
                               progress_bar=False)
    assert (tmp_path / "run" / "metrics" / "01_synthmoments.json").exists()
    assert (tmp_path / "run" / "figures" / "01_composition.png").exists()
