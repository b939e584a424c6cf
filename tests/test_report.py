"""The report (notebook 06's library): which fine model it picks, and VCMR on a real dataset's annotations."""
from __future__ import annotations

import pytest
import torch

import c2f_lib.models.moment_detr  # noqa: F401  (registers moment_detr)
from c2f_lib.data.schema import write_moments
from c2f_lib.features.testing import make_random_store
from c2f_lib.models.registry import build_model, save_model
from c2f_lib.paths import RunPaths
from c2f_lib.pipeline.report import (FINE_PREFERENCE, build_report, choose_fine, evaluate_methods,
                                     find_checkpoints, stage_metrics)
from c2f_lib.pipeline.search import SearchConfig

TINY_FINE = {"video_dim": 16, "text_dim": 16, "hidden_dim": 16, "n_heads": 2, "ffn_dim": 32, "num_queries": 4}


def _fine_checkpoints(folder, best_val: dict[str, float] | None = None) -> dict:
    """One tiny checkpoint per fine name; `best_val` name -> validation mAP kept in its training summary."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in ("mesm", "qd_detr", "moment_detr"):
        extra = {"summary": {"best_val": {"MR-full-mAP": best_val[name]}}} if best_val else {}
        save_model(folder / f"{name}_seed0.pt", build_model("moment_detr", TINY_FINE), extra)
        paths[name] = folder / f"{name}_seed0.pt"
    return paths


def _stage05(split: str, maps: dict[str, float]) -> dict:
    """Stage 05's metrics json: mean over seeds per split and model."""
    return {"mean": {split: {name: {"MR-full-mAP": v, "MR-full-R1@0.5": 50.0} for name, v in maps.items()}}}


def test_fine_model_chosen_by_validation_metrics(tmp_path):
    fine = _fine_checkpoints(tmp_path, best_val={"mesm": 10.0, "qd_detr": 30.0, "moment_detr": 20.0})
    # stage 05's validation numbers come first, whatever the papers' order says
    choice = choose_fine(fine, _stage05("val", {"mesm": 5.0, "qd_detr": 1.0, "moment_detr": 9.0}))
    assert choice.name == "moment_detr" and "validation (stage 05 metrics) MR-full-mAP" in choice.basis
    # no validation numbers in the json: the checkpoints' own validation numbers, before any test number
    choice = choose_fine(fine, _stage05("test", {"mesm": 50.0, "qd_detr": 1.0, "moment_detr": 2.0}))
    assert choice.name == "qd_detr" and "checkpoint" in choice.basis


def test_fine_model_falls_back_to_held_out_then_preference(tmp_path):
    fine = _fine_checkpoints(tmp_path)  # checkpoints without a training summary
    choice = choose_fine(fine, _stage05("test", {"mesm": 1.0, "qd_detr": 3.0, "moment_detr": 2.0}))
    assert choice.name == "qd_detr" and "held-out `test`" in choice.basis
    choice = choose_fine(fine, None)
    assert choice.name == FINE_PREFERENCE[0] and "fixed preference" in choice.basis
    assert choose_fine({}, None).name is None
    report = build_report({"05_fine": None}, [], {}, SearchConfig(), "test", fine=choice, dataset="tacos")
    assert "`tacos`" in report and choice.basis in report


@pytest.mark.parametrize("dataset", ["tacos", "tacos_cg"])
def test_report_evaluates_a_real_dataset_from_its_store(dataset, tmp_path, shared_datasets):
    """A handful of real TACoS (or TACoS-CG) test annotations + a store of random features in our
    format, under a dataset name other than synthmoments: the report's VCMR evaluation runs on it."""
    from c2f_lib.data import registry

    root = registry.get_dataset(dataset).path(shared_datasets)
    try:
        loaded = registry.load_split(dataset, "test", shared_datasets)
    except FileNotFoundError as err:
        pytest.skip(f"{dataset} annotations not found under {root}: {err}")
    vids = loaded.video_ids[:3]
    moments = [m for vid in vids for m in [m for m in loaded.moments if m.vid == vid][:4]]   # 3 videos x 4
    paths = RunPaths(tmp_path)
    write_moments(paths.moments_file(dataset, "test"), moments)
    store = make_random_store(paths.feature_store(dataset, "random"), moments, dim=16, noise=0.3)
    torch.manual_seed(0)
    save_model(paths.checkpoints("03_coarse") / "xpool_seed0.pt", build_model("xpool", {"dim": 16}))
    _fine_checkpoints(paths.checkpoints("05_fine"), best_val={"mesm": 1.0, "qd_detr": 2.0, "moment_detr": 3.0})

    checkpoints = find_checkpoints(tmp_path)
    fine = choose_fine(checkpoints["fine"], stage_metrics(tmp_path)["05_fine"])
    cfg = SearchConfig(k_videos=2, moments_per_video=3)
    results = evaluate_methods(checkpoints, store, paths.moments_file(dataset, "test"), cfg, ks_videos=(1, 2, 5),
                               fine_name=fine.name)
    assert [(r.method, r.fine) for r in results] == [("xpool", "moment_detr")]
    metrics = results[0].metrics
    assert metrics["num_queries"] == len(moments) == 12
    assert set(results[0].by_k) == {1, 2}  # K capped at the corpus size (3 videos)
    assert 0 <= metrics["VCMR-R@10-IoU0.5"] <= metrics["Ceiling@2"] <= 100
    assert {r["gt_vid"] for r in results[0].records} == set(vids)
    assert all({m[0] for m in r["moments"]} <= set(vids) for r in results[0].records)
    report = build_report(stage_metrics(tmp_path), results, {}, cfg, "test", fine=fine, dataset=dataset)
    assert f"`{dataset}`" in report and "| xpool | moment_detr |" in report
