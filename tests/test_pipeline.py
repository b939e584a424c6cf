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


# --------------------------------------------------------------------------------------------- executed notebooks
def _executed(run_dir, stage: str):
    import nbformat

    return nbformat.read(run_dir / "executed" / f"{stage}.ipynb", as_version=4)


def _draws_at_top_level(source: str) -> bool:
    """The cell saves or shows a figure in a statement that always runs (not in a def, if or loop)."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:  # magics
        return False
    for statement in tree.body:
        if isinstance(statement, (ast.Expr, ast.Assign)):
            for node in ast.walk(statement):
                if isinstance(node, ast.Call):
                    name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                    if name in ("savefig", "show"):
                        return True
    return False


def test_executed_notebooks_read_without_a_kernel(tiny_run):
    """What a student sees opening outputs/<run>/executed/*.ipynb: every figure a stage saves is embedded, once,
    as a PNG (the kernel once drew with Agg, leaving "<Figure size 1000x520 with 9 Axes>"); a cell that draws
    has a picture; no output is a stderr box (progress bars there read as errors)."""
    run_dir, _, _ = tiny_run
    for stage in discover_stages(REPO_ROOT / "notebooks"):
        nb, images = _executed(run_dir, stage.name), 0
        for cell in (c for c in nb.cells if c.cell_type == "code"):
            pictures = [o for o in cell.outputs if "image/png" in o.get("data", {})]
            images += len(pictures)
            if _draws_at_top_level(cell.source):
                assert pictures, f"{stage.name} cell {cell.id} draws a figure but its output has no image"
            for out in cell.outputs:
                text = "".join(out.get("data", {}).get("text/plain", ""))
                if "image/png" not in out.get("data", {}):   # a repr standing in for a picture
                    assert not text.startswith(("<Figure size", "VBox(", "<IPython.core.display")), (stage.name, cell.id)
                assert out.get("name") != "stderr", (stage.name, cell.id, "".join(out.text)[:300])
        saved = sorted((run_dir / "figures").glob(f"{stage.number}_*.png"))
        assert images == len(saved), (stage.name, images, [p.name for p in saved])


def test_explorer_notebook_keeps_its_widget_and_a_picture(tiny_run):
    """The app's output: the widget view (its state saved in the notebook, result included) for JupyterLab,
    and a PNG of the first search with a one-line text for wherever widgets cannot run."""
    run_dir, _, _ = tiny_run
    nb = _executed(run_dir, "07_explorer")
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    views = [o for c in nb.cells for o in c.get("outputs", [])
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(views) == 1
    data = views[0]["data"]
    assert data["application/vnd.jupyter.widget-view+json"]["model_id"] in state
    assert "image/png" in data and data["text/plain"].startswith("Explorer app")
    saved_outputs = [o for m in state.values() if m["model_name"] == "OutputModel" for o in m["state"]["outputs"]]
    assert any("image/png" in o.get("data", {}) for o in saved_outputs)        # the result lives in the state
    status = [m["state"]["value"] for m in state.values() if m["model_name"] == "HTMLModel"]
    assert any(("HIT" in s or "MISS" in s) and "IoU" in s and "coarse rank" in s for s in status)


def test_explorer_and_report_show_the_same_fine_model(tiny_run):
    run_dir, _, _ = tiny_run
    fine = json.loads((run_dir / "metrics" / "06_report.json").read_text())["fine_model"]
    printed = "".join("".join(o.get("text", "")) for c in _executed(run_dir, "07_explorer").cells
                      for o in c.get("outputs", []))
    assert f"fine: {fine['name']} (chosen by {fine['basis']}" in printed


def test_report_notebook_shows_every_table_in_full(tiny_run):
    from c2f_lib.pipeline.report import report_sections

    run_dir, _, _ = tiny_run
    last = _executed(run_dir, "06_report").cells[-1]
    shown = ["".join(o["data"]["text/plain"]) for o in last.outputs if o.output_type == "display_data"]
    assert shown == report_sections((run_dir / "report.md").read_text()) and len(shown) > 3


def test_explorer_encodes_new_text_with_the_runs_text_encoder(tiny_run):
    """The run's tiny CLIP (features/tinyclip.pt) gives a stored query the features the store holds (up to the
    store's float16 rounding), so a typed query is encoded as the stored ones were."""
    import torch

    from c2f_lib.data.schema import read_moments
    from c2f_lib.paths import RunPaths
    from c2f_lib.pipeline.explorer import run_text_encoder
    from c2f_lib.pipeline.search import StoreTextEncoder

    run_dir, _, _ = tiny_run
    paths = RunPaths(run_dir)
    encode = run_text_encoder(run_dir, "synthmoments", "tinyclip")
    assert encode.encodes_new_text
    text = read_moments(paths.moments_file("synthmoments", "test"))[0].query
    stored_sentence, stored_tokens = StoreTextEncoder(paths.feature_store("synthmoments", "tinyclip"))([text])
    sentence, tokens = encode.backbone_encoder()([text])
    assert torch.allclose(sentence, stored_sentence, rtol=2e-3, atol=2e-3)
    assert tokens[0].shape == stored_tokens[0].shape
    assert torch.allclose(tokens[0], stored_tokens[0], rtol=2e-3, atol=2e-3)
    sentence, tokens = encode(["a purple star that nobody annotated spins"])
    assert sentence.shape == stored_sentence.shape and tokens[0].shape[1] == stored_tokens[0].shape[1]
