"""Stage 05's headline numbers: each fine model's mean ± std over seeds, per split.

Validation numbers come from training itself (the checkpoint extra's ``summary.best_val``, the
best epoch's validation metrics), so reporting them costs no extra evaluation pass. They sit
under "val" next to the held-out splits, which is where the report's `choose_fine` looks first.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd


def best_val(extra: Mapping) -> dict[str, float]:
    """The best epoch's validation metrics recorded by `train_or_load` (empty when absent)."""
    return dict((extra.get("summary") or {}).get("best_val") or {})


def summarise_seeds(results: Mapping[tuple[str, int, str], Mapping[str, float]],
                    extras: Mapping[tuple[str, int], Mapping], metrics: Sequence[str]
                    ) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, dict[str, dict[str, float]]]]:
    """(mean, std) as {split: {model: {metric: value}}} over seeds, with "val" first.

    results: (model, seed, split) -> metrics on that held-out split; extras: (model, seed) -> the
    checkpoint extra. A metric missing for some seed of a model is left out for that model.
    """
    per_split: dict[str, dict[str, list[Mapping[str, float]]]] = {"val": {}}
    for (name, _), extra in extras.items():
        per_split["val"].setdefault(name, []).append(best_val(extra))
    for (name, _, split), values in results.items():
        per_split.setdefault(split, {}).setdefault(name, []).append(values)
    mean: dict = {}
    std: dict = {}
    for split, models in per_split.items():
        for name, runs in models.items():
            have = [m for m in metrics if all(isinstance(r.get(m), (int, float)) for r in runs)]
            mean.setdefault(split, {})[name] = {m: float(np.mean([r[m] for r in runs])) for m in have}
            std.setdefault(split, {})[name] = {m: float(np.std([r[m] for r in runs])) for m in have}
    return mean, std


def results_table(mean: Mapping, std: Mapping, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per model (in the order first seen), one "mean ± std" column per (split, metric)."""
    models = list(dict.fromkeys(name for split in mean.values() for name in split))
    columns = pd.MultiIndex.from_tuples([(split, m) for split in mean for m in metrics], names=["split", "metric"])
    rows = [[_cell(mean[split].get(name, {}), std[split].get(name, {}), m) for split, m in columns]
            for name in models]
    return pd.DataFrame(rows, index=pd.Index(models, name="model"), columns=columns)


def _cell(mean: Mapping[str, float], std: Mapping[str, float], metric: str) -> str:
    return f"{mean[metric]:.2f} ± {std[metric]:.2f}" if metric in mean else "-"
