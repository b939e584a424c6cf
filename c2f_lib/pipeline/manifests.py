"""Stage manifests: what a stage ran on, what it wrote, and whether that is still current.

``<run_dir>/manifests/<stage>.json`` records the stage's inputs (`StageInputs`) and hash, its status,
times, and every output file with its size, mtime and sha256. A stage is *fresh* when its last run
completed, its inputs are unchanged and every output is still there with the same content (a file
whose size or mtime moved is hashed again, so touching a file is not a change); otherwise it is
*stale*, or *missing* when it never ran. `StageState.reasons` says why.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from c2f_lib.paths import RunPaths
from c2f_lib.pipeline.stage_hash import StageInputs, file_sha256, outputs_digest
from c2f_lib.utils import read_json

# The runner's own folders: never a stage's output.
RUNNER_FOLDERS = ("executed", "manifests")
FRESH, STALE, MISSING = "fresh", "stale", "missing"


def manifest_path(run_dir: Path, stage_name: str) -> Path:
    return RunPaths(run_dir).manifests / f"{stage_name}.json"


def read_manifest(run_dir: Path, stage_name: str) -> dict[str, Any] | None:
    """The stage's manifest, or None when it has none (or an unreadable one: it reruns)."""
    path = manifest_path(run_dir, stage_name)
    try:
        manifest = read_json(path)
    except (FileNotFoundError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def snapshot(run_dir: Path) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) for every file in the run dir but the runner's own and hidden ones."""
    files = {}
    for path in run_dir.rglob("*"):
        rel = path.relative_to(run_dir)
        if rel.parts[0] not in RUNNER_FOLDERS and not any(p.startswith(".") for p in rel.parts) and path.is_file():
            stat = path.stat()
            files[rel.as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return files


def _entry(path: Path, known: dict[str, Any] | None = None) -> dict[str, Any]:
    """{bytes, mtime_ns, sha256} of a file; the hash is reused from `known` when size and mtime match."""
    stat = path.stat()
    if known and (known.get("bytes"), known.get("mtime_ns")) == (stat.st_size, stat.st_mtime_ns):
        return known
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_sha256(path)}


def record_outputs(run_dir: Path, before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]],
                   previous: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The files this attempt wrote, plus the earlier attempts' outputs that are still there: a resumed
    stage writes only what was left, yet all of its outputs must be checked on the next run."""
    written = {rel for rel, stat in after.items() if before.get(rel) != stat}
    earlier = (previous or {}).get("outputs", {})
    kept = {rel for rel in earlier if rel in after} - written
    return {rel: _entry(run_dir / rel, earlier.get(rel)) for rel in sorted(written | kept)}


def output_problems(run_dir: Path, outputs: dict[str, dict[str, Any]]) -> list[str]:
    """Why the recorded outputs no longer stand: missing or changed files (first few named)."""
    missing, changed = [], []
    for rel, recorded in sorted(outputs.items()):
        path = run_dir / rel
        if not path.is_file():
            missing.append(rel)
        elif _entry(path, recorded)["sha256"] != recorded.get("sha256"):
            changed.append(rel)
    problems = []
    for what, rels in (("missing", missing), ("changed", changed)):
        if rels:
            more = f" (+{len(rels) - 2} more)" if len(rels) > 2 else ""
            problems.append(f"output{'s' if len(rels) > 1 else ''} {what}: {', '.join(rels[:2])}{more}")
    return problems


@dataclass
class StageState:
    stage: str
    state: str                                   # FRESH, STALE or MISSING
    reasons: list[str] = field(default_factory=list)
    manifest: dict[str, Any] | None = None

    @property
    def completed(self) -> bool:
        """Its last run finished (its outputs exist as a downstream stage's input), fresh or not."""
        return self.manifest is not None and self.manifest.get("status") == "completed"

    @property
    def outputs_digest(self) -> str:
        return self.manifest.get("outputs_digest", "none") if self.completed else "not run"

    def describe(self) -> str:
        return self.state + (f": {'; '.join(self.reasons)}" if self.reasons else "")


def stage_state(run_dir: Path, stage_name: str, inputs: StageInputs) -> StageState:
    manifest = read_manifest(run_dir, stage_name)
    if manifest is None:
        return StageState(stage_name, MISSING, ["never run"])
    if "outputs_digest" not in manifest:
        return StageState(stage_name, STALE, ["manifest written by an older c2f (no content hashes)"], manifest)
    status = manifest.get("status")
    reasons = [] if status == "completed" else [f"last run {status or 'unfinished'}"]
    reasons += inputs.differences(manifest.get("inputs", {}))
    if status == "completed":
        reasons += output_problems(run_dir, manifest.get("outputs", {}))
    return StageState(stage_name, STALE if reasons else FRESH, reasons, manifest)


def build_manifest(stage_name: str, inputs: StageInputs, outputs: dict[str, dict[str, Any]],
                       **fields: Any) -> dict[str, Any]:
    """A manifest for a finished (or failed / interrupted) attempt."""
    return {"stage": stage_name, "stage_hash": inputs.digest(), "inputs": inputs.to_json(),
            "outputs": outputs, "outputs_digest": outputs_digest(outputs), **fields}
