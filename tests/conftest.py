"""Shared test settings: offline, headless, single-threaded BLAS for 2-core CI machines."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("C2F_HEADLESS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir(name: str) -> Path:
    """../shared/<name> beside the repo (CI has it), or $C2F_SHARED_<NAME>."""
    return Path(os.environ.get(f"C2F_SHARED_{name.upper()}", REPO_ROOT.parent / "shared" / name))


def _present(name: str, what: str) -> Path:
    path = shared_dir(name)
    if not path.is_dir():
        pytest.skip(f"{what} not found at {path} (set C2F_SHARED_{name.upper()})")
    return path


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    return _present("datasets", "real annotation files")


@pytest.fixture(scope="session")
def shared_golden() -> Path:
    """Reference data made by running the official Moment-DETR, QD-DETR, MESM, X-Pool and T-MASS code."""
    return _present("golden", "golden reference data of the official code")
