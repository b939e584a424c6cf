"""End-to-end (CLIP fine-tuned) coarse training on raw videos: lazy frames, CLIP towers, the e2e recipes on a
miniature MSR-VTT tree with a random tiny open_clip (no download)."""
from __future__ import annotations

import json

import pytest
import torch

from c2f_lib.features.decode import sample_video
from c2f_lib.features.testing import (tiny_open_clip, write_didemo_release, write_msrvtt_release,
                                     write_video_folder)
from c2f_lib.pipeline.recipes import (RecipeError, export_annotations, load_coarse_splits, load_recipe,
                                     recipe_configs, run_recipe)
from c2f_lib.training import end_to_end
from c2f_lib.training.coarse import EndToEndRetriever, FrameSplit
from c2f_lib.training.end_to_end import (TEST_BACKBONE, ClipFrameEncoder, ClipTextEncoder, MissingVideoError,
                                         VideoFolderError, VideoFrames, load_clip, load_frame_split)
from conftest import REPO_ROOT

RECIPES = REPO_ROOT / "configs" / "repro"
TINY = [f"features.backbone={TEST_BACKBONE}", "features.num_frames=4", "features.decode_threads=2",
        "train.epochs=1", "train.batch_size=8", "splits.val.holdout_videos=2", "eval.chunk_size=4"]


def _msrvtt_tree(tmp_path, n_train=8, n_test=4):
    """Annotations under datasets/msrvtt and one numbered mp4 per video under features/MSRVTT/videos/all."""
    captions = write_msrvtt_release(tmp_path / "datasets" / "msrvtt", n_train=n_train, n_test=n_test,
                                    captions_per_video=2)
    write_video_folder(tmp_path / "features" / "MSRVTT" / "videos" / "all", [c.vid for c in captions])
    return tmp_path / "datasets", tmp_path / "features"


def test_lazy_frames_decode_only_what_is_asked_and_match_the_eager_decode(tmp_path):
    folder = write_video_folder(tmp_path / "videos", [f"v{i}" for i in range(4)], num_frames=6)
    paths = sorted(folder.glob("*.mp4"))
    backbone = tiny_open_clip()
    frames = VideoFrames(paths, 4, backbone.image_size, backbone.mean, backbone.std, cache_videos=2)
    assert frames.shape == (4, 4, 3, 64, 64) and len(frames) == 4 and frames.to("cuda") is frames
    assert frames.decoded == 0
    batch = frames[torch.tensor([2, 0, 2])]                                    # [3, F, 3, S, S]
    assert batch.shape == (3, 4, 3, 64, 64) and frames.decoded == 2           # each distinct video once
    torch.testing.assert_close(batch[0], batch[2])
    for row, index in ((0, 2), (1, 0)):    # the extractor's decode + preprocessing of the same video
        eager = backbone.preprocess(sample_video(paths[index], 4, short_side=backbone.image_size).frames)
        torch.testing.assert_close(batch[row], eager)
    assert not torch.equal(batch[0], batch[1])
    assert frames[0].shape == (4, 3, 64, 64) and frames.decoded == 2          # cached
    held = frames.subset([2, 3])                                               # lazy: nothing decoded
    assert held.shape[0] == 2 and held.decoded == 0
    torch.testing.assert_close(held[0:1][0], batch[0])
    assert held.decoded == 0 and frames[1:3].shape == (2, 4, 3, 64, 64)       # the shared cache had video 2


def test_clip_towers_are_open_clips_encoders_and_train_at_clip_lr():
    from c2f_lib.models.xpool import XPool, XPoolConfig
    from c2f_lib.training.schedule import param_groups

    model = tiny_open_clip().model.requires_grad_(True)       # the backbone wrapper froze it
    frames = torch.randn(2, 3, 3, 64, 64)
    tokens = torch.randint(1, 100, (3, model.context_length))
    tokens[:, 5] = model.vocab_size - 1                                        # an EOT token
    torch.testing.assert_close(ClipFrameEncoder(model)(frames), model.encode_image(frames.flatten(0, 1)).reshape(2, 3, -1))
    torch.testing.assert_close(ClipTextEncoder(model)(tokens), model.encode_text(tokens))
    retriever = EndToEndRetriever(ClipFrameEncoder(model), ClipTextEncoder(model), XPool(XPoolConfig(dim=64)))
    keys = list(retriever.state_dict())
    assert not any(k.startswith("text_encoder.visual") for k in keys) and "backbone.visual.conv1.weight" in keys
    groups = {g["name"]: g for g in param_groups(retriever, lr=3e-5, backbone_lr=1e-6)}
    n_clip = sum(1 for p in model.parameters() if p.requires_grad) - 1        # all but CLIP's own logit_scale
    assert len(groups["backbone"]["params"]) == n_clip and groups["backbone"]["lr"] == 1e-6


def test_frame_split_errors_name_the_folder(tmp_path):
    captions = write_msrvtt_release(tmp_path / "ann", n_train=3, n_test=1)
    from c2f_lib.data.schema import write_captions

    jsonl = tmp_path / "captions_train.jsonl"
    write_captions(jsonl, captions[:3])
    clip = load_clip(TEST_BACKBONE)
    args = (clip.tokenizer, 4, clip.image_size, clip.mean, clip.std)
    with pytest.raises(VideoFolderError, match="video folder not found.*nowhere"):
        load_frame_split(jsonl, tmp_path / "nowhere", *args)
    folder = write_video_folder(tmp_path / "videos", [c.vid for c in captions[:2]])
    with pytest.raises(MissingVideoError, match=r"1 of 3 videos of captions_train.jsonl.*video2.*videos"):
        load_frame_split(jsonl, folder, *args)
    write_video_folder(folder, ["video2"])
    split = load_frame_split(jsonl, folder, *args)
    assert isinstance(split.frames, VideoFrames) and split.text_tokens.shape == (9, 32)
    assert split.text_to_video.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and split.frames.decoded == 0


def test_recipe_splits_hold_out_train_videos_lazily(tmp_path):
    datasets, features = _msrvtt_tree(tmp_path)
    recipe = load_recipe(RECIPES / "msrvtt_xpool_e2e.yaml", TINY)
    export_annotations(recipe, tmp_path / "run", datasets)
    fit, select, evals = load_coarse_splits(recipe, tmp_path / "run", features, load_clip(TEST_BACKBONE))
    assert all(isinstance(s, FrameSplit) for s in (fit, select, evals["test"]))
    assert select.video_ids == ["video6", "video7"] and len(fit.video_ids) == 6 and len(select.texts) == 4
    assert select.text_tokens.shape[0] == 4 and select.text_to_video.tolist() == [0, 0, 1, 1]
    assert fit.frames.shape == (6, 4, 3, 64, 64) and fit.frames.decoded == select.frames.decoded == 0
    with pytest.raises(RecipeError, match="end_to_end is for stage coarse"):
        recipe_configs(load_recipe(RECIPES / "msrvtt_textdiff.yaml", ["features.mode=end_to_end"]), "cpu")
    with pytest.raises(RecipeError, match="needs features.backbone"):
        recipe_configs(load_recipe(RECIPES / "msrvtt_xpool.yaml", ["features.mode=end_to_end"]), "cpu")
    with pytest.raises(RecipeError, match="features.mode must be one of"):
        recipe_configs(load_recipe(RECIPES / "msrvtt_xpool.yaml", ["features.mode=frozen"]), "cpu")


def test_xpool_e2e_recipe_fine_tunes_clip_and_reuses_its_checkpoint(tmp_path, monkeypatch):
    datasets, features = _msrvtt_tree(tmp_path)
    sources = []

    def recording_load_clip(spec):
        sources.append(load_clip(spec))
        return sources[-1]

    monkeypatch.setattr(end_to_end, "load_clip", recording_load_clip)
    run = tmp_path / "run"
    summary = run_recipe(RECIPES / "msrvtt_xpool_e2e.yaml", run, "cpu", features, datasets, TINY)
    test = summary["metrics"]["xpool"]["test"]
    assert 0 <= test["t2v_R@1"] <= 100 and "reference/t2v_R@1" in test
    assert summary["vs_published"]["xpool"]["t2v_R@1"]["published"] == 46.9
    path = run / "checkpoints" / "repro" / "msrvtt_xpool_e2e" / "xpool.pt"
    ckpt = torch.load(path, weights_only=False)
    assert ckpt["model"] == "end_to_end" and ckpt["head"] == "xpool" and ckpt["config"]["dim"] == 64
    assert ckpt["extra"]["train_config"]["clip_lr"] == 1e-6 and ckpt["extra"]["train_config"]["lr"] == 3e-5
    pristine = sources[0].model
    for key, original in (("backbone.visual.conv1.weight", pristine.visual.conv1.weight),
                          ("text_encoder.token_embedding.weight", pristine.token_embedding.weight)):
        assert not torch.equal(ckpt["state_dict"][key], original), key             # CLIP itself was trained
    stamp = path.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although nothing changed")

    monkeypatch.setattr("c2f_lib.training.coarse.train_coarse", no_training)
    again = run_recipe(RECIPES / "msrvtt_xpool_e2e.yaml", run, "cpu", features, datasets, TINY)
    assert path.stat().st_mtime_ns == stamp and again["metrics"] == summary["metrics"]
    written = json.loads((run / "metrics" / "repro_msrvtt_xpool_e2e.json").read_text())
    assert written["metrics"] == summary["metrics"]


def test_tmass_e2e_recipe_trains_under_bf16_autocast_on_cpu(tmp_path):
    datasets, features = _msrvtt_tree(tmp_path, n_train=6, n_test=3)
    summary = run_recipe(RECIPES / "msrvtt_tmass_e2e.yaml", tmp_path / "run", "cpu", features, datasets,
                         TINY + ["train.amp=auto", "models.tmass.config.num_trials=2",
                                 "eval.protocols=[correct]"])
    assert 0 <= summary["metrics"]["tmass"]["test"]["t2v_R@1"] <= 100
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "repro" / "msrvtt_tmass_e2e" / "tmass.pt", weights_only=False)
    history = ckpt["extra"]["history"]
    assert ckpt["extra"]["train_config"]["amp"] == "auto" and len(history) == 1
    assert torch.isfinite(torch.tensor(history[0]["train_loss"]))


def test_didemo_tmass_e2e_recipe_reads_paragraphs_and_videos_of_any_extension(tmp_path):
    """DiDeMo as released: paragraph csvs, and videos named <vid>.mp4 / .mpg / .MOV / .m4v side by side."""
    splits = {"train": 6, "val": 2, "test": 3}
    captions = write_didemo_release(tmp_path / "datasets" / "didemo", splits)
    vids = [c.vid for split in splits for c in captions[split]]
    write_video_folder(tmp_path / "features" / "DiDeMo" / "videos", vids, extensions=(".mp4", ".mpg", ".MOV", ".m4v"))
    tiny = [o for o in TINY if not o.startswith("splits.val")]
    summary = run_recipe(RECIPES / "didemo_tmass_e2e.yaml", tmp_path / "run", "cpu", tmp_path / "features",
                         tmp_path / "datasets", tiny + ["models.tmass.config.num_trials=2"])
    test = summary["metrics"]["tmass"]["test"]
    assert 0 <= test["t2v_R@1"] <= 100 and summary["vs_published"]["tmass"]["t2v_R@1"]["published"] == 50.9
    exported = (tmp_path / "run" / "data" / "didemo" / "captions_test.jsonl").read_text()
    assert "a person walks in video 8. then the camera turns" in exported      # one paragraph per video
