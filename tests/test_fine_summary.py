"""Stage 05's summary: validation from training's records, mean ± std over seeds, read by choose_fine."""
from __future__ import annotations

import pytest

from c2f_lib.evaluation.fine_summary import results_table, summarise_seeds
from c2f_lib.pipeline.report import choose_fine

METRICS = ["MR-full-mAP", "mIoU"]


def _extra(mAP, miou):
    return {"summary": {"best_epoch": 1, "best_val": {"MR-full-mAP": mAP, "mIoU": miou, "other": 0.0}}}


def test_val_mean_std_from_checkpoint_extras_and_choose_fine_uses_it():
    extras = {("mesm", 0): _extra(10.0, 1.0), ("mesm", 1): _extra(20.0, 3.0),
              ("mesm_transductive", 0): _extra(30.0, 2.0), ("mesm_transductive", 1): _extra(30.0, 2.0)}
    results = {("mesm", 0, "test"): {"MR-full-mAP": 50.0, "mIoU": 5.0},
               ("mesm", 1, "test"): {"MR-full-mAP": 70.0, "mIoU": 7.0},
               ("mesm_transductive", 0, "test"): {"MR-full-mAP": 1.0, "mIoU": 1.0},
               ("mesm_transductive", 1, "test"): {"MR-full-mAP": 3.0, "mIoU": 1.0}}
    mean, std = summarise_seeds(results, extras, METRICS)
    assert list(mean) == ["val", "test"]
    assert mean["val"]["mesm"] == {"MR-full-mAP": 15.0, "mIoU": 2.0}
    assert std["val"]["mesm"]["MR-full-mAP"] == pytest.approx(5.0)
    assert mean["test"]["mesm"]["MR-full-mAP"] == 60.0 and std["test"]["mesm_transductive"]["mIoU"] == 0.0
    # Validation decides even though `test` prefers the other model.
    choice = choose_fine({"mesm": "unused.pt", "mesm_transductive": "unused.pt"}, {"mean": mean, "std": std})
    assert choice.name == "mesm_transductive" and "validation" in choice.basis

    table = results_table(mean, std, METRICS)
    assert list(table.index) == ["mesm", "mesm_transductive"]
    assert table.loc["mesm", ("val", "MR-full-mAP")] == "15.00 ± 5.00"
    assert table.loc["mesm_transductive", ("test", "MR-full-mAP")] == "2.00 ± 1.00"


def test_metric_missing_for_a_seed_is_left_out():
    extras = {("qd_detr", 0): _extra(10.0, 1.0), ("qd_detr", 1): {"summary": {"best_val": {"mIoU": 2.0}}}}
    mean, _ = summarise_seeds({}, extras, METRICS)
    assert mean["val"]["qd_detr"] == {"mIoU": 1.5}
