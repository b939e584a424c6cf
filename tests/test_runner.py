"""The papermill pipeline runner on small throwaway notebooks (fast; the real pipeline is in test_pipeline.py)."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from c2f_lib.pipeline.runner import PipelineError, load_config, resolve_parameters, discover_stages, run_pipeline


def write_notebook(path: Path, params: str, body: str) -> None:
    nb = new_notebook(cells=[new_markdown_cell("# test stage"),
                             new_code_cell(params, metadata={"tags": ["parameters"]}),
                             new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture()
def toy_pipeline(tmp_path: Path) -> tuple[Path, Path]:
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    write_notebook(notebooks / "01_make.ipynb", 'run_dir = "."\nseed = 0\nn = 3',
                   "from pathlib import Path\n"
                   "out = Path(run_dir) / 'data' / 'numbers.txt'\nout.parent.mkdir(parents=True, exist_ok=True)\n"
                   "out.write_text(' '.join(str(seed * 10 + i) for i in range(n)))")
    write_notebook(notebooks / "02_sum.ipynb", 'run_dir = "."\nscale = 1',
                   "from pathlib import Path\nimport json\n"
                   "nums = [int(x) for x in (Path(run_dir) / 'data' / 'numbers.txt').read_text().split()]\n"
                   "(Path(run_dir) / 'metrics').mkdir(exist_ok=True)\n"
                   "(Path(run_dir) / 'metrics' / 'sum.json').write_text(json.dumps({'sum': scale * sum(nums)}))")
    config = tmp_path / "toy.yaml"
    config.write_text("seed: 2\nnotebooks:\n  '01': {n: 4}\n  '02': {scale: 10}\n")
    return notebooks, config


def read_sum(run_dir: Path) -> int:
    return json.loads((run_dir / "metrics" / "sum.json").read_text())["sum"]


def test_runs_in_order_writes_manifests_and_resumes(toy_pipeline, tmp_path):
    notebooks, config = toy_pipeline
    run_dir = tmp_path / "run"
    results = run_pipeline(config, run_dir=run_dir, notebooks_dir=notebooks)
    assert [r.status for r in results] == ["completed", "completed"]
    assert read_sum(run_dir) == 10 * (20 + 21 + 22 + 23)
    manifest = json.loads((run_dir / "manifests" / "01_make.json").read_text())
    assert manifest["status"] == "completed" and manifest["seed"] == 2
    assert manifest["parameters"]["n"] == 4 and "data/numbers.txt" in manifest["outputs"]
    assert {"torch", "papermill", "python"} <= set(manifest["versions"]) and manifest["git_commit"]
    assert (run_dir / "executed" / "02_sum.ipynb").exists()

    # Same config: both stages skipped.
    assert [r.status for r in run_pipeline(config, run_dir=run_dir, notebooks_dir=notebooks)] == ["skipped"] * 2
    # Changing stage 01's config reruns it and everything after it.
    config.write_text("seed: 2\nnotebooks:\n  '01': {n: 2}\n  '02': {scale: 10}\n")
    assert [r.status for r in run_pipeline(config, run_dir=run_dir, notebooks_dir=notebooks)] == ["completed"] * 2
    assert read_sum(run_dir) == 10 * (20 + 21)
    # A deleted output makes its stage stale; --stages runs only what is named.
    (run_dir / "metrics" / "sum.json").unlink()
    results = run_pipeline(config, run_dir=run_dir, notebooks_dir=notebooks, stages="02")
    assert [(r.stage, r.status) for r in results] == [("02_sum", "completed")]
    # --force reruns a stage whose manifest matches.
    assert run_pipeline(config, run_dir=run_dir, notebooks_dir=notebooks, stages="01", force=True)[0].status == "completed"


def test_failing_notebook_names_cell_and_error_and_keeps_partial_output(toy_pipeline, tmp_path):
    notebooks, config = toy_pipeline
    write_notebook(notebooks / "02_sum.ipynb", 'run_dir = "."\nscale = 1', "print('before')\nraise ValueError('boom 42')")
    run_dir = tmp_path / "run"
    with pytest.raises(PipelineError) as err:
        run_pipeline(config, run_dir=run_dir, notebooks_dir=notebooks)
    message = str(err.value)
    assert "02_sum" in message and "ValueError" in message and "boom 42" in message and "In [" in message
    executed = run_dir / "executed" / "02_sum.ipynb"
    assert executed.exists() and "boom 42" in executed.read_text()
    manifest = json.loads((run_dir / "manifests" / "02_sum.json").read_text())
    assert manifest["status"] == "failed"
    # The completed stage is kept and skipped on the next attempt.
    assert json.loads((run_dir / "manifests" / "01_make.json").read_text())["status"] == "completed"


def test_config_errors_are_clear(toy_pipeline, tmp_path):
    notebooks, _ = toy_pipeline
    stages = discover_stages(notebooks)
    cases = {
        "seed: 1\nlearning_rate: 3\n": "unknown key 'learning_rate'",
        "notebooks:\n  '02': {n: 3}\n": "notebooks.02: unknown keys ['n']",
        "notebooks:\n  '09': {n: 3}\n": "no notebooks/<NN>_*.ipynb",
        "run_dir: /tmp/x\n": "set by the runner",
        "seed: [1\n": "not valid YAML",
    }
    for text, expected in cases.items():
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(PipelineError) as err:
            resolve_parameters(load_config(path), stages)
        assert expected in str(err.value), (text, str(err.value))
    good = tmp_path / "good.yaml"
    good.write_text("seed: 0\n")
    with pytest.raises(PipelineError, match="unknown stages"):
        run_pipeline(good, notebooks_dir=notebooks, run_dir=tmp_path / "r", stages="05")
    with pytest.raises(PipelineError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_cli_reports_errors_with_nonzero_exit(tmp_path, capsys):
    from c2f_lib.cli import main

    assert main(["run", "--config", str(tmp_path / "nope.yaml")]) == 1
    assert "config file not found" in capsys.readouterr().err


@pytest.mark.parametrize("config", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_configs_name_only_declared_parameters(config):
    """Every config in configs/ resolves against the real notebooks (a typo would fail only at run time)."""
    params = resolve_parameters(load_config(config), discover_stages())
    assert set(params) == {stage.number for stage in discover_stages()}
