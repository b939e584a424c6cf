"""configs/repro recipes: each builds valid configs; the QVHighlights fine recipe and the MSR-VTT coarse
recipe run end to end (tiny overrides) on miniature released feature trees built here."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from c2f_lib.features.released import load_released_moment_samples
from c2f_lib.features.testing import (make_random_store, write_msrvtt_release, write_qvhighlights_release,
                                      write_released_tree)
from c2f_lib.pipeline.recipes import RecipeError, load_fine_splits, load_recipe, recipe_configs, run_recipe
from conftest import REPO_ROOT

RECIPES = sorted((REPO_ROOT / "configs" / "repro").glob("*.yaml"))
FINE_METRICS = {"MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP", "mIoU"}
COARSE_METRICS = {"t2v_R@1", "t2v_R@5", "t2v_R@10"}
# (noclip_lr, transformer_dropout) of the T-MASS README's commands, per dataset
PUBLISHED_E2E = {"msrvtt": (3e-5, 0.3), "didemo": (1e-5, 0.4)}
TINY_FINE = ["train.epochs=1", "train.batch_size=4", "models.qd_detr.config.hidden_dim=32",
             "models.qd_detr.config.n_heads=4", "models.qd_detr.config.ffn_dim=64"]


def test_the_recipes_cover_the_issue():
    names = {p.stem for p in RECIPES}
    assert {"qvhighlights_moment_detr", "qvhighlights_qd_detr", "qvhighlights_mesm", "charades_sta_qd_detr",
            "charades_sta_mesm", "charades_cg_mesm", "tacos_mesm", "tacos_cg_mesm", "msrvtt_xpool", "msrvtt_tmass",
            "msrvtt_tmass_b16", "msrvtt_textdiff", "tacos_cg_coarse", "tacos_cg_vcmr",
            "msrvtt_xpool_e2e", "msrvtt_tmass_e2e", "msrvtt_tmass_b16_e2e", "didemo_tmass_e2e"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_builds_valid_configs_and_states_its_sources(path):
    recipe = load_recipe(path)
    assert recipe["recipe"] == path.stem
    if recipe["stage"] == "vcmr":    # its parts are recipes checked here on their own
        assert set(recipe_configs(recipe, "cpu")) == {f"{part}.{name}" for part in ("coarse", "fine")
                                                       for name in recipe[f"_{part}"]["models"]}
        assert recipe["search"]["k_videos"] >= 1 and "estimate" in recipe["gpu"]["time"] and recipe["downloads"]
        return
    dims = {"video_dim": 2816, "text_dim": 512} if recipe["stage"] == "fine" else {"dim": 512, "num_frames": 12}
    built = recipe_configs(recipe, "cpu", dims)
    assert set(built) == set(recipe["models"])
    for name, target in recipe["targets"].items():
        assert target["source"] and set(target["metrics"]) <= (FINE_METRICS if recipe["stage"] == "fine"
                                                                 else COARSE_METRICS), name
    assert "estimate" in recipe["gpu"]["time"] and recipe["downloads"]
    if recipe["stage"] == "fine":
        for _, config, train in built.values():
            assert config["video_dim"] == 2816 and train.epochs == 200 and train.device == "cpu"
    if recipe["features"].get("mode") == "end_to_end":     # the papers' fine-tuning: CLIP at clip_lr, 12 frames
        assert recipe["features"]["num_frames"] == 12 and recipe["features"]["backbone"].endswith(":openai")
        lr, dropout = PUBLISHED_E2E[recipe["dataset"]]
        for _, config, train in built.values():
            assert (train.clip_lr, train.lr, train.epochs, train.batch_size) == (1e-6, lr, 5, 32)
            assert config.dim == 512 and config.dropout == dropout


def test_published_targets_are_the_issues_numbers():
    def metrics(stem, model):
        return load_recipe(REPO_ROOT / "configs" / "repro" / f"{stem}.yaml")["targets"][model]

    assert metrics("qvhighlights_qd_detr", "qd_detr")["metrics"] == {
        "MR-full-R1@0.5": 62.9, "MR-full-R1@0.7": 46.8, "MR-full-mAP": 41.2}
    assert metrics("qvhighlights_qd_detr", "qd_detr")["test"]["MR-full-mAP"] == 39.9
    assert metrics("qvhighlights_moment_detr", "moment_detr")["test"] == {
        "MR-full-R1@0.5": 52.9, "MR-full-R1@0.7": 33.0, "MR-full-mAP": 30.7}
    assert metrics("charades_sta_qd_detr", "qd_detr")["metrics"] == {"MR-full-R1@0.5": 57.3, "MR-full-R1@0.7": 32.6}
    assert metrics("tacos_mesm", "qd_detr")["metrics"] == {"MR-full-R1@0.5": 36.8, "MR-full-R1@0.7": 21.1}
    assert metrics("msrvtt_xpool", "xpool")["metrics"]["t2v_R@1"] == 46.9
    assert metrics("msrvtt_tmass", "tmass")["metrics"]["t2v_R@1"] == 50.2
    assert metrics("msrvtt_tmass_b16", "tmass")["metrics"]["t2v_R@1"] == 52.7
    assert metrics("msrvtt_xpool_e2e", "xpool")["metrics"] == {"t2v_R@1": 46.9, "t2v_R@5": 72.8, "t2v_R@10": 82.2}
    assert metrics("msrvtt_tmass_e2e", "tmass")["metrics"]["t2v_R@1"] == 50.2
    assert metrics("msrvtt_tmass_b16_e2e", "tmass")["metrics"]["t2v_R@1"] == 52.7


def test_overrides_and_errors(tmp_path):
    path = REPO_ROOT / "configs" / "repro" / "qvhighlights_qd_detr.yaml"
    recipe = load_recipe(path, ["train.epochs=3", "models.qd_detr.config.hidden_dim=64"])
    assert recipe["train"]["epochs"] == 3 and recipe["models"]["qd_detr"]["config"]["hidden_dim"] == 64
    with pytest.raises(RecipeError, match="key.sub=value"):
        load_recipe(path, ["train.epochs"])
    with pytest.raises(TypeError):    # a misspelt field fails before any data is read
        recipe_configs(load_recipe(path, ["models.qd_detr.config.hiden_dim=64"]), "cpu")
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("stage: fine", "stage: medium"))
    with pytest.raises(RecipeError, match="stage"):
        load_recipe(bad)


def _qvh_tree(tmp_path: Path) -> tuple[Path, Path]:
    datasets = tmp_path / "datasets"
    rows = write_qvhighlights_release(datasets / "qvhighlights", {"train": 8, "val": 4, "test": 2})
    features = write_released_tree(tmp_path / "features", rows["train"] + rows["val"])
    return datasets, features


def test_released_tree_layouts_read_the_same(tmp_path):
    npz_root, h5_root = tmp_path / "npz", tmp_path / "h5"
    rows = write_qvhighlights_release(tmp_path / "ann", {"val": 3})["val"]
    write_released_tree(npz_root, rows, layout="npz")
    write_released_tree(h5_root, rows, layout="h5")
    moments = tmp_path / "moments.jsonl"
    moments.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, _ = load_released_moment_samples(moments, [npz_root / "slowfast_features", npz_root / "clip_features"],
                                        npz_root / "clip_text_features")
    b, _ = load_released_moment_samples(moments, [h5_root / "slowfast_features.hdf5", h5_root / "clip_features.hdf5"],
                                        h5_root / "clip_text_features.hdf5")
    assert len(a) == len(rows) == len(b) and a[0].clip_feats.shape[1] == 24 + 16
    for x, y in zip(a, b):
        torch.testing.assert_close(x.clip_feats, y.clip_feats)
        torch.testing.assert_close(x.token_feats, y.token_feats)
    assert np.isclose(a[0].clip_feats[:, :24].norm(dim=1), 1).all()   # each source L2-normalised per clip


def test_qvhighlights_qd_detr_recipe_end_to_end(tmp_path, capsys):
    datasets, features = _qvh_tree(tmp_path)
    run = tmp_path / "run"
    summary = run_recipe(REPO_ROOT / "configs" / "repro" / "qvhighlights_qd_detr.yaml", run, "cpu", features,
                         datasets, TINY_FINE)
    assert (run / "data" / "qvhighlights" / "moments_train.jsonl").exists()
    written = json.loads((run / "metrics" / "repro_qvhighlights_qd_detr.json").read_text())
    assert written["metrics"] == summary["metrics"]
    val = summary["metrics"]["qd_detr"]["val"]
    assert 0 <= val["MR-full-R1@0.5"] <= 100 and 0 <= val["MR-full-mAP"] <= 100
    row = summary["vs_published"]["qd_detr"]["MR-full-R1@0.5"]
    assert row["published"] == 62.9 and row["gap"] == pytest.approx(val["MR-full-R1@0.5"] - 62.9, abs=0.01)
    ckpt = torch.load(run / "checkpoints" / "repro" / "qvhighlights_qd_detr" / "qd_detr.pt", weights_only=False)
    assert ckpt["config"]["video_dim"] == 40 and ckpt["config"]["hidden_dim"] == 32   # SlowFast 24 + CLIP 16
    # the CLI, run again: reuses the checkpoint and the exported annotations, prints ours beside published
    from c2f_lib.cli import main as c2f

    stamp = (run / "checkpoints" / "repro" / "qvhighlights_qd_detr" / "qd_detr.pt").stat().st_mtime_ns
    args = ["repro", "--recipe", str(REPO_ROOT / "configs" / "repro" / "qvhighlights_qd_detr.yaml"), "--run-dir",
            str(run), "--device", "cpu", "--features-root", str(features), "--datasets-root", str(datasets)]
    assert c2f(args + [f"--set={o}" for o in TINY_FINE]) == 0
    assert "published 62.9" in capsys.readouterr().out
    assert (run / "checkpoints" / "repro" / "qvhighlights_qd_detr" / "qd_detr.pt").stat().st_mtime_ns == stamp
    assert json.loads((run / "metrics" / "repro_qvhighlights_qd_detr.json").read_text())["metrics"] == summary["metrics"]
    # a recipe into a folder another run holds is refused in one line, naming the holder; so is an export
    from c2f_lib.run_lock import folder_lock

    with folder_lock(run):
        assert c2f(args + [f"--set={o}" for o in TINY_FINE]) == 2
        assert f"c2f repro: in use by process {os.getpid()}" in capsys.readouterr().err
        assert c2f(["data", "export", "qvhighlights", "--run-dir", str(run), "--root", str(datasets)]) == 2
        assert f"c2f data export: in use by process {os.getpid()}" in capsys.readouterr().err
    # `c2f run --config <recipe>` runs the same recipe (here the tiny one, written out): nothing to retrain
    tiny = {k: v for k, v in load_recipe(REPO_ROOT / "configs" / "repro" / "qvhighlights_qd_detr.yaml",
                                         TINY_FINE).items() if not k.startswith("_")}
    (tmp_path / "tiny_recipe.yaml").write_text(yaml.safe_dump(tiny))
    assert c2f(["run", "--config", str(tmp_path / "tiny_recipe.yaml"), "--run-dir", str(run), "--device", "cpu",
                "--features-root", str(features), "--datasets-root", str(datasets)]) == 0
    assert "published 62.9" in capsys.readouterr().out
    assert (run / "checkpoints" / "repro" / "qvhighlights_qd_detr" / "qd_detr.pt").stat().st_mtime_ns == stamp
    assert c2f(["run", "--config", str(tmp_path / "tiny_recipe.yaml"), "--stages", "05"]) == 2
    assert c2f(["run", "--config", str(REPO_ROOT / "configs" / "tiny.yaml"), "--features-root", "x"]) == 2


def test_msrvtt_tmass_recipe_end_to_end(tmp_path):
    datasets = tmp_path / "datasets"
    captions = write_msrvtt_release(datasets / "msrvtt", n_train=14, n_test=6)
    features = tmp_path / "features"
    features.mkdir()
    make_random_store(features / "msrvtt__ViT-B-32.h5", captions_records=captions, dim=16, num_frames=12)
    run = tmp_path / "run"
    summary = run_recipe(REPO_ROOT / "configs" / "repro" / "msrvtt_tmass.yaml", run, "cpu", features, datasets,
                         ["train.epochs=1", "train.batch_size=8", "splits.val.holdout_videos=4",
                          "models.tmass.config.num_trials=2", "eval.chunk_size=4"])
    test = summary["metrics"]["tmass"]["test"]
    assert 0 <= test["t2v_R@1"] <= 100 and "reference/t2v_R@1" in test
    assert summary["vs_published"]["tmass"]["t2v_R@1"]["published"] == 50.2
    ckpt = torch.load(run / "checkpoints" / "repro" / "msrvtt_tmass" / "tmass.pt", weights_only=False)
    assert ckpt["config"]["dim"] == 16 and ckpt["config"]["num_frames"] == 12


def test_mesm_recipe_on_mesm_hdf5_files_with_held_out_train_videos(tmp_path):
    """The Charades MESM recipe (HDF5 layout, no val split) pointed at a miniature QVHighlights-format tree."""
    datasets = tmp_path / "datasets"
    rows = write_qvhighlights_release(datasets / "qvhighlights", {"train": 8, "val": 3})
    features = write_released_tree(tmp_path / "features", rows["train"] + rows["val"], layout="h5",
                                   video_dims={"slowfast": 24, "clip": 16}, text_dir="clip_text")
    summary = run_recipe(REPO_ROOT / "configs" / "repro" / "charades_sta_mesm.yaml", tmp_path / "run", "cpu",
                         features, datasets,
                         ["dataset=qvhighlights", "splits.eval=[val]", "splits.val.holdout_videos=2",
                          "features.clip_len=2.0", "train.epochs=1", "train.batch_size=4",
                          "models.mesm.config.hidden_dim=32", "models.mesm.config.n_heads=4",
                          "models.mesm.config.ffn_dim=64"])
    assert 0 <= summary["metrics"]["mesm"]["val"]["mIoU"] <= 100
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "repro" / "charades_sta_mesm" / "mesm.pt", weights_only=False)
    assert ckpt["config"]["video_dim"] == 40 and len(ckpt["extra"]["summary"]["history"]) == 1
    # 8 train videos x 2 queries: the last 2 videos (sorted ids) are held out for checkpoint selection
    recipe = load_recipe(REPO_ROOT / "configs" / "repro" / "charades_sta_mesm.yaml",
                         ["dataset=qvhighlights", "splits.eval=[val]", "splits.val.holdout_videos=2",
                          "features.clip_len=2.0"])
    fit, select, evals = load_fine_splits(recipe, tmp_path / "run", features)
    train_vids = sorted({r["vid"] for r in rows["train"]})
    assert {s.vid for s in select} == set(train_vids[-2:]) and len(select) == 4
    assert {s.vid for s in fit} == set(train_vids[:-2]) and len(fit) == 12
    assert list(evals) == ["val"] and {s.vid for s in evals["val"]} == {r["vid"] for r in rows["val"]}
    with pytest.raises(RecipeError, match="holdout_videos"):
        run_recipe(REPO_ROOT / "configs" / "repro" / "charades_sta_mesm.yaml", tmp_path / "run", "cpu", features,
                   datasets, ["dataset=qvhighlights", "splits.eval=[val]", "splits.val.holdout_videos=8"])


def test_textdiff_recipe_end_to_end(tmp_path):
    datasets = tmp_path / "datasets"
    captions = write_msrvtt_release(datasets / "msrvtt", n_train=12, n_test=5)
    features = tmp_path / "features"
    features.mkdir()
    make_random_store(features / "msrvtt__ViT-B-32.h5", captions_records=captions, dim=16, num_frames=12)
    summary = run_recipe(REPO_ROOT / "configs" / "repro" / "msrvtt_textdiff.yaml", tmp_path / "run", "cpu", features,
                         datasets, ["train.epochs=1", "train.batch_size=8", "splits.val.holdout_videos=3",
                                    "models.textdiff.config.width=16", "models.textdiff.config.ffn=32",
                                    "models.textdiff.config.cond_dim=8", "models.textdiff.config.num_steps=2",
                                    "models.textdiff.phases.teacher.epochs=1", "eval.chunk_size=4"])
    assert 0 <= summary["metrics"]["textdiff"]["test"]["t2v_R@1"] <= 100
    assert (tmp_path / "run" / "checkpoints" / "repro" / "msrvtt_textdiff" / "textdiff" / "textdiff.pt").exists()


def test_tacos_cg_vcmr_recipe_end_to_end(tmp_path):
    """Coarse (X-Pool, T-MASS on whole-video captions) + fine (MESM) on a miniature TACoS-CG tree, searched in
    the two-query protocol; the fusion is chosen on val; `captions: offline` regenerates the captions and
    retrains the coarse heads on them."""
    from c2f_lib.data import registry
    from c2f_lib.data.coarse_captions import OfflineCaptionConfig, offline_coarse_captions
    from c2f_lib.features.testing import write_tacos_cg_release

    datasets = tmp_path / "datasets"
    write_tacos_cg_release(datasets / "tacos_cg", {"train": 6, "val": 3, "test": 3})
    loaded = [registry.load_split("tacos_cg", s, datasets) for s in ("train", "val", "test")]
    moments = [m for split in loaded for m in split.moments]
    captions = [c for split in loaded for c in split.captions]
    generated = offline_coarse_captions(moments, OfflineCaptionConfig())
    features = write_released_tree(tmp_path / "features", moments)
    make_random_store(features / "tacos_cg__ViT-B-32.h5", captions_records=captions + generated, dim=16,
                      num_frames=12)
    recipe = REPO_ROOT / "configs" / "repro" / "tacos_cg_vcmr.yaml"
    tiny = ["coarse.train.epochs=1", "coarse.train.batch_size=4", "coarse.models.tmass.config.num_trials=2",
            "fine.train.epochs=1", "fine.train.batch_size=4", "fine.models.mesm.config.hidden_dim=32",
            "fine.models.mesm.config.n_heads=4", "fine.models.mesm.config.ffn_dim=64",
            "select.alpha=[0.2, 0.5]", "select.temperature=[0.05]"]
    run = tmp_path / "run"
    summary = run_recipe(recipe, run, "cpu", features, datasets, tiny)
    assert set(summary["systems"]) == {"xpool+mesm", "tmass+mesm", "fine_only+mesm"}
    assert summary["captions"] == "native" and summary["selected_on"] == "val"
    for name in ("xpool+mesm", "tmass+mesm"):
        system = summary["systems"][name]
        best = max(system["val_grid"], key=lambda row: row["VCMR-R@1-IoU0.5"])
        assert len(system["val_grid"]) == 2 and system["fusion"]["alpha"] == best["alpha"]
    test = {name: m["test"] for name, m in summary["metrics"].items()}
    assert all(m["query_mode"] == "two" and m["num_queries"] == 9 for m in test.values())
    # SVMR runs the fine model on the GT video: the same whatever the coarse stage
    assert test["xpool+mesm"]["SVMR-R@1-IoU0.5"] == test["fine_only+mesm"]["SVMR-R@1-IoU0.5"]
    assert test["fine_only+mesm"]["Ceiling@3"] == 100.0                  # fine-only searches all 3 videos
    assert set(summary["coarse"]) == {"xpool", "tmass"} and "test" in summary["fine"]["mesm"]
    assert json.loads((run / "metrics" / "repro_tacos_cg_vcmr.json").read_text())["systems"]
    ckpt = run / "checkpoints" / "repro" / "tacos_cg_coarse" / "xpool.pt"
    before = ckpt.stat().st_mtime_ns
    summary = run_recipe(recipe, run, "cpu", features, datasets, tiny + ["captions=offline"])
    exported = (run / "data" / "tacos_cg" / "captions_test.jsonl").read_text()
    assert summary["captions"] == "offline" and "summary 0 of" not in exported and "Step" in exported
    assert ckpt.stat().st_mtime_ns != before                              # other captions: retrained
