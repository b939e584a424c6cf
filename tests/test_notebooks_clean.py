"""Notebooks are committed without outputs, with exactly one `parameters` cell and a header."""
from __future__ import annotations

import nbformat
import pytest

from conftest import REPO_ROOT
from c2f_lib.pipeline.runner import discover_stages, notebook_parameters

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").rglob("*.ipynb"))
STAGES = discover_stages(REPO_ROOT / "notebooks")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; run `make clean-notebooks`"


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_stage_notebook_shape(stage):
    nb = nbformat.read(stage.path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.lstrip().startswith("#")
    params = notebook_parameters(stage)
    assert {"run_dir", "seed", "device"} <= set(params), f"{stage.name} must declare run_dir, seed, device"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


def test_pipeline_has_its_stages():
    assert [s.number for s in STAGES][:1] == ["01"], "notebooks/01_*.ipynb starts the pipeline"


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_papermill_reads_every_parameter(stage):
    """papermill skips (with only a log line) a parameter whose comment holds '=', so it would lose its
    type and help text; every assignment of the parameters cell must parse."""
    from papermill.translators import PythonTranslator

    nb = nbformat.read(stage.path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assigned = [line.split("=")[0].strip() for line in cell.source.splitlines() if "=" in line.split("#")[0]]
    assert [p.name for p in PythonTranslator.inspect(cell)] == assigned
