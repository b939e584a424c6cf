"""Small helpers every stage uses: seeding, device choice, atomic writes, provenance."""
from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from c2f_lib.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
# Set by `c2f run` for each stage's kernel: the notebook it runs and the run folder.
STAGE_ENV, RUN_DIR_ENV = "C2F_STAGE", "C2F_RUN_DIR"
# Packages whose versions are recorded next to every output.
TRACKED_PACKAGES = (
    "torch", "torchvision", "open_clip_torch", "transformers", "numpy", "papermill",
    "decord", "av", "h5py", "faiss-cpu", "c2f",
)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) so a run is reproducible."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


class DeviceError(UserError, ValueError):
    """A device name that is unknown, or names a GPU this machine does not have."""


def resolve_device(name: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'. Explicit names are checked."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name != "cpu" and not (name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise DeviceError(f"unknown device {name!r}: use auto, cpu or cuda[:N]")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} requested but no CUDA device is visible; use device auto or cpu")
        index = int(name[5:] or 0)
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) "
                              f"are visible")
    return name


def model_device(model: object):
    """The device of a model's first parameter (CPU for a model without any, e.g. a stand-in)."""
    import torch

    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if params else None
    return first.device if first is not None else torch.device("cpu")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds.

    Readers never see a half-written file, and an interrupted write leaves the old file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; the file gets what open() would give
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (/proc), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, strict: bool = False) -> None:
    """`strict`: refuse NaN and infinity (Python writes them, but they are not JSON other tools read)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str, allow_nan=not strict) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit(repo: str | os.PathLike | None = None) -> str:
    """The checked-out commit (with '+dirty' when the tree has changes), or 'unknown'."""
    repo = Path(repo) if repo else REPO_ROOT
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def provenance(config: dict[str, Any] | None = None, seed: int | None = None) -> dict[str, Any]:
    """What to store next to any output so it can be reproduced.

    Paths inside the run folder or the repository are written relative to them (``<run_dir>/...``,
    ``<repo>/...``), and a notebook kernel's argv (a random connection file) is replaced by the stage
    that ran it, so the same work gives the same bytes wherever it ran.
    """
    return {
        "config": portable(config or {}),
        "seed": seed,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "argv": command_line(),
        "host": platform.node(),
    }


def command_line() -> list[str]:
    """What is running: the stage the runner named (in its kernel), a notebook kernel, or this program's argv."""
    if os.environ.get(STAGE_ENV):
        return [f"c2f run: {os.environ[STAGE_ENV]}"]
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program.startswith("ipykernel"):
        return ["notebook kernel"]
    return [program, *sys.argv[1:]]


def portable(value: Any) -> Any:
    """`value` with absolute paths under the run folder ($C2F_RUN_DIR) or the repository made relative."""
    if isinstance(value, dict):
        return {key: portable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(item) for item in value]
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str) and os.path.isabs(value):
        for base, name in ((os.environ.get(RUN_DIR_ENV), "<run_dir>"), (str(REPO_ROOT), "<repo>")):
            if base and (value == base or value.startswith(base.rstrip(os.sep) + os.sep)):
                return name + value[len(base.rstrip(os.sep)):]
    return value
