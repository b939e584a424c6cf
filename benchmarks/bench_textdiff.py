"""TextDiff inference on a T x V gallery: chunked `TextDiff.score` vs the reference-style baseline.

Baseline (how TextDiffs/T-MASS evaluate, spec coarse §2.3/§3.5): pool every (video, text) pair at
once into a [T, V, D] tensor, then loop over videos, run the sampler for all texts against that
video and store the refined texts in a [V, T, D] buffer, then score. Ours: `score` with a bounded
chunk of texts, never holding T x V x D. Both run the same model in the same process; the script
checks they agree and prints the time and peak-memory ratios. At the default 1k x 1k, D = 512 the
baseline needs ~12 GB of RAM (chunked: < 1 GB); use --dim 256 on a smaller machine.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_textdiff.py            # 1k x 1k, CPU
    .venv/bin/python benchmarks/bench_textdiff.py --texts 200 --videos 200     # quick
"""
from __future__ import annotations

import argparse
import os
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import torch

from c2f_lib.models.textdiff import TextDiff, TextDiffConfig
from c2f_lib.models.xpool import XPoolConfig, cosine, eval_mode


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_rss(result: dict) -> Iterator[None]:
    """Peak resident memory above the starting level while the block runs (polled every 2 ms)."""
    start, peak, done = rss_bytes(), [0], threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.002)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        result["peak_mb"] = (max(peak[0], rss_bytes()) - start) / 2**20


def baseline_score(model: TextDiff, text: torch.Tensor, frames: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """Reference-style: all pairs pooled at once, a Python loop over videos, a [V, T, D] buffer."""
    with eval_mode(model):
        noise = model.inference_noise(generator)[:, None]                      # [K, 1, d_x]
        pooled = model.xpool.pool_frames(text, frames)                          # [T, V, D]
        refined = torch.empty(frames.shape[0], *text.shape)                     # [V, T, D]
        for v in range(frames.shape[0]):
            pairs = model.pairs(text, frames[v:v + 1], pooled[:, v:v + 1])      # [T, 1, ...]
            refined[v] = model.refine(pairs, model.sample_x0(pairs, noise[:, None]))[:, 0]
        return cosine(refined.transpose(0, 1), pooled)                          # [T, V]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--diffused-dim", type=int, default=16)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=16)
    args = parser.parse_args()

    torch.manual_seed(0)
    cfg = TextDiffConfig(pool=XPoolConfig(dim=args.dim), num_frames=args.frames,
                         diffused_dim=args.diffused_dim, width=args.width, ffn=2 * args.width,
                         cond_dim=args.width // 2, gate_bias_init=0.0)
    model = TextDiff(cfg)
    text = torch.randn(args.texts, args.dim)
    frames = torch.randn(args.videos, args.frames, args.dim)
    model.fit_basis(text[:args.videos], frames[:args.texts])
    print(f"TextDiff inference, {args.texts} texts x {args.videos} videos, D={args.dim}, "
          f"F={args.frames}, d_x={cfg.latent_dim}, K={cfg.num_steps}, width={args.width}, "
          f"threads={torch.get_num_threads()}")

    runs = {}
    for name, fn in [("chunked", lambda g: model.score(text, frames, args.chunk_size, g)),
                     ("baseline", lambda g: baseline_score(model, text, frames, g))]:
        stats: dict = {}
        with peak_rss(stats):
            start = time.perf_counter()
            scores = fn(torch.Generator().manual_seed(0))
            stats["seconds"] = time.perf_counter() - start
        runs[name] = (scores, stats)
        print(f"  {name:9s} {stats['seconds']:8.2f} s   peak +{stats['peak_mb']:8.1f} MB")
    diff = (runs["chunked"][0] - runs["baseline"][0]).abs().max().item()
    (ours, o), (_, b) = runs["chunked"], runs["baseline"]
    print(f"  max |score difference| = {diff:.2e}")
    print(f"  speed-up (baseline / chunked time)   = {b['seconds'] / o['seconds']:.2f}x")
    print(f"  memory   (baseline / chunked peak)   = {b['peak_mb'] / max(o['peak_mb'], 1e-3):.1f}x")
    if diff > 1e-4:
        raise SystemExit(f"chunked and baseline scores disagree by {diff:.2e}")


if __name__ == "__main__":
    main()
