"""How much the coarse margins move when only the tiny CLIP is retrained (its training seed).

`configs/full.yaml` varies the coarse heads' seeds on one set of features; this varies the features: for each
seed it trains the tiny CLIP of notebook 02 (default config), extracts a feature store of its own, trains
mean-pool, X-Pool and T-MASS as notebook 03 does (seed 0) and prints t2v R@1 (correct protocol) on val and test
with the margins over mean-pool. Seed 0 reproduces the default run's numbers exactly at the same thread count.

Run after `make demo` (it reads the dataset of outputs/default; about 2.3 min per seed on 2 cores):

    OMP_NUM_THREADS=2 .venv/bin/python tools/coarse_spread_over_tiny_clip.py --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import yaml

from c2f_lib.evaluation.retrieval import retrieval_metrics, seeded_scores
from c2f_lib.features.extract import ExtractConfig, extract_dataset
from c2f_lib.features.store_bundles import load_coarse_split
from c2f_lib.features.tiny_clip import TinyClipBackbone, TinyClipConfig, train_tiny_clip
from c2f_lib.paths import RunPaths
from c2f_lib.training.coarse import train_or_load_coarse
from c2f_lib.training.coarse_presets import preset

SPLITS = ("val", "test")


def coarse_recall(run_dir: Path, work_dir: Path, tiny_seed: int, config: dict) -> dict[str, dict[str, float]]:
    """method -> split -> t2v R@1 with a tiny CLIP trained from `tiny_seed`; the rest as the run config's
    notebooks 02 and 03 (their parameters the config leaves out take the notebooks' defaults, written here)."""
    paths = RunPaths(run_dir)
    dataset = paths.dataset_dir("synthmoments")
    features, coarse = config["02"], config["03"]
    tiny_cfg = TinyClipConfig(steps=features["tiny_steps"], batch_size=features["tiny_batch_size"],
                              width=features["tiny_width"], embed_dim=128, lr=2e-3,
                              frames_per_clip=features["frames_per_clip"], clip_len=features["clip_len"],
                              seed=tiny_seed)
    model, _ = train_tiny_clip(dataset, tiny_cfg)
    backbone = TinyClipBackbone(model.eval().requires_grad_(False), weights=f"tinyclip-seed{tiny_seed}")
    out = work_dir / f"tiny_seed{tiny_seed}"
    store = out / "features.h5"
    extract_cfg = ExtractConfig(num_frames=features["num_frames"], clip_len=features["clip_len"],
                                frames_per_clip=features["frames_per_clip"])
    extract_dataset(dataset, backbone, store, extract_cfg, replace_stale=True)
    splits = {s: load_coarse_split(store, paths.captions_file("synthmoments", s)) for s in ("train", *SPLITS)}
    base = preset("synthmoments")
    _, F, D = splits["train"].frames.shape
    configs = {"meanpool": base.meanpool_config(dim=D), "xpool": base.xpool_config(dim=D, dropout=0.1),
               "tmass": base.tmass_config(dim=D, num_frames=F, dropout=0.1, support_weight=0.8,
                                          num_trials=coarse["num_trials"])}
    recall = {}
    for method, model_config in configs.items():
        train_cfg = base.train_config(epochs=coarse["epochs"], batch_size=coarse["batch_size"], lr=1e-3, seed=0,
                                      device="cpu", eval_chunk_size=16, show_progress=False)
        torch.manual_seed(0)   # initialisation, as notebook 03
        head, _ = train_or_load_coarse(method, model_config, splits["train"], splits["val"], train_cfg,
                                       out / f"{method}.pt")
        recall[method] = {s: retrieval_metrics(seeded_scores(head, splits[s], "correct", 16, seed=0),
                                               splits[s].text_to_video)["t2v_R@1"] for s in SPLITS}
    return recall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("outputs/default"))
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/tiny_clip_spread"))
    parser.add_argument("--config", type=Path, default=Path("configs/default.yaml"), help="the run's config")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text())["notebooks"]
    margins = {m: {s: [] for s in SPLITS} for m in ("xpool", "tmass")}
    for seed in args.seeds:
        recall = coarse_recall(args.run_dir, args.work_dir, seed, config)
        print(f"tiny CLIP seed {seed}: " + json.dumps({m: {s: round(v, 1) for s, v in r.items()}
                                                       for m, r in recall.items()}), flush=True)
        for method, per_split in margins.items():
            for split in SPLITS:
                per_split[split].append(recall[method][split] - recall["meanpool"][split])
    for method, per_split in margins.items():
        print(method, "- mean-pool: " + ", ".join(
            f"{split} {' / '.join(f'{d:+.1f}' for d in diffs)} (mean {np.mean(diffs):+.1f} ± {np.std(diffs):.1f})"
            for split, diffs in per_split.items()))


if __name__ == "__main__":
    main()
