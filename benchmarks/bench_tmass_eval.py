"""All-pairs T-MASS evaluation at MSR-VTT 1k-A size: ours vs. a straightforward reference loop.

Inputs (random, seeded): 1,000 texts x 1,000 videos x 12 frames x 512-d, 20 stochastic trials,
a T-MASS model with perturbed (non-identity) weights, both implementations on the SAME inputs and
the SAME noise convention (eps per (text, trial)), so their scores are also compared.

* ours:  TMASS.score (chunked, factorised pooling, batched best-of-K cosines).
* naive: the reference semantics written as the reference code does it (spec coarse §2.3): pool
  every (video, text) pair with the literal pooling block, then a Python loop over videos, for
  each video K calls of the stochastic module on the tiled frames (radius through the (T, F, F)
  product), cosines with pool(v | text), a Python loop over texts copying the winning sample,
  then the cosine of the kept samples with the pooled videos (correct pairing).
  It is run on `--naive-videos` videos (all texts) and its time is extrapolated linearly to all
  videos (its cost is exactly linear in the number of videos); the output says so.

Time: both run in this process, one after the other, same threads (`--threads`).
Peak memory: torch allocations are invisible to tracemalloc, so each implementation is re-run in
a fresh subprocess that reads its resident set (/proc/self/statm) just before the scoring call
and resource.getrusage(RUSAGE_SELF).ru_maxrss (peak resident set) after it; the difference is the
extra peak memory of the call (an upper bound: the high-water mark may predate the call).

    .venv/bin/python benchmarks/bench_tmass_eval.py            # full size
    .venv/bin/python benchmarks/bench_tmass_eval.py --texts 200 --videos 200 --naive-videos 5
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from c2f_lib.models.tmass import TMASS, TMASSConfig
from c2f_lib.models.xpool import literal_pool


def build(args):
    torch.manual_seed(0)
    model = TMASS(TMASSConfig(dim=args.dim, num_frames=args.frames, num_trials=args.trials)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    g = torch.Generator().manual_seed(1)
    text = torch.randn(args.texts, args.dim, generator=g)
    frames = torch.randn(args.videos, args.frames, args.dim, generator=g)
    return model, text, frames


def run_ours(model, text, frames, args):
    return model.score(text, frames, chunk_size=args.chunk_size, generator=torch.Generator().manual_seed(2))


def run_naive(model, text, frames, args):
    """Reference semantics on the first `naive_videos` videos -> [T, n]."""
    n = args.naive_videos
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(2)))
    eps = model.trial_noise(len(text), seed, slice(0, len(text)))                 # [T, K, D]
    T, Fn, K = text.shape[0], frames.shape[1], model.cfg.num_trials
    with torch.no_grad():
        pooled = literal_pool(model.xpool.pool, text, frames[:n]).transpose(0, 1)  # [n, T, D]
        kept = torch.empty(n, T, text.shape[1])
        for v in range(n):
            tiled = frames[v][None].repeat(T, 1, 1)                                 # [T, F, D]
            samples, cos = [], []
            for k in range(K):
                t_rep = F.normalize(text, dim=-1)[:, None].repeat(1, Fn, 1)          # [T, F, D]
                sims = torch.matmul(t_rep, F.normalize(tiled, dim=-1).transpose(1, 2)).mean(1)
                sample = text + eps[:, k] * model.radius_proj(sims).exp()
                samples.append(sample)
                cos.append(F.cosine_similarity(sample, pooled[v], dim=-1))
            best = torch.stack(cos).argmax(0)                                       # [T]
            for i in range(T):
                kept[v, i] = samples[int(best[i])][i]
        return F.cosine_similarity(kept, pooled, dim=-1).T                          # [T, n]


IMPLEMENTATIONS = {"ours": run_ours, "naive": run_naive}


def worker(args):
    """Subprocess: peak-RSS increase of one implementation."""
    torch.set_num_threads(args.threads)
    model, text, frames = build(args)
    before = _current_rss_mb()
    IMPLEMENTATIONS[args.worker](model, text, frames, args)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024        # KiB on Linux
    print(json.dumps({"peak_rss_increase_mb": peak - before}))


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure_memory(name, argv):
    out = subprocess.run([sys.executable, __file__, *argv, "--worker", name], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_increase_mb"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--naive-videos", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", choices=sorted(IMPLEMENTATIONS))
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    torch.set_num_threads(args.threads)
    model, text, frames = build(args)
    n = min(args.naive_videos, args.videos)
    args.naive_videos = n

    start = time.perf_counter()
    ours = run_ours(model, text, frames, args)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    naive = run_naive(model, text, frames, args)
    t_naive_subset = time.perf_counter() - start
    t_naive = t_naive_subset * args.videos / n
    diff = float((ours[:, :n] - naive).abs().max())

    argv = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "worker"]
    mem_ours, mem_naive = measure_memory("ours", argv), measure_memory("naive", argv)
    print(f"T-MASS all-pairs evaluation: {args.texts} texts x {args.videos} videos x {args.frames} "
          f"frames x {args.dim}-d, {args.trials} trials, {args.threads} thread(s), chunk {args.chunk_size}")
    print(f"  ours : {t_ours:8.2f} s   peak RSS +{mem_ours:7.0f} MB")
    print(f"  naive: {t_naive:8.2f} s   (measured {t_naive_subset:.2f} s on {n}/{args.videos} videos, "
          f"extrapolated linearly)   peak RSS +{mem_naive:7.0f} MB on the {n}-video subset "
          f"(its pooled tensor alone grows to {args.texts * args.videos * args.dim * 4 / 2**20:.0f} MB "
          f"at full size)")
    print(f"  speed-up: {t_naive / t_ours:.1f}x   max |ours - naive| on the shared videos: {diff:.2e}")


if __name__ == "__main__":
    main()
