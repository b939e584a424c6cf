"""`c2f run`: execute notebooks/NN_*.ipynb in order with papermill, as one resumable pipeline.

Each notebook is a *stage*. The runner injects its parameters from a YAML config (shared keys plus
a per-notebook section), writes the executed notebook to ``<run_dir>/executed/`` and a manifest to
``<run_dir>/manifests/``. A stage whose manifest records the same *stage hash* (its parameters,
its notebook's code and the hashes of every stage before it) and whose outputs still exist is
skipped, so an interrupted run resumes where it stopped; ``--force`` reruns everything selected.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from c2f_lib.paths import RunPaths
from c2f_lib.utils import atomic_write_json, package_versions, git_commit, read_json

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
STAGE_PATTERN = re.compile(r"^(\d\d)_([A-Za-z0-9_]+)\.ipynb$")
# Parameters the runner supplies itself; a config may not set them.
RUNNER_KEYS = ("run_dir",)


class PipelineError(RuntimeError):
    """A problem with the config, the notebooks or a stage run; the message says which."""


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
        raise PipelineError(f"{notebooks_dir}: several notebooks share the prefix {duplicates}")
    return stages


def load_config(path: str | Path) -> PipelineConfig:
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise PipelineError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: expected a mapping at the top level")
    per_notebook = raw.pop("notebooks", None) or {}
    if not isinstance(per_notebook, dict):
        raise PipelineError(f"{path}: 'notebooks' must map a two-digit prefix to a mapping")
    sections = {}
    for key, section in per_notebook.items():
        key = f"{key:02d}" if isinstance(key, int) else str(key)
        if not re.fullmatch(r"\d\d", key) or not isinstance(section, dict):
            raise PipelineError(f"{path}: notebooks.{key}: expected a two-digit prefix mapping to keys")
        sections[key] = section
    for key in RUNNER_KEYS:
        if key in raw or any(key in s for s in sections.values()):
            raise PipelineError(f"{path}: '{key}' is set by the runner (use --run-dir)")
    return PipelineConfig(name=path.stem, shared=raw, per_notebook=sections)


def notebook_parameters(stage: Stage) -> dict[str, Any]:
    """Names and defaults declared in the notebook's `parameters` cell."""
    import nbformat

    nb = nbformat.read(stage.path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise PipelineError(f"{stage.path}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    namespace: dict[str, Any] = {}
    try:
        exec(compile(cells[0].source, str(stage.path), "exec"), {}, namespace)
    except Exception as err:
        raise PipelineError(f"{stage.path}: parameters cell does not run on its own ({err})") from None
    return {k: v for k, v in namespace.items() if not k.startswith("_")}


def resolve_parameters(config: PipelineConfig, stages: list[Stage]) -> dict[str, dict[str, Any]]:
    """The parameters to inject per stage; unknown keys are errors."""
    declared = {s.number: notebook_parameters(s) for s in stages}
    by_number = {s.number: s for s in stages}
    missing = sorted(set(config.per_notebook) - set(by_number))
    if missing:
        raise PipelineError(f"config '{config.name}' has sections for {missing} but there is no "
                            f"notebooks/<NN>_*.ipynb with that prefix")
    for key in config.shared:
        if not any(key in params for params in declared.values()):
            raise PipelineError(f"config '{config.name}': unknown key '{key}' (no notebook declares it)")
    resolved = {}
    for stage in stages:
        section = config.per_notebook.get(stage.number, {})
        unknown = sorted(set(section) - set(declared[stage.number]))
        if unknown:
            raise PipelineError(f"config '{config.name}': notebooks.{stage.number}: unknown keys {unknown}; "
                                f"{stage.path.name} declares {sorted(declared[stage.number])}")
        params = {k: v for k, v in config.shared.items() if k in declared[stage.number]}
        params.update(section)
        resolved[stage.number] = params
    return resolved


def _code_digest(stage: Stage) -> str:
    """Hash of the notebook's code (not outputs or metadata), so editing a cell reruns the stage."""
    import nbformat

    nb = nbformat.read(stage.path, as_version=4)
    code = "\n# ---\n".join(c.source for c in nb.cells if c.cell_type == "code")
    return hashlib.sha256(code.encode()).hexdigest()


def stage_hashes(stages: list[Stage], params: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Chained hashes: a stage's hash covers its parameters, its code and every earlier stage."""
    hashes, previous = {}, ""
    for stage in stages:
        payload = json.dumps({"params": params[stage.number], "code": _code_digest(stage),
                              "upstream": previous}, sort_keys=True, default=str)
        previous = hashes[stage.number] = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return hashes


# ---------------------------------------------------------------------------------------------
# manifests


def _snapshot(run_dir: Path) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) for every file in the run dir except the runner's own folders."""
    skip = {"executed", "manifests"}
    files = {}
    for path in run_dir.rglob("*"):
        rel = path.relative_to(run_dir)
        if path.is_file() and rel.parts[0] not in skip and not path.name.startswith("."):
            stat = path.stat()
            files[str(rel)] = (stat.st_size, stat.st_mtime_ns)
    return files


def manifest_path(run_dir: Path, stage: Stage) -> Path:
    return RunPaths(run_dir).manifests / f"{stage.name}.json"


def is_up_to_date(run_dir: Path, stage: Stage, stage_hash: str) -> bool:
    path = manifest_path(run_dir, stage)
    if not path.exists():
        return False
    try:
        manifest = read_json(path)
    except ValueError:
        return False
    return (manifest.get("status") == "completed" and manifest.get("stage_hash") == stage_hash
            and all((run_dir / rel).exists() for rel in manifest.get("outputs", {})))


# ---------------------------------------------------------------------------------------------
# running


@dataclass
class StageResult:
    stage: str
    status: str          # "completed", "skipped" or "failed"
    seconds: float


def _failure_message(stage: Stage, executed: Path, err: Exception) -> str:
    cell = getattr(err, "exec_count", None)
    ename = getattr(err, "ename", type(err).__name__)
    evalue = getattr(err, "evalue", str(err))
    where = f"cell In [{cell}]" if cell is not None else "kernel start-up"
    return (f"stage {stage.name} failed at {where}: {ename}: {evalue}\n"
            f"  partially executed notebook kept at {executed}")


def run_stage(stage: Stage, params: dict[str, Any], stage_hash: str, run_dir: Path,
              upstream: dict[str, str]) -> StageResult:
    import papermill as pm

    paths = RunPaths(run_dir)
    executed = paths.executed / stage.path.name
    executed.parent.mkdir(parents=True, exist_ok=True)
    injected = dict(params, run_dir=str(run_dir))
    before = _snapshot(run_dir)
    started = time.time()
    manifest: dict[str, Any] = {
        "stage": stage.name, "notebook": str(stage.path.relative_to(REPO_ROOT)
                                             if stage.path.is_relative_to(REPO_ROOT) else stage.path),
        "stage_hash": stage_hash, "parameters": injected, "seed": injected.get("seed"),
        "inputs": {"upstream_stage_hashes": upstream, "notebook_code_sha256": _code_digest(stage)},
        "started_at": datetime.now(timezone.utc).isoformat(),
        "versions": package_versions(), "git_commit": git_commit(),
    }
    env_before = {k: os.environ.get(k) for k in ("C2F_HEADLESS", "MPLBACKEND")}
    os.environ.update(C2F_HEADLESS="1", MPLBACKEND="Agg")  # inherited by the kernel
    try:
        pm.execute_notebook(str(stage.path), str(executed), parameters=injected, kernel_name="python3",
                            cwd=str(stage.path.parent), progress_bar=False,
                            request_save_on_cell_execute=True)
        status, error = "completed", None
    except Exception as err:  # PapermillExecutionError, kernel death, missing kernel...
        status, error = "failed", _failure_message(stage, executed, err)
    finally:
        for key, value in env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    after = _snapshot(run_dir)
    manifest.update(
        status=status, error=error, wall_time_s=round(time.time() - started, 2),
        finished_at=datetime.now(timezone.utc).isoformat(),
        outputs={rel: {"bytes": size} for rel, (size, mtime) in sorted(after.items())
                 if before.get(rel) != (size, mtime)},
        executed_notebook=str(executed.relative_to(run_dir)),
    )
    atomic_write_json(manifest_path(run_dir, stage), manifest)
    if error:
        raise PipelineError(error)
    return StageResult(stage.name, status, manifest["wall_time_s"])


def select_stages(stages: list[Stage], selection: str | None) -> list[Stage]:
    if not selection:
        return stages
    wanted = [s.strip() for s in selection.split(",") if s.strip()]
    known = {s.number: s for s in stages}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise PipelineError(f"unknown stages {unknown}; available: {sorted(known)}")
    return [s for s in stages if s.number in wanted]


def run_pipeline(config_path: str | Path, run_dir: str | Path | None = None, stages: str | None = None,
                 device: str | None = None, force: bool = False,
                 notebooks_dir: Path = NOTEBOOKS_DIR) -> list[StageResult]:
    from tqdm import tqdm

    config = load_config(config_path)
    if device is not None:
        config.shared["device"] = device
    all_stages = discover_stages(notebooks_dir)
    if not all_stages:
        raise PipelineError(f"{notebooks_dir}: no notebooks named NN_<name>.ipynb")
    params = resolve_parameters(config, all_stages)
    hashes = stage_hashes(all_stages, params)
    selected = select_stages(all_stages, stages)
    run_dir = Path(run_dir or REPO_ROOT / "outputs" / config.name).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "run_config.json",
                      {"config_file": str(config_path), "shared": config.shared,
                       "notebooks": config.per_notebook, "stage_hashes": hashes,
                       "versions": package_versions(), "git_commit": git_commit()})
    results = []
    bar = tqdm(selected, desc="pipeline", unit="stage", file=sys.stdout, ascii=True)
    for stage in bar:
        bar.set_postfix_str(stage.name)
        upstream = {s.number: hashes[s.number] for s in all_stages if s.number < stage.number}
        if not force and is_up_to_date(run_dir, stage, hashes[stage.number]):
            results.append(StageResult(stage.name, "skipped", 0.0))
            tqdm.write(f"[skip] {stage.name}: up to date (manifest matches)")
            continue
        tqdm.write(f"[run ] {stage.name}")
        result = run_stage(stage, params[stage.number], hashes[stage.number], run_dir, upstream)
        tqdm.write(f"[done] {stage.name} in {result.seconds:.1f} s")
        results.append(result)
    return results


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pipeline config, e.g. configs/default.yaml")
    parser.add_argument("--stages", help="comma-separated stage prefixes to run, e.g. 01,03 (default: all)")
    parser.add_argument("--run-dir", help="output folder (default: outputs/<config name>)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides the config's device")
    parser.add_argument("--force", action="store_true", help="rerun stages even when their manifest matches")


def main(args: argparse.Namespace) -> int:
    started = time.time()
    try:
        results = run_pipeline(args.config, run_dir=args.run_dir, stages=args.stages,
                               device=args.device, force=args.force)
    except PipelineError as err:
        print(f"c2f run: {err}", file=sys.stderr)
        return 1
    ran = sum(r.status == "completed" for r in results)
    print(f"c2f run: {ran} stage(s) run, {len(results) - ran} skipped, {time.time() - started:.1f} s total")
    return 0
