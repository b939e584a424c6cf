"""Readers of released Moment-DETR / QD-DETR npz folders and MESM HDF5 files (built here, tiny)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from c2f_lib.data.schema import MomentQuery, write_moments
from c2f_lib.features.released import ReleasedConfig, ReleasedFeatureError, load_released_moment_samples
from c2f_lib.features.store_bundles import saliency_target

CLIP_D, SF_D, TOKEN_D = 4, 6, 8


@pytest.fixture
def released(tmp_path):
    """Two videos, three queries; CLIP has one clip more than SlowFast (as in the QVHighlights release)."""
    rng = np.random.default_rng(0)
    moments = [
        MomentQuery(qid=1, query="a man cooks", vid="vidA_0_20", duration=20.0, relevant_windows=[[4.0, 8.0]],
                    relevant_clip_ids=[2, 3], saliency_scores=[[4, 4, 2], [0, 1, 2]]),
        MomentQuery(qid=2, query="a dog runs", vid="vidA_0_20", duration=20.0, relevant_windows=[[0.0, 3.0]]),
        MomentQuery(qid=7, query="rain falls", vid="vidB_10_26", duration=16.0, relevant_windows=[[10.0, 16.0]]),
    ]
    write_moments(tmp_path / "moments.jsonl", moments)
    video = {"vidA_0_20": (10, 9), "vidB_10_26": (8, 8)}  # vid -> (CLIP clips, SlowFast clips)
    clip = {vid: rng.standard_normal((n, CLIP_D)).astype(np.float16) for vid, (n, _) in video.items()}
    slowfast = {vid: 3 * rng.standard_normal((m, SF_D)).astype(np.float32) for vid, (_, m) in video.items()}
    tokens = {q.qid: rng.standard_normal((3 + q.qid % 4, TOKEN_D)).astype(np.float32) for q in moments}
    for name, feats in (("clip_features", clip), ("slowfast_features", slowfast)):
        (tmp_path / name).mkdir()
        for vid, x in feats.items():
            np.savez(tmp_path / name / f"{vid}.npz", features=x)
    (tmp_path / "clip_text_features").mkdir()
    for qid, x in tokens.items():
        np.savez(tmp_path / "clip_text_features" / f"qid{qid}.npz", last_hidden_state=x, pooler_output=x[-1])
    # MESM: one HDF5 per backbone, top-level datasets named like the npz stems.
    for name, feats in (("clip_image.hdf5", clip), ("slowfast.hdf5", slowfast),
                        ("clip_text.hdf5", {f"qid{q}": x for q, x in tokens.items()})):
        with h5py.File(tmp_path / name, "w") as f:
            for key, x in feats.items():
                f.create_dataset(key, data=x)
    return {"dir": tmp_path, "moments": moments, "clip": clip, "slowfast": slowfast, "tokens": tokens}


def _l2(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _npz_sources(d):
    return [d / "slowfast_features", d / "clip_features"], d / "clip_text_features"


def test_npz_concatenates_normalised_parts_truncated_to_shorter(released):
    d = released["dir"]
    videos, text = _npz_sources(d)
    samples, skipped = load_released_moment_samples(d / "moments.jsonl", videos, text)
    assert skipped == [] and [s.qid for s in samples] == [1, 2, 7]
    a = samples[0]
    assert a.clip_feats.shape == (9, SF_D + CLIP_D) and a.clip_feats.dtype == torch.float32
    expected = np.concatenate([_l2(released["slowfast"]["vidA_0_20"])[:9], _l2(released["clip"]["vidA_0_20"])[:9]], 1)
    np.testing.assert_allclose(a.clip_feats.numpy(), expected, rtol=1e-5, atol=1e-6)
    norms = (a.clip_feats[:, :SF_D].norm(dim=1), a.clip_feats[:, SF_D:].norm(dim=1))
    assert all(torch.allclose(n, torch.ones(9)) for n in norms)
    assert samples[2].clip_feats.shape == (8, SF_D + CLIP_D)
    np.testing.assert_allclose(a.token_feats.numpy(), _l2(released["tokens"][1]), rtol=1e-5, atol=1e-6)
    assert a.clip_len == 2.0 and a.duration == 20.0 and a.windows == [[4.0, 8.0]]


def test_saliency_targets_follow_store_rules(released):
    d = released["dir"]
    samples, _ = load_released_moment_samples(d / "moments.jsonl", *_npz_sources(d))
    q1, q2, q7 = samples
    assert torch.equal(q1.saliency, saliency_target(9, 2.0, [[4.0, 8.0]], [2, 3], [[4, 4, 2], [0, 1, 2]]))
    assert q1.saliency[2].item() == pytest.approx(10 / 12) and q1.saliency[0] == 0
    assert q2.saliency.tolist()[:3] == [1.0, 1.0, 0.0]         # window [0, 3] touches clips 0 and 1
    assert q7.saliency.tolist() == [0.0] * 5 + [1.0] * 3


def test_raw_features_and_length_caps(released):
    d = released["dir"]
    cfg = ReleasedConfig(normalize_video=False, normalize_text=False, max_clips=5, max_query_tokens=2)
    samples, _ = load_released_moment_samples(d / "moments.jsonl", [d / "clip_features"],
                                              d / "clip_text_features", cfg)
    assert samples[0].clip_feats.shape == (5, CLIP_D)
    np.testing.assert_array_equal(samples[0].clip_feats.numpy(), released["clip"]["vidA_0_20"][:5].astype(np.float32))
    np.testing.assert_array_equal(samples[0].token_feats.numpy(), released["tokens"][1][:2])
    assert samples[0].saliency.shape == (5,)


def test_mesm_hdf5_matches_npz_and_mixes_with_it(released):
    d = released["dir"]
    from_npz, _ = load_released_moment_samples(d / "moments.jsonl", *_npz_sources(d))
    from_h5, skipped = load_released_moment_samples(d / "moments.jsonl", [d / "slowfast.hdf5", d / "clip_image.hdf5"],
                                                    d / "clip_text.hdf5")
    mixed, _ = load_released_moment_samples(d / "moments.jsonl", [d / "slowfast.hdf5", d / "clip_features"],
                                            d / "clip_text_features")
    assert skipped == []
    for a, b, c in zip(from_npz, from_h5, mixed):
        assert a.qid == b.qid == c.qid
        assert torch.equal(a.clip_feats, b.clip_feats) and torch.equal(a.clip_feats, c.clip_feats)
        assert torch.equal(a.token_feats, b.token_feats) and torch.equal(a.saliency, b.saliency)


def test_hdf5_group_layout_reads_the_key(released, tmp_path):
    d = released["dir"]
    with h5py.File(tmp_path / "grouped.h5", "w") as f:
        for vid, x in released["clip"].items():
            f.create_group(vid).create_dataset("features", data=x)
    samples, _ = load_released_moment_samples(d / "moments.jsonl", [tmp_path / "grouped.h5"], d / "clip_text.hdf5")
    np.testing.assert_allclose(samples[2].clip_feats.numpy(), _l2(released["clip"]["vidB_10_26"]), atol=1e-6)


def test_missing_files_are_skipped_and_listed(released):
    d = released["dir"]
    (d / "clip_features" / "vidB_10_26.npz").unlink()   # video missing in one of two sources
    (d / "clip_text_features" / "qid2.npz").unlink()
    with pytest.warns(UserWarning, match="skipped 2 of 3"):
        samples, skipped = load_released_moment_samples(d / "moments.jsonl", *_npz_sources(d))
    assert [s.qid for s in samples] == [1] and skipped == [2, 7]
    with h5py.File(d / "clip_image.hdf5", "a") as f:
        del f["vidA_0_20"]
    with pytest.warns(UserWarning, match="no dataset 'vidA_0_20'"):
        samples, skipped = load_released_moment_samples(d / "moments.jsonl", [d / "clip_image.hdf5"],
                                                        d / "clip_text.hdf5")
    assert skipped == [1, 2] and [s.qid for s in samples] == [7]


def test_wrong_key_names_file_and_keys(released):
    d = released["dir"]
    np.savez(d / "clip_features" / "vidA_0_20.npz", feats=released["clip"]["vidA_0_20"])
    with pytest.raises(ReleasedFeatureError, match=r"^no key 'features' \(keys: \['feats'\]\), .*vidA_0_20\.npz$"):
        load_released_moment_samples(d / "moments.jsonl", [d / "clip_features"], d / "clip_text_features")
    with pytest.raises(ReleasedFeatureError, match="no key 'pooler'"):
        load_released_moment_samples(d / "moments.jsonl", [d / "slowfast_features"], d / "clip_text_features",
                                     ReleasedConfig(text_key="pooler"))


def test_wrong_rank_is_an_error(released):
    d = released["dir"]
    with pytest.raises(ReleasedFeatureError, match=r"^expected a 2-D .* shape \(8,\).*per-token.*, .*qid1\.npz$"):
        load_released_moment_samples(d / "moments.jsonl", [d / "clip_features"], d / "clip_text_features",
                                     ReleasedConfig(text_key="pooler_output"))
    with h5py.File(d / "slowfast.hdf5", "a") as f:
        del f["vidA_0_20"]
        f.create_dataset("vidA_0_20", data=np.zeros((1, 9, SF_D)))
    with pytest.raises(ReleasedFeatureError, match=r"^expected a 2-D .*\(1, 9, 6\), .*slowfast\.hdf5\['vidA_0_20'\]$"):
        load_released_moment_samples(d / "moments.jsonl", [d / "slowfast.hdf5"], d / "clip_text.hdf5")


def test_bad_sources_and_inconsistent_dims(released):
    d = released["dir"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_released_moment_samples(d / "moments.jsonl", [d / "nowhere"], d / "clip_text_features")
    (d / "notes.txt").write_text("x")
    with pytest.raises(ReleasedFeatureError, match=r"^expected a folder of \.npz files or an HDF5.*, .*notes\.txt$"):
        load_released_moment_samples(d / "moments.jsonl", [d / "notes.txt"], d / "clip_text_features")
    (d / "broken.h5").write_bytes(b"not hdf5")
    with pytest.raises(ReleasedFeatureError, match=r"^not a readable HDF5.*, .*broken\.h5$"):
        load_released_moment_samples(d / "moments.jsonl", [d / "broken.h5"], d / "clip_text_features")
    (d / "clip_features" / "vidB_10_26.npz").write_bytes(b"garbage")
    with pytest.raises(ReleasedFeatureError, match=r"^not a readable npz.*, .*vidB_10_26\.npz$"):
        load_released_moment_samples(d / "moments.jsonl", [d / "clip_features"], d / "clip_text_features")
    np.savez(d / "clip_features" / "vidB_10_26.npz", features=np.ones((8, CLIP_D + 1)))
    with pytest.raises(ReleasedFeatureError, match=r"^video dimension 5 differs from 4.*, .*vidB_10_26\.npz$"):
        load_released_moment_samples(d / "moments.jsonl", [d / "clip_features"], d / "clip_text_features")
