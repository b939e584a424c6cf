"""`c2f status RUN_DIR`: what a run folder holds and whether it is current.

For each stage: fresh, stale or missing (and why: which input or output changed), when it last ran
and for how long, and its outputs; then where the report is, and whether a run holds the folder now.
Freshness is judged as `c2f run` would judge it, against the config the last run recorded
(``run_config.json``) or the one given with ``--config``.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from c2f_lib.errors import UserError
from c2f_lib.paths import RunPaths
from c2f_lib.run_lock import holder
from c2f_lib.pipeline.runner import (NOTEBOOKS_DIR, PipelineConfig, discover_stages, load_config, resolve_parameters,
                                     stage_states)
from c2f_lib.pipeline.stage_hash import Library
from c2f_lib.utils import read_json


@dataclass
class StageRow:
    stage: str
    state: str
    reasons: list[str]
    stage_hash: str | None               # of its last run (the inputs it ran on)
    finished_at: str | None
    wall_time_s: float | None
    outputs: int
    output_bytes: int
    files: list[str]


def recorded_config(run_dir: Path) -> tuple[PipelineConfig, str]:
    """The config the folder's last `c2f run` used (it records it in run_config.json), and its file name."""
    path = run_dir / "run_config.json"
    if not path.is_file():
        raise UserError("not a run folder (no run_config.json: `c2f run --run-dir` writes one)", run_dir)
    recorded = read_json(path)
    source = str(recorded.get("config_file", path))
    config = PipelineConfig(name=Path(source).stem, shared=recorded.get("shared", {}),
                            per_notebook=recorded.get("notebooks", {}), path=path)
    return config, f"{source}, as the last run recorded it"


def run_status(run_dir: str | Path, config_path: str | Path | None = None, notebooks_dir: Path = NOTEBOOKS_DIR,
               library: Library | None = None) -> dict[str, Any]:
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise UserError("not a folder" if run_dir.exists() else "folder not found", run_dir)
    config, label = (load_config(config_path), str(config_path)) if config_path else recorded_config(run_dir)
    stages = discover_stages(notebooks_dir)
    params = resolve_parameters(config, stages)
    rows = []
    for _, state in stage_states(run_dir, stages, params, library):
        manifest = state.manifest or {}
        outputs = manifest.get("outputs", {})
        rows.append(StageRow(state.stage, state.state, state.reasons, manifest.get("stage_hash"),
                             manifest.get("finished_at"),
                             manifest.get("wall_time_s"), len(outputs),
                             sum(entry.get("bytes", 0) for entry in outputs.values()), sorted(outputs)))
    report = RunPaths(run_dir).report
    return {"run_dir": str(run_dir), "config": label, "stages": [asdict(r) for r in rows],
            "report": str(report) if report.exists() else None, "running": holder(run_dir)}


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def format_status(status: dict[str, Any], list_files: bool = False) -> str:
    lines = [f"run folder {status['run_dir']} (config: {status['config']})"]
    if status["running"]:
        who = status["running"]
        lines.append(f"a run holds this folder now: process {who.get('pid', '?')} on {who.get('host', '?')}, "
                     f"since {who.get('since', '?')}")
    lines.append(f"{'stage':24s} {'state':8s} {'hash':8s} {'finished (UTC)':19s} {'time':>8s}  outputs")
    for row in status["stages"]:
        finished = (row["finished_at"] or "")[:19].replace("T", " ")
        seconds = f"{row['wall_time_s']:.1f} s" if row["wall_time_s"] is not None else ""
        outputs = f"{row['outputs']} files, {_size(row['output_bytes'])}" if row["outputs"] else ""
        lines.append(f"{row['stage']:24s} {row['state']:8s} {(row['stage_hash'] or '')[:8]:8s} {finished:19s} "
                     f"{seconds:>8s}  {outputs}")
        lines += [f"    why: {reason}" for reason in row["reasons"]]
        if list_files:
            lines += [f"    {name}" for name in row["files"]]
    stale = [r["stage"] for r in status["stages"] if r["state"] != "fresh"]
    lines.append(f"report: {status['report']}" if status["report"] else "report: none yet (stage 06 writes it)")
    lines.append(f"{len(stale)} stage(s) would run: {', '.join(stale)}" if stale else "every stage is fresh")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a folder `c2f run` wrote (its --run-dir)")
    parser.add_argument("--config", help="judge freshness against this config (default: the one the last run used)")
    parser.add_argument("--files", action="store_true", help="list every output file of every stage")
    parser.add_argument("--json", action="store_true", help="print the status as JSON")


def main(args: argparse.Namespace) -> int:
    status = run_status(args.run_dir, args.config)
    print(json.dumps(status, indent=2) if args.json else format_status(status, args.files))
    return 0
