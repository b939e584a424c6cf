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


def shared_datasets_dir() -> Path:
    """../shared/datasets beside the repo (CI has it), or $C2F_SHARED_DATASETS."""
    return Path(os.environ.get("C2F_SHARED_DATASETS", REPO_ROOT.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    path = shared_datasets_dir()
    if not path.is_dir():
        pytest.skip(f"real annotation files not found at {path} (set C2F_SHARED_DATASETS)")
    return path
