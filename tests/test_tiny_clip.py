"""Tiny video CLIP training/caching and the extraction driver + CLI on a few generated videos."""
from __future__ import annotations

import json

import numpy as np
import pytest

from c2f_lib.data.schema import MomentQuery, VideoCaptions, write_captions, write_moments
from c2f_lib.features.extract import ExtractConfig, extract_dataset
from c2f_lib.features.store import FeatureStore, StoreError, read_failures
from c2f_lib.features.store_bundles import load_coarse_split, load_moment_samples
from c2f_lib.features.testing import write_numbered_video
from c2f_lib.features.tiny_clip import TinyClipConfig, checkpoint_path, load_tiny_clip
from c2f_lib.evaluation.feature_probes import zero_shot_metrics

TINY = TinyClipConfig(embed_dim=16, width=16, text_width=32, text_layers=1, steps=3, batch_size=4, warmup_steps=1,
                      frames_per_clip=2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    (root / "videos").mkdir()
    for v in range(3):
        write_numbered_video(root / "videos" / f"v{v}.mp4", num_frames=30 + 10 * v, fps=5)
    (root / "videos" / "broken.mp4").write_bytes(b"this is not a video")
    moments = [MomentQuery(qid=f"q{v}", query=f"event {v} happens", vid=f"v{v}", duration=6.0 + 2 * v,
                           relevant_windows=[[1.0, 4.0]]) for v in range(3)]
    moments.append(MomentQuery(qid="qb", query="broken event", vid="broken", duration=5.0,
                               relevant_windows=[[1.0, 2.0]]))
    write_moments(root / "moments_train.jsonl", moments[:2])
    write_moments(root / "moments_val.jsonl", moments[2:])
    write_captions(root / "captions_train.jsonl",
                   [VideoCaptions(vid=f"v{v}", captions=[f"video {v}", f"clip number {v}"]) for v in range(2)])
    write_captions(root / "captions_val.jsonl", [VideoCaptions(vid="v2", captions=["video 2"])])
    return root


def test_tiny_clip_trains_caches_and_reloads(dataset, tmp_path):
    backbone = load_tiny_clip(dataset, TINY, cache_dir=tmp_path)
    ckpt = checkpoint_path(dataset, TINY, tmp_path)
    assert ckpt.exists() and backbone.weights == ckpt.stem
    assert len(backbone.training_log["loss"]) == 3 and np.isfinite(backbone.training_log["loss"]).all()
    mtime = ckpt.stat().st_mtime_ns
    again = load_tiny_clip(dataset, TINY, cache_dir=tmp_path)  # cache hit: no retraining
    assert ckpt.stat().st_mtime_ns == mtime
    texts = ["video 0", "a red ball"]
    np.testing.assert_allclose(backbone.encode_sentences(texts), again.encode_sentences(texts), atol=1e-6)
    other = checkpoint_path(dataset, TinyClipConfig(**{**TINY.__dict__, "seed": 1}), tmp_path)
    assert other != ckpt  # the key covers the training config


def test_extract_store_loaders_and_failures(dataset, tmp_path):
    backbone = load_tiny_clip(dataset, TINY, cache_dir=tmp_path)
    out = tmp_path / "feats.h5"
    summary = extract_dataset(dataset, backbone, out, ExtractConfig(num_frames=4, clip_len=2.0, frames_per_clip=2))
    assert summary["encoded_videos"] == 3 and set(summary["failures"]) == {"broken"}
    assert "broken" in read_failures(out)
    with FeatureStore(out) as store:
        # a video backbone's coarse frames are N of its clips: v0 = 30 frames at 5 fps = 3 clips of 2 s,
        # picked [0, 0, 1, 2] (uniform over 3 clips), each indexed by its second frame
        assert store.frames("v0").shape == (4, 16)
        np.testing.assert_allclose(store.frames("v0"), store.clips("v0")[[0, 0, 1, 2]])
        assert store.frame_indices("v0").tolist() == [7, 7, 17, 27]
        assert store.clips("v2").shape == (5, 16)  # 50 frames at 5 fps = 10 s = 5 clips of 2 s
    split = load_coarse_split(out, dataset / "captions_train.jsonl")
    assert split.frames.shape == (2, 4, 16) and split.text_to_video.tolist() == [0, 0, 1, 1]
    assert set(zero_shot_metrics(split)) >= {"t2v_R@1", "t2v_R@1_chance"}
    with pytest.warns(UserWarning, match="broken"):
        samples = load_moment_samples(out, dataset / "moments_val.jsonl")
    assert [s.qid for s in samples] == ["q2"] and samples[0].token_feats.shape[1] == backbone.token_dim
    ids = backbone.tokenizer(["event 2 happens"])[0]            # the query's token ids, stored beside its features
    assert samples[0].token_ids.tolist() == ids[ids != 0].tolist() and len(samples[0].token_ids) == len(
        samples[0].token_feats)
    with FeatureStore(out) as store:
        assert store.meta.vocab_size == backbone.vocab_size == 49408
    again = extract_dataset(dataset, backbone, out, ExtractConfig(num_frames=4, clip_len=2.0, frames_per_clip=2))
    assert again["encoded_videos"] == 0 and again["encoded_texts"] == 0  # rerun skips finished work
    # the stage's own store, built with other weights (a retrained tiny CLIP): refused, or rebuilt on request
    retrained = load_tiny_clip(dataset, TinyClipConfig(**{**TINY.__dict__, "seed": 1}), cache_dir=tmp_path)
    cfg = ExtractConfig(num_frames=4, clip_len=2.0, frames_per_clip=2)
    with pytest.raises(StoreError, match="built with other settings"):
        extract_dataset(dataset, retrained, out, cfg)
    rebuilt = extract_dataset(dataset, retrained, out, cfg, replace_stale=True)
    assert rebuilt["encoded_videos"] == 3 and rebuilt["encoded_texts"] == rebuilt["texts"]
    with FeatureStore(out) as store:
        assert store.meta.weights == retrained.weights


def test_cli_rejects_a_store_made_with_other_settings(dataset, tmp_path, capsys):
    from c2f_lib.cli import main as c2f

    ckpt = checkpoint_path(dataset, TINY, tmp_path)
    load_tiny_clip(dataset, TINY, cache_dir=tmp_path)
    base = ["features", "--dataset-dir", str(dataset), "--backbone", f"tinyclip:{ckpt}", "--out",
            str(tmp_path / "s.h5"), "--device", "cpu", "--splits", "val", "--frames-per-clip", "2"]
    assert c2f(base + ["--num-frames", "3"]) == 0
    assert json.loads((tmp_path / "s.failures.json").read_text())[0]["vid"] == "broken"
    capsys.readouterr()
    assert c2f(base + ["--num-frames", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("c2f features: ") and "num_frames: stored 3 != requested 5" in err[0]


def test_clip_encoder_sees_motion_and_refuses_other_clip_lengths(dataset, tmp_path):
    """A clip and the same frames played backwards must differ (one frame cannot show a direction), and a
    store extracted with another number of frames per clip is refused with the flag to use."""
    from c2f_lib.features.backbones import BackboneError

    backbone = load_tiny_clip(dataset, TINY, cache_dir=tmp_path)
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 255, size=(1, 2, 64, 64, 3), dtype=np.uint8)
    forward, backward = backbone.encode_clips(clip), backbone.encode_clips(clip[:, ::-1].copy())
    assert not np.allclose(forward, backward, atol=1e-4)
    still = np.repeat(clip[:, :1], 2, axis=1)
    np.testing.assert_allclose(backbone.encode_frames(clip[:, 0]), backbone.encode_clips(still), atol=1e-5)
    with pytest.raises(BackboneError, match="--frames-per-clip 2"):
        backbone.encode_clips(np.repeat(clip, 2, axis=1))


def test_tiny_clip_learns_synthmoments(tmp_path):
    """On a few SynthMoments videos, 150 steps must put a sentence's clips above the rest of its video
    on the training videos (grounding AUC well above 50) and pull the contrastive loss under chance."""
    from dataclasses import replace

    import torch

    from c2f_lib.data.synth import SynthConfig, generate_synthmoments
    from c2f_lib.evaluation.feature_probes import grounding_auc
    from c2f_lib.features.tiny_clip import TinyClipBackbone, train_tiny_clip

    generate_synthmoments(tmp_path, SynthConfig(seed=0, n_train_videos=12, n_val_videos=1, n_test_videos=1,
                                                n_test_cg_videos=1, min_duration=12.0, max_duration=16.0))
    cfg = replace(TinyClipConfig(), width=32, steps=150, batch_size=16, warmup_steps=10)
    model, log = train_tiny_clip(tmp_path, cfg)
    assert np.mean(log["nce"][-10:]) < 0.7 * np.log(2 * cfg.batch_size), np.mean(log["nce"][-10:])
    backbone = TinyClipBackbone(model)
    out = tmp_path / "s.h5"
    extract_dataset(tmp_path, backbone, out, ExtractConfig(num_frames=4, clip_len=2.0, frames_per_clip=4),
                    splits=["train"])
    samples = load_moment_samples(out, tmp_path / "moments_train.jsonl")
    with FeatureStore(out) as store:
        clips = {s.vid: torch.from_numpy(store.clips(s.vid)).float() for s in samples}
        sentences = torch.stack([torch.from_numpy(store.sentence(s.query)).float() for s in samples])
    assert grounding_auc(samples, sentences, clips) > 70


def test_extract_under_bf16_autocast_is_close_to_fp32(dataset, tmp_path):
    import torch

    backbone = load_tiny_clip(dataset, TINY, cache_dir=tmp_path)
    seen = set()
    for module in backbone.model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)):
            module.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype) and None)
    stores = {}
    for amp in (False, "bf16"):
        seen.clear()
        stores[amp] = tmp_path / f"feats_{amp}.h5"
        extract_dataset(dataset, backbone, stores[amp], ExtractConfig(num_frames=4, clip_len=2.0, frames_per_clip=2,
                                                                      amp=amp))
        assert torch.bfloat16 in seen if amp else seen == {torch.float32}
    with FeatureStore(stores[False]) as fp32, FeatureStore(stores["bf16"]) as bf16:
        for vid in ("v0", "v1", "v2"):
            a, b = torch.as_tensor(fp32.clips(vid)).float(), torch.as_tensor(bf16.clips(vid)).float()
            assert a.shape == b.shape and torch.nn.functional.cosine_similarity(a, b, dim=-1).min() > 0.99
            assert not torch.equal(a, b)     # bf16 did run: the features are close, not identical
        a, b = (torch.as_tensor(s.sentence("event 0 happens")).float() for s in (fp32, bf16))
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99


def test_sharded_extraction_resumes_and_merges_into_the_unsharded_store(dataset, tmp_path, capsys):
    from c2f_lib.cli import main as c2f
    from c2f_lib.features.extract import dataset_annotations, merge_shards, shard_path

    ckpt = checkpoint_path(dataset, TINY, tmp_path)
    load_tiny_clip(dataset, TINY, cache_dir=tmp_path)
    out = tmp_path / "s.h5"
    base = ["features", "--dataset-dir", str(dataset), "--backbone", f"tinyclip:{ckpt}", "--out", str(out),
            "--device", "cpu", "--frames-per-clip", "2", "--num-frames", "4"]
    assert c2f(base) == 0                                                   # the unsharded reference
    whole = tmp_path / "whole.h5"
    out.rename(whole)
    assert c2f(base + ["--shard", "0/2"]) == 0
    with pytest.raises(FileNotFoundError, match=r"^shard missing.*, .*shard1of2.h5$"):
        merge_shards(dataset, out, 2)
    assert c2f(base + ["--shard", "1/2"]) == 0
    capsys.readouterr()
    assert c2f(base + ["--shard", "1/2"]) == 0                              # resumed: nothing left to do
    assert "(0 new)" in capsys.readouterr().out
    vids, texts = dataset_annotations(dataset)
    with FeatureStore(shard_path(out, 0, 2)) as zero, FeatureStore(shard_path(out, 1, 2)) as one:
        assert not set(zero.video_ids()) & set(one.video_ids())           # each video in one shard only
        assert set(zero.video_ids()) | set(one.video_ids()) == set(vids) - {"broken"}
    assert c2f(base + ["--merge", "2"]) == 0
    assert set(read_failures(out)) == {"broken"}
    with FeatureStore(whole) as ref, FeatureStore(out) as merged:
        assert merged.video_ids() == ref.video_ids() and merged.meta == ref.meta
        for vid in ref.video_ids():
            np.testing.assert_array_equal(merged.clips(vid), ref.clips(vid))
            np.testing.assert_array_equal(merged.frame_indices(vid), ref.frame_indices(vid))
            assert merged.video_attrs(vid)["duration"] == ref.video_attrs(vid)["duration"]
        for text in texts:
            np.testing.assert_array_equal(merged.sentence(text), ref.sentence(text))
            np.testing.assert_array_equal(merged.tokens(text), ref.tokens(text))
            np.testing.assert_array_equal(merged.token_ids(text), ref.token_ids(text))
    with pytest.raises(SystemExit) as usage:                                # I must be < N
        c2f(base + ["--shard", "2/2"])
    assert usage.value.code == 2 and "expected I/N" in capsys.readouterr().err
