"""The report (notebook 06's library): which fine model it picks, and VCMR on a real dataset's annotations."""
from __future__ import annotations

import pytest
import torch

import c2f_lib.models.moment_detr  # noqa: F401  (registers moment_detr)
from c2f_lib.data.schema import write_captions, write_moments
from c2f_lib.features.testing import make_random_store
from c2f_lib.models.registry import build_model, save_model
from c2f_lib.paths import RunPaths
from c2f_lib.pipeline.report import (FINE_PREFERENCE, MethodResult, build_report, choose_fine, evaluate_methods,
                                     find_checkpoints, report_sections, run_fine_choice, stage_metrics,
                                     vcmr_margins)
from c2f_lib.utils import atomic_write_json
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


def test_a_run_has_one_fine_model_chosen_on_stage_05_validation(tmp_path):
    """Report and explorer call run_fine_choice: stage 05's validation means win over each checkpoint's own
    best epoch (the explorer once took the latter and showed another model than the report)."""
    paths = RunPaths(tmp_path)
    _fine_checkpoints(paths.checkpoints("05_fine"), best_val={"mesm": 10.0, "qd_detr": 30.0, "moment_detr": 20.0})
    assert run_fine_choice(tmp_path).name == "qd_detr"          # no metrics json yet: the checkpoints decide
    atomic_write_json(paths.metrics_file("05_fine"), _stage05("val", {"mesm": 5.0, "qd_detr": 1.0, "moment_detr": 9.0}))
    choice = run_fine_choice(tmp_path)
    assert choice.name == "moment_detr" and "stage 05 metrics" in choice.basis
    assert run_fine_choice(tmp_path, seed=1).name is None       # no checkpoint of that seed


def test_fine_model_falls_back_to_held_out_then_preference(tmp_path):
    fine = _fine_checkpoints(tmp_path)  # checkpoints without a training summary
    choice = choose_fine(fine, _stage05("test", {"mesm": 1.0, "qd_detr": 3.0, "moment_detr": 2.0}))
    assert choice.name == "qd_detr" and "held-out `test`" in choice.basis
    choice = choose_fine(fine, None)
    assert choice.name == FINE_PREFERENCE[0] and "fixed preference" in choice.basis
    assert choose_fine({}, None).name is None
    report = build_report({"05_fine": None}, [], {}, SearchConfig(), "test", fine=choice, dataset="tacos")
    assert "`tacos`" in report and choice.basis in report


def _real_run_dir(dataset: str, run_dir, shared_datasets):
    """A run directory with a handful of the dataset's real test annotations (3 videos x 4 queries,
    their captions if any), a store of random features in our format, one coarse and three fine
    checkpoints. Skips when the annotation files are absent."""
    from c2f_lib.data import registry

    root = registry.get_dataset(dataset).path(shared_datasets)
    try:
        loaded = registry.load_split(dataset, "test", shared_datasets)
    except FileNotFoundError as err:
        pytest.skip(f"{dataset} annotations not found under {root}: {err}")
    vids = loaded.video_ids[:3]
    moments = [m for vid in vids for m in [m for m in loaded.moments if m.vid == vid][:4]]
    captions = [c for c in loaded.captions if c.vid in vids]
    paths = RunPaths(run_dir)
    write_moments(paths.moments_file(dataset, "test"), moments)
    write_captions(paths.captions_file(dataset, "test"), captions)
    store = make_random_store(paths.feature_store(dataset, "random"), moments, captions, dim=16, noise=0.3)
    torch.manual_seed(0)
    save_model(paths.checkpoints("03_coarse") / "xpool_seed0.pt", build_model("xpool", {"dim": 16}))
    _fine_checkpoints(paths.checkpoints("05_fine"), best_val={"mesm": 1.0, "qd_detr": 2.0, "moment_detr": 3.0})
    return vids, moments, captions, paths, store


@pytest.mark.parametrize("dataset", ["tacos", "tacos_cg"])
def test_report_evaluates_a_real_dataset_from_its_store(dataset, tmp_path, shared_datasets):
    """A handful of real TACoS (or TACoS-CG) test annotations + a store of random features in our
    format, under a dataset name other than synthmoments: the report's VCMR evaluation runs on it."""
    vids, moments, _, paths, store = _real_run_dir(dataset, tmp_path, shared_datasets)
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
    assert f"`{dataset}`" in report and "| xpool |" in report and "`moment_detr`" in report


def test_report_two_query_mode_on_real_tacos_cg(tmp_path, shared_datasets):
    """TACoS-CG's protocol on its real annotations: the coarse stage retrieves with a caption of the
    query's video (linked by video id: cg_<split>.json and tacos.json), the fine stage localises the
    moment sentence. In the random store a caption shares its video's frame vector and a moment
    sentence does not, so the caption finds the video far more often."""
    vids, moments, captions, paths, store = _real_run_dir("tacos_cg", tmp_path, shared_datasets)
    assert {c.vid for c in captions} == set(vids) and all(len(c.captions) == 5 for c in captions)
    checkpoints = find_checkpoints(tmp_path)
    moments_file, captions_file = paths.moments_file("tacos_cg", "test"), paths.captions_file("tacos_cg", "test")
    two_cfg = SearchConfig(k_videos=2, moments_per_video=3, coarse_query="caption")
    with pytest.raises(ValueError, match="captions_jsonl"):
        evaluate_methods(checkpoints, store, moments_file, two_cfg, fine_name="moment_detr")
    two = evaluate_methods(checkpoints, store, moments_file, two_cfg, ks_videos=(1,), fine_name="moment_detr",
                           captions_jsonl=captions_file)[0]
    single = evaluate_methods(checkpoints, store, moments_file, SearchConfig(k_videos=2, moments_per_video=3),
                              ks_videos=(1,), fine_name="moment_detr", captions_jsonl=captions_file)[0]
    assert (two.metrics["query_mode"], single.metrics["query_mode"]) == ("two", "single")
    assert two.metrics["VR-R@1"] > single.metrics["VR-R@1"]
    by_vid = {c.vid: c.captions for c in captions}
    sentences = {m.qid: m.query for m in moments}
    assert all(r["coarse_query"] in by_vid[r["gt_vid"]] and r["query"] == sentences[r["qid"]] for r in two.records)
    # 4 queries per video take its captions in turn: 4 distinct captions per video
    assert all(len({r["coarse_query"] for r in two.records if r["gt_vid"] == vid}) == 4 for vid in vids)
    report = build_report({}, [two], {}, two_cfg, "test", dataset="tacos_cg")
    assert "two-query mode" in report and "single-query mode" in build_report({}, [], {}, SearchConfig(), "test")


def test_report_sections_keep_every_table_whole():
    stages = {"05_fine": None}
    report = build_report(stages, [], {"VCMR recall": "figures/06_vcmr.png"}, SearchConfig(), "test",
                          notes=["a note"])
    sections = report_sections(report)
    assert sections[0].startswith("# c2f evaluation report") and "a note" in sections[0]
    assert all(not s.startswith("## Figures") and "figures/06_vcmr.png" not in s for s in sections)
    assert any(s.startswith("## 6. Coarse-to-fine search") for s in sections)
    assert "\n".join(sections) == report.split("## Figures")[0].strip()   # nothing lost, nothing cut


def test_report_on_a_split_stage_03_did_not_score_says_so():
    """`split = "val"` in notebook 06 (how the fusion is chosen): stage 03 scored test and test_cg only."""
    m03 = {"t2v_R@1": {s: {"correct": {"meanpool": {"mean": 10.0, "std": 0.0, "n": 1}},
                           "reference": {"meanpool": {"mean": 10.0}}} for s in ("test", "test_cg")}}
    report = build_report({"03_coarse": m03, "05_fine": None}, [], {}, SearchConfig(), "val")
    assert "Stage 03 scored `test`, `test_cg`, not `val`: no table here." in report
    report = build_report({"03_coarse": m03, "05_fine": None}, [], {}, SearchConfig(), "test")
    assert "| meanpool | 10.0 | — | — | 10.0 |" in report                 # no interval recorded: a dash
    m03["t2v_R@1"]["test"]["correct"]["xpool"] = {"mean": 11.0, "std": 0.0, "n": 1}
    m03["t2v_R@1"]["test"]["reference"]["xpool"] = {"mean": 18.0}
    m03["t2v_R@1_margin_vs_meanpool"] = {"test": {"xpool": {"diff": 1.0, "low": -2.2, "high": 4.4, "level": 0.95}}}
    report = build_report({"03_coarse": m03, "05_fine": None}, [], {}, SearchConfig(), "test")
    assert "| xpool | 11.0 | +1.0 | -2.2 to +4.4 | 18.0 |" in report


def test_vcmr_margin_comes_with_a_paired_interval_over_videos():
    """Δ VCMR R@1 vs mean-pool equals the difference of the two hit rates; its interval resamples the queries'
    videos, follows qids (not list order), and shows in the report's VCMR table."""
    import numpy as np
    qids, vids = list(range(40)), [f"v{i // 4}" for i in range(40)]
    base_iou = np.where(np.arange(40) % 5 == 0, 0.8, 0.0)                              # 8 hits
    ours_iou = np.where(np.arange(40) % 5 < 2, 0.8, 0.3)                               # 16 hits
    records = lambda order: [{"qid": qids[i], "gt_vid": vids[i]} for i in order]        # noqa: E731
    metrics = lambda iou: {"VCMR-R@1-IoU0.5": 100 * float((iou >= 0.5).mean()), "Ceiling@5": 50.0}  # noqa: E731
    reverse = list(range(39, -1, -1))
    base = MethodResult("meanpool", "qd_detr", metrics(base_iou), {}, base_iou, records(range(40)))
    ours = MethodResult("xpool", "qd_detr", metrics(ours_iou), {}, ours_iou[reverse], records(reverse))
    margin = vcmr_margins([base, ours])["xpool"]
    assert margin["diff"] == pytest.approx(20.0) and margin["low"] < 20.0 < margin["high"]
    assert margin["high"] - margin["low"] > 5                                          # 10 videos: wide
    report = build_report({"05_fine": None}, [base, ours], {}, SearchConfig(k_videos=5), "test")
    assert f"| +20.0 | {margin['low']:+.1f} to {margin['high']:+.1f} |" in report
    assert vcmr_margins([ours]) == {}                                                    # no baseline, no margin
