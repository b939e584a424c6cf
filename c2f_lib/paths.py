"""Where each stage reads and writes inside a run directory.

Every notebook gets the same ``run_dir``; these names are the contract between stages.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Caches reused across runs (e.g. the tiny CLIP trained on SynthMoments) live here.
DEFAULT_CACHE_DIR = Path(__file__).resolve().parent.parent / "data" / "cache"


@dataclass(frozen=True)
class RunPaths:
    run_dir: Path

    def __init__(self, run_dir: str | Path):
        object.__setattr__(self, "run_dir", Path(run_dir).resolve())

    def dataset_dir(self, dataset: str) -> Path:
        """Annotations (+ videos for generated data): moments_{split}.jsonl, captions_{split}.jsonl."""
        return self.run_dir / "data" / dataset

    def moments_file(self, dataset: str, split: str) -> Path:
        return self.dataset_dir(dataset) / f"moments_{split}.jsonl"

    def captions_file(self, dataset: str, split: str) -> Path:
        return self.dataset_dir(dataset) / f"captions_{split}.jsonl"

    def feature_store(self, dataset: str, backbone: str) -> Path:
        return self.run_dir / "features" / f"{dataset}__{backbone}.h5"

    def checkpoints(self, stage: str) -> Path:
        return self.run_dir / "checkpoints" / stage

    def metrics_file(self, stage: str) -> Path:
        return self.run_dir / "metrics" / f"{stage}.json"

    def predictions(self, stage: str) -> Path:
        return self.run_dir / "predictions" / stage

    @property
    def figures(self) -> Path:
        return self.run_dir / "figures"

    @property
    def executed(self) -> Path:
        return self.run_dir / "executed"

    @property
    def manifests(self) -> Path:
        return self.run_dir / "manifests"

    @property
    def report(self) -> Path:
        """The evaluation report stage 06 writes (markdown)."""
        return self.run_dir / "report.md"
