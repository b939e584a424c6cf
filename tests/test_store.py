"""Feature store: round trip, loaders, resume, corrupt and mismatched stores."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from c2f_lib.data.schema import MomentQuery, write_captions, write_moments
from c2f_lib.features.store import FeatureStore, StoreError, StoreMeta, failures_path
from c2f_lib.features.store_writer import FeatureStoreWriter
from c2f_lib.features.store_bundles import (add_moment_queries, load_coarse_split, load_moment_samples,
                                           saliency_target)
from c2f_lib.features.testing import make_random_store, random_records


@pytest.fixture
def annotated_store(tmp_path):
    moments, captions = random_records(num_videos=4, queries_per_video=2, seed=1)
    write_moments(tmp_path / "moments.jsonl", moments)
    write_captions(tmp_path / "captions.jsonl", captions)
    store = make_random_store(tmp_path / "store.h5", moments, captions, dim=16, token_dim=8, num_frames=5)
    return store, tmp_path / "moments.jsonl", tmp_path / "captions.jsonl", moments, captions


def test_roundtrip_fp16_and_metadata(tmp_path):
    meta = StoreMeta(backbone="b", weights="w", num_frames=3, clip_len=2.0)
    frames = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    with FeatureStoreWriter(tmp_path / "s.h5", meta) as w:
        w.put_video("a/b", frames=frames, frame_indices=[1, 4, 7], clips=torch.ones(5, 6), clip_len=2.0,
                    duration=9.5, fps=10.0, source="/v/a.mp4")
        w.put_text("a / caption", sentence=np.ones(4), tokens=np.zeros((7, 3)))
    with FeatureStore(tmp_path / "s.h5") as store:
        assert store.meta.video_dim == 6 and store.meta.text_dim == 4 and store.meta.token_dim == 3
        assert store.frames("a/b").dtype == np.float16
        np.testing.assert_allclose(store.frames("a/b"), frames, atol=1e-2)
        assert store.frame_indices("a/b").tolist() == [1, 4, 7]
        assert store.clips("a/b").shape == (5, 6)
        assert store.tokens("a / caption").shape == (7, 3)
        assert store.video_attrs("a/b")["source"] == "/v/a.mp4"
        with pytest.raises(KeyError, match="no video 'zzz'"):
            store.frames("zzz")


def test_load_coarse_split(annotated_store):
    store, _, captions_file, _, captions = annotated_store
    split = load_coarse_split(store, captions_file)
    assert split.frames.shape == (4, 5, 16) and split.frames.dtype == torch.float32
    assert split.texts == [c for r in captions for c in r.captions]
    assert split.text_to_video.tolist() == [0, 1, 2, 3]
    # The random store's captions share their video's vector: the right video wins.
    sims = split.text_emb @ split.frames.mean(1).T
    assert (sims.argmax(1) == split.text_to_video).float().mean() >= 0.75


def test_add_moment_queries_appends_each_sentence_to_its_video(annotated_store, tmp_path):
    store, moments_file, captions_file, moments, _ = annotated_store
    split = load_coarse_split(store, captions_file)
    write_moments(tmp_path / "partial.jsonl", moments[:-2] + [MomentQuery(
        qid="other", query=moments[0].query, vid="not_in_this_split", duration=30.0, relevant_windows=[[0, 2]])])
    wider = add_moment_queries(split, store, tmp_path / "partial.jsonl")
    added = moments[:-2]                                  # the query of a video outside the split is dropped
    assert wider.texts == split.texts + [m.query for m in added]
    assert wider.text_to_video.tolist() == split.text_to_video.tolist() + [split.video_ids.index(m.vid) for m in added]
    with FeatureStore(store) as st:
        assert torch.equal(wider.text_emb[len(split.texts):], torch.stack(
            [torch.from_numpy(st.sentence(m.query)).float() for m in added]))
    assert wider.frames is split.frames                  # the gallery is shared, not copied


def test_load_moment_samples(annotated_store):
    store, moments_file, _, moments, _ = annotated_store
    samples = load_moment_samples(store, moments_file)
    assert [s.qid for s in samples] == [m.qid for m in moments]
    s = samples[0]
    assert s.clip_feats.shape == (10, 16) and s.token_feats.shape[1] == 8 and s.clip_len == 2.0
    assert s.windows == moments[0].relevant_windows
    assert s.saliency.shape == (10,) and s.saliency.max() == 1.0


def test_saliency_from_scores_and_windows():
    from_windows = saliency_target(5, 2.0, [[2.5, 5.0]])
    assert from_windows.tolist() == [0, 1, 1, 0, 0]
    from_scores = saliency_target(5, 2.0, [[0, 4]], clip_ids=[0, 1], scores=[[4, 4, 4], [2, 2, 0]])
    assert torch.allclose(from_scores, torch.tensor([1.0, 1 / 3, 0, 0, 0]))


def test_missing_video_is_an_error_unless_reported_as_failed(annotated_store, tmp_path):
    store, moments_file, _, moments, _ = annotated_store
    extra = MomentQuery(qid=99, query="query 0 in video 0", vid="ghost", duration=20.0,
                        relevant_windows=[[1.0, 2.0]])
    write_moments(tmp_path / "more.jsonl", moments + [extra])
    with pytest.raises(StoreError, match="ghost"):
        load_moment_samples(store, tmp_path / "more.jsonl")
    failures_path(store).write_text(json.dumps([{"vid": "ghost", "reason": "corrupt"}]))
    with pytest.warns(UserWarning, match="ghost"):
        samples = load_moment_samples(store, tmp_path / "more.jsonl")
    assert len(samples) == len(moments)


def test_metadata_mismatch_is_named(tmp_path):
    meta = StoreMeta(backbone="tinyclip", num_frames=4)
    with FeatureStoreWriter(tmp_path / "s.h5", meta) as w:
        w.put_video("v", frames=np.zeros((4, 2)), frame_indices=range(4))
    with pytest.raises(StoreError, match=r"num_frames: stored 4 != requested 12"):
        FeatureStoreWriter(tmp_path / "s.h5", StoreMeta(backbone="tinyclip", num_frames=12))
    with pytest.raises(StoreError, match="backbone"):
        FeatureStore(tmp_path / "s.h5", expect=StoreMeta(backbone="ViT-B-32:openai", num_frames=4))


def test_corrupt_and_foreign_files_are_named(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(StoreError, match="^not a readable HDF5.*, .*bad.h5$"):
        FeatureStore(bad)
    import h5py
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(StoreError, match="not a c2f feature store"):
        FeatureStore(tmp_path / "foreign.h5")


def test_rerun_skips_and_interrupted_run_resumes(tmp_path):
    meta = StoreMeta(backbone="b")
    path = tmp_path / "s.h5"
    with FeatureStoreWriter(path, meta) as w:
        w.put_video("v0", clips=np.ones((2, 3)))
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureStoreWriter(path, meta) as w:
            assert w.has_video("v0")
            w.put_video("v1", clips=np.ones((2, 3)))
            raise RuntimeError("boom")
    with FeatureStore(path) as store:  # the finished store is untouched by the failed run
        assert store.video_ids() == ["v0"]
    with FeatureStoreWriter(path, meta) as w:  # resumes from the partial file
        assert w.has_video("v1")
        w.put_video("v2", clips=np.ones((2, 3)))
    with FeatureStore(path) as store:
        assert store.video_ids() == ["v0", "v1", "v2"]
    assert not w.partial.exists()


def test_corrupt_partial_is_discarded(tmp_path):
    path = tmp_path / "s.h5"
    with FeatureStoreWriter(path, StoreMeta(backbone="b")) as w:
        w.put_video("v0", clips=np.ones((2, 3)))
    w.partial.write_bytes(b"\x89HDF truncated")
    with pytest.warns(UserWarning, match="discarding unusable partial"):
        with FeatureStoreWriter(path, StoreMeta(backbone="b")) as w:
            assert w.has_video("v0")


def test_bad_features_rejected(tmp_path):
    with FeatureStoreWriter(tmp_path / "s.h5", StoreMeta(backbone="b", clip_len=2.0)) as w:
        with pytest.raises(ValueError, match="NaN"):
            w.put_video("v", clips=np.full((2, 3), np.nan))
        with pytest.raises(ValueError, match="clip_len"):
            w.put_video("v", clips=np.ones((2, 3)), clip_len=1.0)
        w.put_video("v", clips=np.ones((2, 3)))
        with pytest.raises(ValueError, match="video_dim is 3"):
            w.put_video("w", clips=np.ones((2, 4)))


def _texts_and_features(n, seed=0):
    rng = np.random.default_rng(seed)
    texts = [f"caption {i} / of a video" for i in range(n)]
    tokens = [rng.standard_normal((1 + i % 4, 3)).astype(np.float32) for i in range(n)]
    return texts, rng.standard_normal((n, 5)).astype(np.float32), tokens


def test_put_texts_batch_reads_back_and_cut_off_append_is_dropped(tmp_path):
    import h5py
    path, meta = tmp_path / "s.h5", StoreMeta(backbone="b")
    texts, sentences, tokens = _texts_and_features(7)
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureStoreWriter(path, meta) as w:
            w.put_texts(texts[:3], sentences=torch.from_numpy(sentences[:3]), tokens=tokens[:3])
            w.put_texts(texts[3:5], sentences=sentences[3:5], tokens=tokens[3:5])
            raise RuntimeError("boom")
    with h5py.File(w.partial, "a") as f:  # as if the run died after writing rows 3-4, before committing them
        f["text_table"].attrs["rows"] = 3
    with FeatureStoreWriter(path, meta) as w:
        assert [w.has_text(t) for t in texts[:5]] == [True] * 3 + [False] * 2
        w.put_texts(texts[3:6], sentences=sentences[3:6], tokens=tokens[3:6])
        w.put_text(texts[6], tokens=tokens[6])
    with FeatureStore(path) as store:
        for i, text in enumerate(texts):
            np.testing.assert_allclose(store.tokens(text), tokens[i], atol=1e-2)
            if i < 6:
                np.testing.assert_allclose(store.sentence(text), sentences[i], atol=1e-2)
        with pytest.raises(KeyError, match="has no 'sentence'"):
            store.sentence(texts[6])
    with pytest.raises(ValueError, match="2 texts but 1 token arrays"):
        with FeatureStoreWriter(path, meta) as w:
            w.put_texts(["a", "b"], tokens=[np.ones((2, 3))])


def test_format1_store_is_read_and_upgraded_on_write(tmp_path):
    import h5py

    from c2f_lib.features.store import text_key
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:  # the per-text group layout of format 1
        f.attrs["format"], f.attrs["meta"] = "c2f-feature-store/1", StoreMeta(backbone="b").to_json()
        group = f.create_group(f"texts/{text_key('old text')}")
        group["sentence"], group["tokens"] = np.full(4, 0.5, np.float16), np.ones((2, 3), np.float16)
        group.attrs["text"], group.attrs["complete"] = "old text", True
    with FeatureStore(path) as store:
        assert store.sentence("old text").tolist() == [0.5] * 4
    with FeatureStoreWriter(path, StoreMeta(backbone="b")) as w:
        assert w.has_text("old text")
        w.put_text("new text", sentence=np.zeros(4), tokens=np.zeros((1, 3)))
    with FeatureStore(path) as store:
        assert store.tokens("old text").shape == (2, 3) and store.tokens("new text").shape == (1, 3)
    with h5py.File(path, "a") as f:
        assert f.attrs["format"] == "c2f-feature-store/2"
        f.attrs["format"] = "c2f-feature-store/3"
    with pytest.raises(StoreError, match="format attribute 'c2f-feature-store/3'"):
        FeatureStore(path)


def test_token_ids_round_trip_and_stores_without_ids_still_load(tmp_path):
    import h5py
    path = tmp_path / "s.h5"
    texts, sentences, tokens = _texts_and_features(5)
    ids = [np.arange(len(t)) * 7 + i for i, t in enumerate(tokens)]
    with FeatureStoreWriter(path, StoreMeta(backbone="b", vocab_size=100)) as w:
        w.put_texts(texts[:2], sentences=sentences[:2], tokens=tokens[:2])                 # no ids (old writer)
        w.put_texts(texts[2:4], sentences=sentences[2:4], tokens=tokens[2:4],
                    token_ids=[torch.from_numpy(i) for i in ids[2:4]])
        w.put_text(texts[4], tokens=tokens[4], token_ids=ids[4])
        assert [w.has_text(t, with_token_ids=True) for t in texts] == [False, False, True, True, True]
        with pytest.raises(ValueError, match=r"outside \[0, 100\)"):
            w.put_text("x", tokens=np.ones((2, 3)), token_ids=[5, 100])
        with pytest.raises(ValueError, match="expected 2 integers"):
            w.put_text("x", tokens=np.ones((2, 3)), token_ids=[5])
        with pytest.raises(ValueError, match="need token features"):
            w.put_texts(["x"], sentences=np.ones((1, 5)), token_ids=[[5]])
    with FeatureStore(path) as store:
        assert store.meta.vocab_size == 100
        assert [store.token_ids(t) for t in texts[:2]] == [None, None]
        for i in range(2, 5):
            np.testing.assert_array_equal(store.token_ids(texts[i]), ids[i])
            assert store.token_ids(texts[i]).dtype == np.int64 and len(store.token_ids(texts[i])) == len(tokens[i])
            np.testing.assert_allclose(store.tokens(texts[i]), tokens[i], atol=1e-2)
        with pytest.raises(KeyError, match="no text 'zzz'"):
            store.token_ids("zzz")
    # a rerun adds the ids of an old text (its new row wins) and an id-less rewrite drops them again
    with FeatureStoreWriter(path, StoreMeta(backbone="b")) as w:
        w.put_text(texts[0], tokens=tokens[0], token_ids=ids[0])
        w.put_text(texts[2], tokens=tokens[2])
    with FeatureStore(path) as store:
        np.testing.assert_array_equal(store.token_ids(texts[0]), ids[0])
        assert store.token_ids(texts[2]) is None and store.meta.vocab_size == 100   # 0 = not fixed: kept
    # an append cut off before its commit leaves no stray id rows behind
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureStoreWriter(path, StoreMeta(backbone="b")) as w:
            w.put_text("late", tokens=np.ones((4, 3)), token_ids=[1, 2, 3, 4])
            raise RuntimeError("boom")
    with h5py.File(w.partial, "a") as f:
        f["text_table"].attrs["rows"] = int(f["text_table"].attrs["rows"]) - 1
    with FeatureStoreWriter(path, StoreMeta(backbone="b")) as w:
        assert not w.has_text("late")
        w.put_text("later", tokens=np.ones((2, 3)), token_ids=[8, 9])
    with FeatureStore(path) as store:
        assert store.token_ids("later").tolist() == [8, 9]
        np.testing.assert_array_equal(store.token_ids(texts[4]), ids[4])


def test_moment_samples_carry_token_ids_when_stored(annotated_store, tmp_path):
    store, moments_file, _, moments, _ = annotated_store
    assert all(s.token_ids is None for s in load_moment_samples(store, moments_file))  # a store without ids
    with FeatureStore(store) as f:
        lengths = {m.query: f.tokens(m.query).shape[0] for m in moments}
    with FeatureStoreWriter(store, StoreMeta(backbone="random", weights="seed0", num_frames=5)) as w:
        for m in moments:
            w.put_text(m.query, tokens=np.zeros((lengths[m.query], 8)), token_ids=np.arange(lengths[m.query]) + m.qid)
    for s in load_moment_samples(store, moments_file):
        assert s.token_ids.dtype == torch.long
        assert s.token_ids.tolist() == list(range(s.qid, s.qid + len(s.token_feats)))


def test_format1_text_has_no_token_ids(tmp_path):
    import h5py

    from c2f_lib.features.store import text_key
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        f.attrs["format"], f.attrs["meta"] = "c2f-feature-store/1", StoreMeta(backbone="b").to_json()
        group = f.create_group(f"texts/{text_key('old text')}")
        group["tokens"], group.attrs["complete"] = np.ones((2, 3), np.float16), True
    with FeatureStore(path) as store:
        assert store.token_ids("old text") is None and store.meta.vocab_size == 0
