"""The generic coarse trainer: learning, validation selection, resume, DDP equivalence, end-to-end."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from c2f_lib.features.types import CoarseSplit
from c2f_lib.models.meanpool import MeanPool, MeanPoolConfig
from c2f_lib.models.registry import load_model
from c2f_lib.models.tmass import TMASS, TMASSConfig
from c2f_lib.models.xpool import XPool, XPoolConfig
from c2f_lib.training import coarse
from c2f_lib.training.coarse import (CoarseTrainConfig, EndToEndRetriever, FrameSplit, evaluate_split,
                                     train_coarse)
from c2f_lib.training.schedule import param_groups, warmup_cosine

D, NF = 16, 4


def toy_split(n_videos, captions_per_video, seed, noise=0.8):
    """Captions are noisy means of a random subset of their video's frames: learnable by pooling."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(n_videos, NF, D, generator=g)
    t2v = torch.arange(n_videos).repeat_interleave(captions_per_video)
    pick = torch.randint(0, NF, (len(t2v),), generator=g)
    text = frames[t2v, pick] + noise * torch.randn(len(t2v), D, generator=g)
    return CoarseSplit([f"v{i}" for i in range(n_videos)], frames, [f"c{i}" for i in range(len(t2v))],
                       text, t2v)


CFG = CoarseTrainConfig(epochs=3, batch_size=8, lr=3e-3, weight_decay=0.0, eval_every=1, seed=0,
                        show_progress=False, eval_chunk_size=5)


def test_schedule_warmup_then_cosine():
    values = [warmup_cosine(s, 10, 0.2) for s in range(10)]
    assert values[:2] == [0.5, 1.0] and values[2] == 1.0 and values[-1] < 0.05
    assert all(a >= b for a, b in zip(values[1:], values[2:]))


def test_training_improves_and_selects_on_validation(tmp_path):
    train, val = toy_split(24, 2, 0), toy_split(10, 1, 1)
    torch.manual_seed(0)
    model = XPool(XPoolConfig(dim=D, dropout=0.0))
    before = evaluate_split(model, val, CFG)
    result = train_coarse(model, train, val, CFG, tmp_path)
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    best = max(h["val_t2v_R@1"] for h in result.history)
    assert result.best_metrics["t2v_R@1"] == best
    assert result.best_metrics["t2v_MnR"] <= before["t2v_MnR"]
    loaded, extra = load_model(result.best_path)
    assert extra["epoch"] == result.best_epoch and extra["val_metrics"] == result.best_metrics
    assert evaluate_split(loaded, val, CFG) == result.best_metrics            # model holds the best weights
    assert model.logit_scale.item() <= CFG.logit_scale_max + 1e-6
    again = train_coarse(XPool(XPoolConfig(dim=D, dropout=0.0)), train, val, CFG, tmp_path)
    assert again.resumed_from_epoch == 3 and again.best_metrics == result.best_metrics  # finished: no retrain


def test_resume_continues_exactly(tmp_path, monkeypatch):
    train, val = toy_split(16, 2, 0), toy_split(6, 1, 1)
    cfg = dataclasses.replace(CFG, epochs=3)
    make = lambda: TMASS(TMASSConfig(dim=D, num_frames=NF, dropout=0.3, num_trials=3))  # noqa: E731
    torch.manual_seed(0)
    train_coarse(make(), train, val, cfg, tmp_path / "full")

    real_eval, calls = coarse.evaluate_split, []

    def crash_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(coarse, "evaluate_split", crash_on_second)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train_coarse(make(), train, val, cfg, tmp_path / "cut")
    monkeypatch.setattr(coarse, "evaluate_split", real_eval)
    torch.manual_seed(123)  # a different fresh init is overwritten by the checkpoint
    result = train_coarse(make(), train, val, cfg, tmp_path / "cut")
    assert result.resumed_from_epoch == 1
    full = torch.load(tmp_path / "full" / "last.pt", weights_only=False)
    cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)
    for k, v in full["model"].items():
        assert torch.equal(v, cut["model"][k]), k
    assert full["history"] == cut["history"]


def _ddp_worker(rank, world, init_file, out_dir, train, val, cfg):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = TMASS(TMASSConfig(dim=D, num_frames=NF, dropout=0.0, support_weight=0.5, num_trials=3))
        result = train_coarse(model, train, val, cfg, out_dir)
        if rank == 0:
            torch.save({"history": result.history}, f"{out_dir}/result.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_matches_single_process(tmp_path):
    train, val = toy_split(14, 2, 0), toy_split(6, 1, 1)   # 28 captions, batches 8,8,8,4
    cfg = dataclasses.replace(CFG, epochs=2)
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "ddp"), train, val, cfg),
             nprocs=2, join=True)
    torch.manual_seed(0)
    single = TMASS(TMASSConfig(dim=D, num_frames=NF, dropout=0.0, support_weight=0.5, num_trials=3))
    result = train_coarse(single, train, val, cfg, tmp_path / "single")
    ddp_last = torch.load(tmp_path / "ddp" / "last.pt", weights_only=False)
    single_last = torch.load(tmp_path / "single" / "last.pt", weights_only=False)
    for k, v in single_last["model"].items():
        assert torch.allclose(v, ddp_last["model"][k], atol=2e-5), k
    ddp_history = torch.load(tmp_path / "ddp" / "result.pt", weights_only=False)["history"]
    for a, b in zip(result.history, ddp_history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


class TinyFrameEncoder(nn.Module):
    """frames [B, F, 3, H, W] -> [B, F, D]: a stand-in for a CLIP image tower."""

    def __init__(self, pixels):
        super().__init__()
        self.proj = nn.Linear(pixels, D)

    def forward(self, frames):
        return self.proj(frames.flatten(2))


class TinyTextEncoder(nn.Module):
    def __init__(self, vocab=20):
        super().__init__()
        self.embed = nn.Embedding(vocab, D)

    def forward(self, tokens):
        return self.embed(tokens).mean(1)


def test_end_to_end_mode_trains_backbone_with_its_own_lr(tmp_path):
    g = torch.Generator().manual_seed(0)
    V, T = 6, 12
    split = FrameSplit([f"v{i}" for i in range(V)], torch.randn(V, NF, 3, 4, 4, generator=g),
                       [f"c{i}" for i in range(T)], torch.randint(0, 20, (T, 5), generator=g),
                       torch.arange(V).repeat(2))
    torch.manual_seed(0)
    model = EndToEndRetriever(TinyFrameEncoder(48), TinyTextEncoder(), XPool(XPoolConfig(dim=D)))
    groups = {grp["name"]: grp for grp in param_groups(model, lr=1e-3, backbone_lr=1e-5)}
    assert groups["backbone"]["lr"] == 1e-5 and len(groups["backbone"]["params"]) == 3
    before = model.backbone.proj.weight.detach().clone()
    cfg = dataclasses.replace(CFG, epochs=1, batch_size=12, clip_lr=1e-2, warmup_ratio=0.0)
    result = train_coarse(model, split, split, cfg, tmp_path)
    assert not torch.equal(before, model.backbone.proj.weight)
    assert set(result.best_metrics) >= {"t2v_R@1", "v2t_R@1"}
    assert model.score(split.text_tokens, split.frames).shape == (T, V)


def test_meanpool_trains_with_the_same_loop(tmp_path):
    train, val = toy_split(12, 2, 0), toy_split(6, 1, 1)
    result = train_coarse(MeanPool(MeanPoolConfig(dim=D)), train, val,
                          dataclasses.replace(CFG, epochs=1), tmp_path)
    assert result.best_epoch == 0


@pytest.mark.slow
def test_notebook_03_runs_on_a_random_store(tmp_path):
    papermill = pytest.importorskip("papermill")
    from c2f_lib.data.schema import VideoCaptions, write_captions
    from c2f_lib.features.testing import make_random_store
    from c2f_lib.paths import RunPaths

    paths, records = RunPaths(tmp_path / "run"), []
    for split, n in {"train": 16, "val": 4, "test": 4, "test_cg": 4}.items():
        split_records = [VideoCaptions(vid=f"{split}{v}", captions=[f"{split} {v} a", f"{split} {v} b"])
                         for v in range(n)]
        write_captions(paths.captions_file("synthmoments", split), split_records)
        records += split_records
    make_random_store(paths.feature_store("synthmoments", "tinyclip"), captions_records=records,
                      dim=16, num_frames=4)
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "03_coarse_retrieval.ipynb"
    papermill.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"), cwd=str(notebook.parent),
                               parameters={"run_dir": str(paths.run_dir), "n_seeds": 1, "epochs": 1,
                                           "num_trials": 3}, kernel_name="python3", progress_bar=False)
    metrics = json.loads(paths.metrics_file("03_coarse").read_text())
    assert set(metrics["t2v_R@1"]["test"]["correct"]) == {"meanpool", "xpool", "tmass"}
    for method in ("meanpool", "xpool", "tmass"):
        assert (paths.checkpoints("03_coarse") / f"{method}_seed0.pt").exists()


def test_train_or_load_coarse_retrains_on_other_features_with_the_same_ids(tmp_path, capsys):
    """A re-extracted store keeps video ids and captions; a checkpoint trained on the old features is not reused."""
    from c2f_lib.training.coarse import train_or_load_coarse

    train, val = toy_split(12, 2, 0), toy_split(6, 1, 1)
    cfg, path = dataclasses.replace(CFG, epochs=1), tmp_path / "xpool.pt"
    _, first = train_or_load_coarse("xpool", XPoolConfig(dim=D), train, val, cfg, path)
    _, again = train_or_load_coarse("xpool", XPoolConfig(dim=D), train, val, cfg, path)
    assert again["made_from"] == first["made_from"]
    moved = dataclasses.replace(train, frames=train.frames + 0.5)
    _, refit = train_or_load_coarse("xpool", XPoolConfig(dim=D), moved, val, cfg, path)
    assert refit["made_from"] != first["made_from"]
    assert "made with other settings or data" in capsys.readouterr().out
