"""`c2f run`: execute notebooks/NN_*.ipynb in order with papermill, as one resumable pipeline.

Each notebook is a *stage*. The runner injects its parameters from a YAML config (shared keys plus
a per-notebook section), checked against the notebooks' declared types and the ranges in
`params.py` before anything runs. It writes the executed notebook to ``<run_dir>/executed/`` and a
manifest to ``<run_dir>/manifests/`` (see manifests.py). A stage is skipped while it is fresh: same
inputs (`stage_hash.StageInputs`: notebook code, parameters, the library source it imports, the
content of every earlier stage's outputs) and all of its outputs unchanged. So an interrupted run
resumes where it stopped, and a change of code, config or upstream output reruns what depends on
it; ``--force`` reruns everything selected. One run at a time holds the folder (c2f_lib/run_lock.py).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import yaml

from c2f_lib.errors import Interrupted, UserError
from c2f_lib.paths import RunPaths
from c2f_lib.pipeline.manifests import (StageState, build_manifest, manifest_path, read_manifest, record_outputs,
                                        snapshot, stage_state)
from c2f_lib.pipeline.params import check_parameter, relation_problems
from c2f_lib.run_lock import folder_lock
from c2f_lib.pipeline.stage_hash import Library, StageInputs
from c2f_lib.utils import (RUN_DIR_ENV, STAGE_ENV, atomic_write_json, command_line, git_commit, package_versions,
                           portable)

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
STAGE_PATTERN = re.compile(r"^(\d\d)_([A-Za-z0-9_]+)\.ipynb$")
# Parameters the runner supplies itself; a config may not set them.
RUNNER_KEYS = ("run_dir",)
# The kernel's own log (its "running over TCP without encryption" warning, the "KeyboardInterrupt caught
# in kernel" that papermill's shutdown interrupt causes) says nothing about the stage: hidden unless --debug.
QUIET_KERNEL = ["--IPKernelApp.log_level=CRITICAL"]
# The kernel draws with the inline backend, as in JupyterLab: every figure a cell draws is embedded in the
# executed notebook as a PNG (with Agg, cells would only show "<Figure size 1000x520 with 9 Axes>").
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


class PipelineError(UserError):
    """A problem with the config, the notebooks or a stage run; the message says which and where."""


@dataclass(frozen=True)
class Stage:
    number: str          # "03"
    name: str            # "03_coarse_retrieval"
    path: Path           # notebooks/03_coarse_retrieval.ipynb


@dataclass
class PipelineConfig:
    name: str
    shared: dict[str, Any]
    per_notebook: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: Path | None = None
    lines: dict[str, int] = field(default_factory=dict)   # "seed" / "notebooks.03.epochs" -> file line

    def where(self, key: str) -> dict[str, Any]:
        """UserError location of a key ("notebooks.03.epochs"): the file, its line and the key."""
        return {"file": self.path, "line": self.lines.get(key), "field": key}


# ---------------------------------------------------------------------------------------------
# discovery and configuration


def discover_stages(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Stage]:
    stages = []
    for path in sorted(Path(notebooks_dir).glob("*.ipynb")):
        match = STAGE_PATTERN.match(path.name)
        if match:
            stages.append(Stage(number=match.group(1), name=path.stem, path=path))
    numbers = [s.number for s in stages]
    duplicates = sorted({n for n in numbers if numbers.count(n) > 1})
    if duplicates:
        raise PipelineError(f"several notebooks share the prefix {duplicates}", notebooks_dir)
    return stages


def _prefix(key: Any) -> str:
    return f"{key:02d}" if isinstance(key, int) else str(key)


def _key_lines(text: str) -> dict[str, int]:
    """"seed" / "notebooks.03.epochs" -> the 1-based line that key is on, from the YAML node tree."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = key.value
                if prefix == "notebooks." and name.isdigit():
                    name = f"{int(name):02d}"
                lines[prefix + name] = key.start_mark.line + 1
                walk(value, f"{prefix}{name}.")

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, "")
    return lines


def load_config(path: str | Path) -> PipelineConfig:
    path = Path(path)
    if not path.exists():
        raise PipelineError("config file not found", path)
    if path.is_dir():
        raise PipelineError("is a folder, expected a YAML config file", path)
    text = path.read_text()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise PipelineError(f"not valid YAML ({getattr(err, 'problem', None) or err})", path,
                            mark.line + 1 if mark else None) from None
    lines = _key_lines(text)
    if not isinstance(raw, dict):
        raise PipelineError("expected a mapping at the top level", path, 1)
    per_notebook = raw.pop("notebooks", None) or {}
    if not isinstance(per_notebook, dict):
        raise PipelineError("must map a two-digit prefix to a mapping", path, lines.get("notebooks"), "notebooks")
    sections = {}
    for key, section in per_notebook.items():
        key = _prefix(key)
        if not re.fullmatch(r"\d\d", key) or not isinstance(section, dict):
            raise PipelineError("expected a two-digit prefix mapping to keys", path,
                                lines.get(f"notebooks.{key}"), f"notebooks.{key}")
        sections[key] = section
    for key in RUNNER_KEYS:
        for name, section in [("", raw)] + [(f"notebooks.{k}.", s) for k, s in sections.items()]:
            if key in section:
                raise PipelineError(f"'{key}' is set by the runner (use --run-dir)", path,
                                    lines.get(name + key), name + key)
    return PipelineConfig(name=path.stem, shared=raw, per_notebook=sections, path=path, lines=lines)


def notebook_parameters(stage: Stage) -> dict[str, Any]:
    """Names and defaults declared in the notebook's `parameters` cell."""
    import nbformat

    nb = nbformat.read(stage.path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise PipelineError(f"expected exactly one cell tagged 'parameters', found {len(cells)}", stage.path)
    namespace: dict[str, Any] = {}
    try:
        exec(compile(cells[0].source, str(stage.path), "exec"), {}, namespace)
    except Exception as err:
        raise PipelineError(f"parameters cell does not run on its own ({err})", stage.path) from None
    return {k: v for k, v in namespace.items() if not k.startswith("_")}


def resolve_parameters(config: PipelineConfig, stages: list[Stage]) -> dict[str, dict[str, Any]]:
    """The parameters to inject per stage, each checked against the notebook's default (its type) and
    its rule in params.py (its range); unknown keys are errors. Nothing runs before this passes."""
    declared = {s.number: notebook_parameters(s) for s in stages}
    by_number = {s.number: s for s in stages}
    for number in sorted(set(config.per_notebook) - set(by_number)):
        raise PipelineError(f"there is no notebooks/{number}_*.ipynb for this section",
                            **config.where(f"notebooks.{number}"))
    for key in config.shared:
        if not any(key in params for params in declared.values()):
            raise PipelineError(f"unknown key '{key}' (no notebook declares it)", **config.where(key))
    resolved = {}
    for stage in stages:
        defaults = declared[stage.number]
        section = config.per_notebook.get(stage.number, {})
        unknown = sorted(set(section) - set(defaults))
        if unknown:
            raise PipelineError(f"unknown key '{unknown[0]}'; {stage.path.name} declares {sorted(defaults)}",
                                **config.where(f"notebooks.{stage.number}.{unknown[0]}"))
        given = {k: (v, k) for k, v in config.shared.items() if k in defaults}
        given.update({k: (v, f"notebooks.{stage.number}.{k}") for k, v in section.items()})
        params = {}
        for name, (value, key) in given.items():
            params[name], problem = check_parameter(stage.number, name, value, defaults[name])
            if problem:
                raise PipelineError(f"{stage.name}: {problem}", **config.where(key))
        for name, problem in relation_problems(stage.number, {**defaults, **params}):
            key = f"notebooks.{stage.number}.{name}" if name in section else name
            raise PipelineError(f"{stage.name}: {name} {problem}", **config.where(key))
        resolved[stage.number] = params
    return resolved


def check_devices(config: PipelineConfig, params: dict[str, dict[str, Any]], from_flag: bool) -> None:
    """A GPU device a stage asks for must exist here; found now, not in the middle of stage 01."""
    from c2f_lib.utils import DeviceError, resolve_device

    for number, values in sorted(params.items()):
        device = values.get("device", "auto")
        if device.startswith("cuda"):
            try:
                resolve_device(device)
            except DeviceError as err:
                where = {"field": "--device"} if from_flag else config.where(
                    f"notebooks.{number}.device" if "device" in config.per_notebook.get(number, {}) else "device")
                raise PipelineError(err.what, **where) from None


def select_stages(stages: list[Stage], selection: str | None) -> list[Stage]:
    if selection is None:
        return stages
    known = {s.number: s for s in stages}
    wanted = [_prefix(int(w)) if w.strip().isdigit() else w.strip() for w in selection.split(",") if w.strip()]
    if not wanted:
        raise PipelineError(f"names no stage; give prefixes such as 01,03 (available: {','.join(known)})",
                            field="--stages")
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise PipelineError(f"unknown stages {unknown}; available: {sorted(known)}", field="--stages")
    return [s for s in stages if s.number in wanted]


# ---------------------------------------------------------------------------------------------
# states and running


def stage_states(run_dir: Path, stages: list[Stage], params: dict[str, dict[str, Any]],
                 library: Library | None = None) -> list[tuple[StageInputs, StageState]]:
    """Every stage's inputs and state, in order (a stage's upstream: every stage before it)."""
    library = library or Library()
    out: list[tuple[StageInputs, StageState]] = []
    for stage in stages:
        upstream = {state.stage: state.outputs_digest for _, state in out}
        inputs = StageInputs.of(stage.path, params[stage.number], upstream, library)
        out.append((inputs, stage_state(run_dir, stage.name, inputs)))
    return out


@dataclass
class StageResult:
    stage: str
    status: str          # "completed", "skipped" or "failed"
    seconds: float


def _failure_message(err: Exception) -> str:
    cell = getattr(err, "exec_count", None)
    ename = getattr(err, "ename", type(err).__name__)
    evalue = str(getattr(err, "evalue", err)).strip().splitlines() or [""]
    where = f"cell In [{cell}]" if cell is not None else "kernel start-up"
    return f"failed at {where}: {ename}: {evalue[0]}"


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables (inherited by the kernel) for the block, then restore them."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _relative(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path)


def run_stage(stage: Stage, params: dict[str, Any], inputs: StageInputs, run_dir: Path,
              previous: dict[str, Any] | None, kernel_logs: bool = False) -> StageResult:
    import papermill as pm

    paths = RunPaths(run_dir)
    executed = paths.executed / stage.path.name
    executed.parent.mkdir(parents=True, exist_ok=True)
    injected = dict(params, run_dir=str(run_dir))
    before = snapshot(run_dir)
    started = time.time()
    record: dict[str, Any] = {
        "notebook": _relative(stage.path), "parameters": injected, "seed": injected.get("seed"),
        "started_at": datetime.now(timezone.utc).isoformat(), "command": command_line(),
        "versions": package_versions(), "git_commit": git_commit(),
    }
    status, error, interrupted = "completed", None, False
    try:
        with _environment(C2F_HEADLESS="1", MPLBACKEND=INLINE_BACKEND, **{STAGE_ENV: _relative(stage.path),
                                                                           RUN_DIR_ENV: str(run_dir)}):
            pm.execute_notebook(str(stage.path), str(executed), parameters=injected, kernel_name="python3",
                                cwd=str(stage.path.parent), progress_bar=False, request_save_on_cell_execute=True,
                                extra_arguments=[] if kernel_logs else QUIET_KERNEL)
    except KeyboardInterrupt:
        status, interrupted = "interrupted", True
    except Exception as err:  # PapermillExecutionError, kernel death, missing kernel...
        if getattr(err, "ename", None) == "KeyboardInterrupt":  # Ctrl-C reached the kernel first
            status, interrupted = "interrupted", True
        else:
            status, error = "failed", _failure_message(err)
    outputs = record_outputs(run_dir, before, snapshot(run_dir), previous)
    manifest = build_manifest(stage.name, inputs, outputs, status=status, error=error,
                              wall_time_s=round(time.time() - started, 2),
                              finished_at=datetime.now(timezone.utc).isoformat(),
                              executed_notebook=str(executed.relative_to(run_dir)), **record)
    atomic_write_json(manifest_path(run_dir, stage.name), manifest)
    if interrupted:
        raise Interrupted(f"in {stage.name}")
    if error:
        raise PipelineError(f"stage {stage.name} {error} (partial notebook: {executed})")
    return StageResult(stage.name, status, manifest["wall_time_s"])


def _check_upstream(selected: list[Stage], all_stages: list[Stage], run_dir: Path) -> None:
    """A selected stage needs every earlier stage to have completed, or to be selected too."""
    chosen = {s.number for s in selected}
    completed = {s.name for s in all_stages if (read_manifest(run_dir, s.name) or {}).get("status") == "completed"}
    for stage in selected:
        needed = [s for s in all_stages if s.number < stage.number and s.number not in chosen
                  and s.name not in completed]
        if needed:
            numbers = ",".join(s.number for s in needed)
            raise PipelineError(f"stage {stage.name} needs {', '.join(s.name for s in needed)} to run first "
                                f"(c2f run --stages {numbers},{','.join(sorted(chosen))}, or without --stages)",
                                field="--stages")


def resolve_run_dir(config: PipelineConfig, run_dir: str | Path | None) -> Path:
    return Path(run_dir or REPO_ROOT / "outputs" / config.name).resolve()


def run_pipeline(config_path: str | Path, run_dir: str | Path | None = None, stages: str | None = None,
                 device: str | None = None, force: bool = False, notebooks_dir: Path = NOTEBOOKS_DIR,
                 library: Library | None = None, kernel_logs: bool = False) -> list[StageResult]:
    """Validate everything, then run the selected stages that are not fresh, in order."""
    from tqdm import tqdm

    config = load_config(config_path)
    if device is not None:
        config.shared["device"] = device
    all_stages = discover_stages(notebooks_dir)
    if not all_stages:
        raise PipelineError("no notebooks named NN_<name>.ipynb", notebooks_dir)
    params = resolve_parameters(config, all_stages)
    check_devices(config, params, from_flag=device is not None)
    selected = select_stages(all_stages, stages)
    run_dir = resolve_run_dir(config, run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise PipelineError("is a file, expected a run folder", run_dir, field="--run-dir")
    _check_upstream(selected, all_stages, run_dir)
    library = library or Library()
    results = []
    with folder_lock(run_dir):
        atomic_write_json(run_dir / "run_config.json",
                          {"config_file": portable(str(Path(config_path).resolve())), "shared": config.shared,
                           "notebooks": config.per_notebook, "command": command_line(),
                           "versions": package_versions(), "git_commit": git_commit()})
        bar = tqdm(total=len(selected), desc="pipeline", unit="stage", file=sys.stdout, ascii=True)
        done: dict[str, StageState] = {}
        for stage in all_stages:
            upstream = {name: state.outputs_digest for name, state in done.items()}
            inputs = StageInputs.of(stage.path, params[stage.number], upstream, library)
            state = stage_state(run_dir, stage.name, inputs)
            if stage in selected:
                bar.set_postfix_str(stage.name)
                if not force and state.state == "fresh":
                    results.append(StageResult(stage.name, "skipped", 0.0))
                    tqdm.write(f"[skip] {stage.name}: fresh")
                else:
                    why = "forced" if force and state.state == "fresh" else state.describe()
                    tqdm.write(f"[run ] {stage.name} ({why})")
                    result = run_stage(stage, params[stage.number], inputs, run_dir, state.manifest, kernel_logs)
                    tqdm.write(f"[done] {stage.name} in {result.seconds:.1f} s")
                    results.append(result)
                    state = stage_state(run_dir, stage.name, inputs)
                bar.update()
            elif state.state != "fresh" and any(s.number > stage.number for s in selected):
                tqdm.write(f"[warn] {stage.name} is {state.describe()}; later stages use its outputs as they are")
            done[stage.name] = state
        bar.close()
    return results


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pipeline config, e.g. configs/default.yaml")
    parser.add_argument("--stages", help="comma-separated stage prefixes to run, e.g. 01,03 (default: all)")
    parser.add_argument("--run-dir", help="output folder (default: outputs/<config name>)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides the config's device")
    parser.add_argument("--force", action="store_true", help="rerun the selected stages even when they are fresh")
    parser.add_argument("--features-root", help="paper recipes (configs/repro/*.yaml) only: the folder their "
                                                "feature paths are relative to, as `c2f repro --features-root`")
    parser.add_argument("--datasets-root", help="paper recipes only: the annotation root, as `c2f repro "
                                                "--datasets-root` (default: as `c2f data`)")


def is_recipe(path: str | Path) -> bool:
    """True for a paper recipe (configs/repro/*.yaml: a top-level `recipe:` key) rather than a pipeline config."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        return False                          # load_config reports the YAML error with its line
    return isinstance(raw, dict) and "recipe" in raw


def run_recipe_config(args: argparse.Namespace) -> int:
    """`c2f run --config configs/repro/<recipe>.yaml`: the recipe, run as `c2f repro` runs it."""
    from c2f_lib.pipeline import recipes

    if args.stages or args.force:
        raise PipelineError("--stages and --force are for pipeline configs; a recipe always trains what "
                            "its checkpoints lack (use `c2f repro --set ...` for overrides)", args.config)
    return recipes.main(argparse.Namespace(recipe=args.config, features_root=args.features_root or ".",
                                           datasets_root=args.datasets_root, run_dir=args.run_dir,
                                           device=args.device or "auto", overrides=[]))


def main(args: argparse.Namespace) -> int:
    if is_recipe(args.config):
        return run_recipe_config(args)
    if getattr(args, "features_root", None) or getattr(args, "datasets_root", None):
        raise PipelineError("--features-root and --datasets-root are for paper recipes (configs/repro/*.yaml)",
                            args.config)
    started = time.time()
    results = run_pipeline(args.config, run_dir=args.run_dir, stages=args.stages, device=args.device,
                           force=args.force, kernel_logs=getattr(args, "debug", False))
    ran = sum(r.status == "completed" for r in results)
    print(f"c2f run: {ran} stage(s) run, {len(results) - ran} skipped, {time.time() - started:.1f} s total")
    run_dir = resolve_run_dir(load_config(args.config), args.run_dir)
    report = RunPaths(run_dir).report
    print(f"report: {report}" if report.exists() else f"no report yet ({report} is written by stage 06)")
    print(f"status: c2f status {run_dir}")
    return 0
