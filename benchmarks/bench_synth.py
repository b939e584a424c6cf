"""SynthMoments generation throughput, and where the time goes (render vs encode vs the rest).

One process generates the same dataset once per codec into fresh temporary folders; the first codec
is the baseline the others are compared with. Example:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_synth.py --videos 40 --min-duration 20 --max-duration 40
"""
from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

from c2f_lib.data.synth import SynthConfig, generate_synthmoments, plan_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=40, help="total videos (split 4:1:1:1 like the default)")
    parser.add_argument("--min-duration", type=float, default=20.0)
    parser.add_argument("--max-duration", type=float, default=40.0)
    parser.add_argument("--fps", type=float, default=4.0)
    parser.add_argument("--frame-size", type=int, default=64)
    parser.add_argument("--codecs", nargs="+", default=["mpeg4", "libx264"], help="first one is the baseline")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    n_eval = max(1, args.videos // 7)
    cfg = SynthConfig(seed=args.seed, n_train_videos=args.videos - 3 * n_eval, n_val_videos=n_eval,
                      n_test_videos=n_eval, n_test_cg_videos=n_eval, min_duration=args.min_duration,
                      max_duration=args.max_duration, fps=args.fps, frame_size=args.frame_size)
    n_frames = sum(v["n_frames"] for v in plan_dataset(cfg))
    n_videos = sum(cfg.split_sizes().values())
    print(f"{n_videos} videos, {n_frames} frames of {args.frame_size}x{args.frame_size} at {args.fps} fps")
    print(f"{'codec':8s} {'total s':>8s} {'videos/s':>9s} {'frames/s':>9s} {'render':>7s} {'encode':>7s} "
          f"{'other':>6s} {'MB':>6s} {'speed vs ' + args.codecs[0]:>16s}")
    baseline = None
    for codec in args.codecs:
        with tempfile.TemporaryDirectory() as tmp:
            summary = generate_synthmoments(Path(tmp) / "synthmoments", replace(cfg, codec=codec))
            size_mb = sum(p.stat().st_size for p in Path(tmp).rglob("*.mp4")) / 1e6
        total = summary["seconds"]
        baseline = baseline or total
        other = total - summary["render_s"] - summary["encode_s"]  # planning, validation, jsonl + meta writes
        print(f"{codec:8s} {total:8.2f} {n_videos / total:9.1f} {n_frames / total:9.0f} "
              f"{summary['render_s'] / total:7.0%} {summary['encode_s'] / total:7.0%} {other / total:6.0%} "
              f"{size_mb:6.2f} {baseline / total:15.2f}x")


if __name__ == "__main__":
    main()
