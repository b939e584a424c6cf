"""The papermill pipeline runner on small throwaway notebooks and a throwaway library (fast; the real
pipeline is in test_pipeline.py): what makes a stage stale, what a manifest lists, what is refused
before any stage runs, the folder lock, Ctrl-C and `c2f status`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from conftest import REPO_ROOT
from c2f_lib.errors import UserError
from c2f_lib.run_lock import FolderBusyError, folder_lock
from c2f_lib.pipeline.runner import PipelineError, discover_stages, load_config, resolve_parameters, run_pipeline
from c2f_lib.pipeline.stage_hash import Library
from c2f_lib.pipeline.status import run_status

# toylib: numbers.py (imports shared.py) feeds stage 01, total.py stage 02; unused.py no stage.
TOYLIB = {
    "__init__.py": "",
    "shared.py": "OFFSET = 0\n",
    "numbers.py": "from toylib.shared import OFFSET\n\n\ndef make(seed, n):\n"
                  "    return [seed * 10 + i + OFFSET for i in range(n)]\n",
    "total.py": "def total(nums, scale):\n    return scale * sum(nums)\n",
    "unused.py": "X = 1\n",
}
MAKE = ("import os, time\nfrom pathlib import Path\nfrom toylib.numbers import make\n"
        "out = Path(run_dir) / 'data' / 'numbers.txt'\nout.parent.mkdir(parents=True, exist_ok=True)\n"
        "out.write_text(' '.join(str(x) for x in make(seed, n)))\n"
        "if stamp:  # a stage whose output differs on every run\n"
        "    (Path(run_dir) / 'data' / 'stamp.txt').write_text(str(time.time_ns()))\n")
SUM = ("from pathlib import Path\nimport json\nfrom toylib.total import total\n"
       "nums = [int(x) for x in (Path(run_dir) / 'data' / 'numbers.txt').read_text().split()]\n"
       "(Path(run_dir) / 'metrics').mkdir(exist_ok=True)\n"
       "(Path(run_dir) / 'metrics' / 'sum.json').write_text(json.dumps({'sum': total(nums, scale)}))")


def write_notebook(path: Path, params: str, body: str) -> None:
    nb = new_notebook(cells=[new_markdown_cell("# test stage"),
                             new_code_cell(params, metadata={"tags": ["parameters"]}),
                             new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


class Toy:
    """Two notebooks, their library and a config; `run` runs them into `run_dir` -> {stage: status}."""

    def __init__(self, tmp_path: Path):
        self.notebooks = tmp_path / "notebooks"
        self.lib = self.notebooks / "toylib"          # the kernel's cwd is the notebooks folder
        self.lib.mkdir(parents=True)
        for name, text in TOYLIB.items():
            (self.lib / name).write_text(text)
        write_notebook(self.notebooks / "01_make.ipynb", 'run_dir = "."\nseed = 0\nn = 3\nstamp = False', MAKE)
        write_notebook(self.notebooks / "02_sum.ipynb", 'run_dir = "."\nscale = 1', SUM)
        self.config = tmp_path / "toy.yaml"
        self.config.write_text("seed: 2\nnotebooks:\n  '01': {n: 4}\n  '02': {scale: 10}\n")
        self.run_dir = tmp_path / "run"

    def run(self, **kwargs) -> dict[str, str]:
        results = run_pipeline(self.config, run_dir=self.run_dir, notebooks_dir=self.notebooks,
                               library=Library(self.lib), **kwargs)
        return {r.stage: r.status for r in results}

    def manifest(self, stage: str) -> dict:
        return json.loads((self.run_dir / "manifests" / f"{stage}.json").read_text())

    def status(self) -> dict[str, dict]:
        status = run_status(self.run_dir, self.config, notebooks_dir=self.notebooks, library=Library(self.lib))
        return {row["stage"]: row for row in status["stages"]}

    def sum(self) -> int:
        return json.loads((self.run_dir / "metrics" / "sum.json").read_text())["sum"]


@pytest.fixture()
def toy(tmp_path) -> Toy:
    return Toy(tmp_path)


RAN, SKIPPED = "completed", "skipped"


def test_runs_in_order_writes_manifests_and_resumes(toy):
    assert toy.run() == {"01_make": RAN, "02_sum": RAN}
    assert toy.sum() == 10 * (20 + 21 + 22 + 23)
    manifest = toy.manifest("01_make")
    assert manifest["status"] == "completed" and manifest["seed"] == 2
    assert manifest["parameters"]["n"] == 4 and "data/numbers.txt" in manifest["outputs"]
    assert {"torch", "papermill", "python"} <= set(manifest["versions"]) and manifest["git_commit"]
    assert set(manifest["inputs"]["library"]) == {"toylib/__init__.py", "toylib/numbers.py", "toylib/shared.py"}
    assert (toy.run_dir / "executed" / "02_sum.ipynb").exists()

    assert toy.run() == {"01_make": SKIPPED, "02_sum": SKIPPED}
    # Changing stage 01's config reruns it and, its output changing, everything after it.
    toy.config.write_text("seed: 2\nnotebooks:\n  '01': {n: 2}\n  '02': {scale: 10}\n")
    assert toy.run() == {"01_make": RAN, "02_sum": RAN}
    assert toy.sum() == 10 * (20 + 21)
    # A deleted output makes its stage stale; --stages runs only what is named.
    (toy.run_dir / "metrics" / "sum.json").unlink()
    assert toy.run(stages="02") == {"02_sum": RAN}
    # --force reruns a fresh stage.
    assert toy.run(stages="01", force=True) == {"01_make": RAN}


def test_library_change_reruns_exactly_the_stages_that_import_it(toy):
    """Defect 1: editing library code reran nothing; now a stage reruns when a module it imports
    (directly or through another module) changes, and only then."""
    toy.run()
    (toy.lib / "unused.py").write_text("X = 2\n")
    assert toy.run() == {"01_make": SKIPPED, "02_sum": SKIPPED}
    (toy.lib / "total.py").write_text("def total(nums, scale):\n    return 2 * scale * sum(nums)\n")
    assert toy.status()["02_sum"]["reasons"] == ["library changed: toylib/total.py"]
    assert toy.run() == {"01_make": SKIPPED, "02_sum": RAN}
    assert toy.sum() == 2 * 10 * (20 + 21 + 22 + 23)
    (toy.lib / "shared.py").write_text("OFFSET = 1\n")        # reaches 01 through numbers.py
    assert toy.run() == {"01_make": RAN, "02_sum": RAN}       # 01's output changed, so 02 reruns
    assert toy.sum() == 2 * 10 * (21 + 22 + 23 + 24)


def test_rerun_or_deleted_upstream_output_reruns_downstream(toy):
    """Defect 2: a forced upstream stage (or a deleted upstream output) left downstream stages fresh
    though the upstream outputs had changed. Byte-identical outputs do not cascade."""
    toy.config.write_text("seed: 2\nnotebooks:\n  '01': {n: 4, stamp: true}\n")
    toy.run()
    assert toy.run(stages="01", force=True) == {"01_make": RAN}
    assert toy.status()["02_sum"]["reasons"] == ["upstream 01_make outputs changed"]
    assert toy.run() == {"01_make": SKIPPED, "02_sum": RAN}
    (toy.run_dir / "data" / "stamp.txt").unlink()
    assert toy.status()["01_make"]["reasons"] == ["output missing: data/stamp.txt"]
    assert toy.run() == {"01_make": RAN, "02_sum": RAN}
    # An output edited by hand is stale too (its content, not its time, is compared).
    numbers = toy.run_dir / "data" / "numbers.txt"
    numbers.write_text("1 2 3")
    assert toy.status()["01_make"]["reasons"] == ["output changed: data/numbers.txt"]
    os.utime(toy.run_dir / "metrics" / "sum.json")                 # touched, same bytes: still fresh
    assert toy.status()["02_sum"]["state"] == "fresh"
    # Without the stamp, a forced rerun writes the same bytes and stage 02 stays fresh.
    toy.config.write_text("seed: 2\nnotebooks:\n  '01': {n: 4}\n")
    toy.run()
    assert toy.run(stages="01", force=True) == {"01_make": RAN}
    assert toy.run() == {"01_make": SKIPPED, "02_sum": SKIPPED}


def test_resumed_stage_manifest_lists_the_outputs_of_every_attempt(toy, monkeypatch):
    """Defect 3: after a resume the manifest listed only what the resumed attempt wrote, so deleting
    an output of the first attempt went unnoticed."""
    write_notebook(toy.notebooks / "01_make.ipynb", 'run_dir = "."\nseed = 0\nn = 3\nstamp = False',
                   "import os\nfrom pathlib import Path\nfirst = Path(run_dir) / 'data' / 'first.txt'\n"
                   "if not first.exists():  # 'load if it exists': a resumed attempt skips it\n"
                   "    first.parent.mkdir(parents=True, exist_ok=True)\n    first.write_text('1')\n"
                   "if os.environ.get('TOY_FAIL'):\n    raise RuntimeError('killed')\n"
                   + MAKE)
    monkeypatch.setenv("TOY_FAIL", "1")
    with pytest.raises(PipelineError, match="01_make failed"):
        toy.run(stages="01")
    assert toy.manifest("01_make")["status"] == "failed"
    monkeypatch.delenv("TOY_FAIL")
    assert toy.run(stages="01") == {"01_make": RAN}
    assert {"data/first.txt", "data/numbers.txt"} <= set(toy.manifest("01_make")["outputs"])
    (toy.run_dir / "data" / "first.txt").unlink()
    assert toy.run(stages="01") == {"01_make": RAN}


def test_failing_notebook_names_cell_and_error_and_keeps_partial_output(toy):
    write_notebook(toy.notebooks / "02_sum.ipynb", 'run_dir = "."\nscale = 1', "print('before')\nraise ValueError('boom 42')")
    with pytest.raises(PipelineError) as err:
        toy.run()
    message = str(err.value)
    assert "02_sum" in message and "ValueError" in message and "boom 42" in message and "In [" in message
    assert "\n" not in message
    executed = toy.run_dir / "executed" / "02_sum.ipynb"
    assert executed.exists() and "boom 42" in executed.read_text()
    assert toy.manifest("02_sum")["status"] == "failed"
    assert toy.manifest("01_make")["status"] == "completed"
    assert toy.status()["02_sum"]["reasons"][0] == "last run failed"


def test_executed_notebook_embeds_figures_and_keeps_bars_out_of_stderr(toy):
    """A cell that draws is saved with its PNG (not "<Figure size ...>"), once; a progress bar is stdout."""
    write_notebook(toy.notebooks / "02_sum.ipynb", 'run_dir = "."\nscale = 1',
                   "import matplotlib.pyplot as plt\nfrom c2f_lib.progress import progress\n"
                   "for _ in progress(range(3), desc='work', mininterval=0):\n    pass\n"
                   "fig, ax = plt.subplots()\nax.plot([1, 2])\nfig.savefig('/dev/null', format='png')")
    toy.run()
    cell = nbformat.read(toy.run_dir / "executed" / "02_sum.ipynb", as_version=4).cells[-1]
    images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1, [o.get("data", o.get("text")) for o in cell.outputs]
    streams = {name: "".join(o.text for o in cell.outputs if o.get("name") == name) for name in ("stdout", "stderr")}
    assert streams["stderr"] == "" and "work: 100%" in streams["stdout"]


def test_config_errors_name_file_line_and_key(toy, tmp_path):
    stages = discover_stages(toy.notebooks)
    cases = {
        "seed: 1\nlearning_rate: 3\n": ("unknown key 'learning_rate'", ":2:learning_rate"),
        "notebooks:\n  '02': {n: 3}\n": ("unknown key 'n'", ":2:notebooks.02.n"),
        "notebooks:\n  '09': {n: 3}\n": ("no notebooks/09_*.ipynb", ":2:notebooks.09"),
        "run_dir: /tmp/x\n": ("set by the runner", ":1:run_dir"),
        "seed: [1\n": ("not valid YAML", ":2"),
        "seed: -1\n": ("must be >= 0, got -1", ":1:seed"),
        "notebooks:\n  '01':\n    n: 2.5\n": ("expected an integer", ":3:notebooks.01.n"),
        "notebooks:\n  '01': {stamp: 1}\n": ("expected true or false", ":2:notebooks.01.stamp"),
    }
    for text, (what, where) in cases.items():
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(PipelineError) as err:
            resolve_parameters(load_config(path), stages)
        assert what in str(err.value) and str(err.value).endswith(f"bad.yaml{where}"), (text, str(err.value))
    with pytest.raises(PipelineError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(PipelineError, match="is a folder"):
        load_config(tmp_path)


@pytest.mark.parametrize("text, where, what", [
    ('notebooks:\n  "03": {epochs: "two"}\n', "notebooks.03.epochs", "expected an integer"),
    ('notebooks:\n  "01": {n_train_videos: -5}\n', "notebooks.01.n_train_videos", "must be >= 1, got -5"),
    ('notebooks:\n  "03": {batch_size: 0}\n', "notebooks.03.batch_size", "must be >= 1, got 0"),
    ('notebooks:\n  "01": {min_duration: 40.0}\n', "notebooks.01.min_duration", "must be <= max_duration"),
    ('notebooks:\n  "05": {models: [mesm, detr]}\n', "notebooks.05.models", "expected one of"),
    ('notebooks:\n  "04": {step_ablation: [1, 0]}\n', "notebooks.04.step_ablation", "must be >= 1, got 0"),
    ("device: gpu\n", "device", "expected a value matching"),
])
def test_real_notebook_parameters_are_checked_before_any_stage(tmp_path, text, where, what):
    """Defect 6: bad values failed inside a stage (or 'completed' it), and the failed run had already
    deleted stage 03's resume checkpoints; now the run stops before any stage and touches nothing."""
    config = tmp_path / "bad.yaml"
    config.write_text("seed: 0\n" + text)
    run_dir = tmp_path / "run"
    resume = run_dir / "checkpoints" / "03_coarse" / "xpool_seed0" / "last.pt"
    resume.parent.mkdir(parents=True)
    resume.write_bytes(b"resume state")
    with pytest.raises(PipelineError) as err:
        run_pipeline(config, run_dir=run_dir)
    assert what in str(err.value) and str(err.value).endswith(f"bad.yaml:{1 + text.count(chr(10))}:{where}")
    assert resume.read_bytes() == b"resume state" and not (run_dir / "manifests").exists()


def test_stage_selection_errors(toy):
    for selection in ("", ",", " , "):
        with pytest.raises(PipelineError, match="names no stage"):
            toy.run(stages=selection)
    with pytest.raises(PipelineError, match="unknown stages"):
        toy.run(stages="05")
    with pytest.raises(PipelineError, match=r"02_sum needs 01_make to run first \(c2f run --stages 01,02"):
        toy.run(stages="02")
    assert not toy.run_dir.exists()   # refused before the folder was made
    assert toy.run(stages="1") == {"01_make": RAN}   # "1" is "01"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_before_stage_01(toy):
    write_notebook(toy.notebooks / "01_make.ipynb", 'run_dir = "."\nseed = 0\nn = 3\nstamp = False\ndevice = "auto"',
                   MAKE)
    with pytest.raises(PipelineError, match=r"no CUDA device is visible.*, --device$"):
        toy.run(device="cuda")
    toy.config.write_text("seed: 2\nnotebooks:\n  '01': {device: cuda}\n")
    with pytest.raises(PipelineError, match=r"no CUDA device is visible.*toy.yaml:3:notebooks.01.device$"):
        toy.run()
    assert not toy.run_dir.exists()


def test_second_run_into_a_busy_folder_names_the_holder(toy):
    with folder_lock(toy.run_dir):
        with pytest.raises(FolderBusyError, match=f"in use by process {os.getpid()} .*wait for it to finish"):
            toy.run()
        assert toy.status()["01_make"]["state"] == "missing"
        assert run_status(toy.run_dir, toy.config, notebooks_dir=toy.notebooks)["running"]["pid"] == os.getpid()
    assert toy.run() == {"01_make": RAN, "02_sum": RAN}     # released when the holder is done


def _c2f(*args: str, cwd: Path, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import sys; from c2f_lib.cli import main; sys.exit(main())",
                             *args], cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_cli_run_is_quiet_prints_report_and_stops_cleanly_on_ctrl_c(toy, tmp_path):
    """Through the command: no kernel log lines, a one-line Ctrl-C message naming the stage, a manifest
    that says 'interrupted', and a rerun that resumes. (The runner's notebooks folder is fixed in the
    CLI, so this runs the toy stages through a small script.)"""
    script = tmp_path / "toy_c2f.py"
    script.write_text(
        "import sys\nfrom pathlib import Path\nimport c2f_lib.pipeline.runner as runner\n"
        f"runner.NOTEBOOKS_DIR = Path({str(toy.notebooks)!r})\n"
        "from c2f_lib.pipeline.stage_hash import Library\n"
        f"_run = runner.run_pipeline\nrunner.run_pipeline = lambda *a, **k: _run(*a, library=Library(Path({str(toy.lib)!r})), "
        "notebooks_dir=runner.NOTEBOOKS_DIR, **k)\n"
        "from c2f_lib.cli import main\nsys.exit(main())\n")
    write_notebook(toy.notebooks / "02_sum.ipynb", 'run_dir = "."\nscale = 1\nwait = False',
                   "import time\nfrom pathlib import Path\n(Path(run_dir) / 'started').write_text('')\n"
                   "while wait:\n    time.sleep(0.1)\n" + SUM)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, str(script), "run", "--config", str(toy.config), "--run-dir", str(toy.run_dir)]
    toy.config.write_text("seed: 2\nnotebooks:\n  '02': {wait: true}\n")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 120
    while not (toy.run_dir / "started").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)                       # Ctrl-C reaches the whole process group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert err.strip().splitlines()[-1] == "c2f run: interrupted in 02_sum; rerun to resume", err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert toy.manifest("02_sum")["status"] == "interrupted"
    toy.config.write_text("seed: 2\n")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "[skip] 01_make: fresh" in done.stdout and "[run ] 02_sum (stale: last run interrupted" in done.stdout
    assert "TCP" not in done.stdout + done.stderr and "KeyboardInterrupt" not in done.stdout + done.stderr
    assert f"c2f status {toy.run_dir}" in done.stdout and "no report yet" in done.stdout


def test_status_shows_state_time_outputs_and_report(toy, capsys):
    from c2f_lib.pipeline.status import format_status

    toy.run_dir.mkdir()
    assert {name: row["state"] for name, row in toy.status().items()} == {"01_make": "missing", "02_sum": "missing"}
    with pytest.raises(UserError, match="not a run folder"):   # no recorded config to judge by
        run_status(toy.run_dir, notebooks_dir=toy.notebooks)
    toy.run()
    assert run_status(toy.run_dir, notebooks_dir=toy.notebooks, library=Library(toy.lib))["config"] == (
        f"{toy.config}, as the last run recorded it")
    (toy.run_dir / "report.md").write_text("# report")
    status = run_status(toy.run_dir, toy.config, notebooks_dir=toy.notebooks, library=Library(toy.lib))
    text = format_status(status)
    assert "01_make                  fresh" in text and "every stage is fresh" in text
    assert f"report: {toy.run_dir / 'report.md'}" in text
    row = status["stages"][0]
    assert row["wall_time_s"] > 0 and row["finished_at"] and "data/numbers.txt" in row["files"]
    (toy.lib / "total.py").write_text("def total(nums, scale):\n    return 0\n")
    text = format_status(run_status(toy.run_dir, toy.config, notebooks_dir=toy.notebooks, library=Library(toy.lib)))
    assert "why: library changed: toylib/total.py" in text and "1 stage(s) would run: 02_sum" in text


@pytest.mark.parametrize("config", sorted((REPO_ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_pass_the_parameter_checks(config):
    """Every config in configs/ resolves against the real notebooks (a typo would fail only at run time)."""
    params = resolve_parameters(load_config(config), discover_stages())
    assert set(params) == {stage.number for stage in discover_stages()}
