"""The whole pipeline, end to end, on configs/tiny.yaml through the `c2f` command (the CI gate)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from c2f_lib.pipeline.runner import discover_stages

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tiny_run")
    cmd = [sys.executable, "-m", "c2f_lib.cli", "run", "--config", str(REPO_ROOT / "configs" / "tiny.yaml"),
           "--run-dir", str(run_dir), "--device", "cpu"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return run_dir, first, second


def test_every_stage_completes_with_a_manifest(tiny_run):
    run_dir, first, _ = tiny_run
    stages = discover_stages(REPO_ROOT / "notebooks")
    assert stages, "no notebooks found"
    for stage in stages:
        manifest = json.loads((run_dir / "manifests" / f"{stage.name}.json").read_text())
        assert manifest["status"] == "completed", stage.name
        assert manifest["outputs"], f"{stage.name} produced no files"
        assert (run_dir / "executed" / f"{stage.name}.ipynb").exists()
        assert manifest["parameters"]["run_dir"] == str(run_dir)
    assert f"{len(stages)} stage(s) run" in first.stdout


def test_rerun_resumes_without_work(tiny_run):
    _, _, second = tiny_run
    assert second.returncode == 0, second.stderr[-2000:]
    assert "0 stage(s) run" in second.stdout


def test_each_stage_writes_metrics_with_provenance(tiny_run):
    run_dir, _, _ = tiny_run
    metrics = sorted((run_dir / "metrics").glob("*.json"))
    assert len(metrics) >= len(discover_stages(REPO_ROOT / "notebooks")) - 1, [m.name for m in metrics]
    for path in metrics:
        record = json.loads(path.read_text())
        assert "provenance" in record and record["provenance"]["versions"]["torch"], path.name


def test_run_is_quiet_and_says_where_its_report_is(tiny_run):
    """No kernel log lines (TCP-encryption warning, 'KeyboardInterrupt caught in kernel') and no
    open_clip random-init warning; the run names its report and how to see its status."""
    run_dir, first, _ = tiny_run
    output = first.stdout + first.stderr
    for noise in ("without encryption", "KeyboardInterrupt", "No pretrained weights", "Traceback"):
        assert noise not in output, noise
    assert f"report: {run_dir / 'report.md'}" in first.stdout and f"c2f status {run_dir}" in first.stdout


def test_provenance_is_portable(tiny_run):
    """Metrics recorded the kernel's random temp-file argv and absolute paths of the run folder."""
    run_dir, _, _ = tiny_run
    for path in sorted((run_dir / "metrics").glob("*.json")):
        record = json.loads(path.read_text())["provenance"]
        assert record["argv"][0].startswith("c2f run: notebooks/"), (path.name, record["argv"])
        assert str(run_dir) not in json.dumps(record["config"]), path.name


def test_status_of_the_finished_run(tiny_run):
    run_dir, _, _ = tiny_run
    status = subprocess.run([sys.executable, "-m", "c2f_lib.cli", "status", str(run_dir)], capture_output=True,
                            text=True, timeout=300)
    assert status.returncode == 0, status.stderr
    assert "every stage is fresh" in status.stdout and f"report: {run_dir / 'report.md'}" in status.stdout
