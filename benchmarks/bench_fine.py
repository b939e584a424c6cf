"""CPU throughput of the fine models: training queries/s and per-query inference latency, vs Moment-DETR.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_fine.py [--steps 10] [--hidden 128]

One process, same random batch for every model (32 queries, 75 clips, 20 tokens), paper-like layer counts.
"""
from __future__ import annotations

import time

import torch

import c2f_lib.models.mesm  # noqa: F401
import c2f_lib.models.moment_detr  # noqa: F401
from c2f_lib.features.types import MomentSample
from c2f_lib.models.fine_batch import collate_moments
from c2f_lib.models.registry import build_model

# the same arguments and timed training loop (benchmarks/ is on sys.path when run)
from bench_fine_step import parse_args, phase_times

MODELS = [("moment_detr", "moment_detr"), ("qd_detr", "qd_detr"), ("mesm", "mesm_qvhighlights")]


def samples(n: int, clips: int, tokens: int, dim: int) -> list[MomentSample]:
    g = torch.Generator().manual_seed(0)
    return [MomentSample(qid=i, query="q", vid=f"v{i // 2}", duration=2.0 * clips, clip_len=2.0,
                         clip_feats=torch.randn(clips, dim, generator=g),
                         token_feats=torch.randn(tokens, dim, generator=g),
                         windows=[[10.0, 40.0]]) for i in range(n)]


def main() -> None:
    args = parse_args(steps=10, hidden=128)
    torch.manual_seed(0)
    data = samples(32, 75, 20, 512)
    batch = collate_moments(data)
    rows = {}
    for name, preset in MODELS:
        model = build_model(name, {"hidden_dim": args.hidden, "ffn_dim": 4 * args.hidden})
        train_qps = len(data) / sum(phase_times(model, batch, preset, args.steps).values())
        model.predict(data[:1])
        t0 = time.perf_counter()
        for s in data:
            model.predict([s])
        latency_ms = 1000 * (time.perf_counter() - t0) / len(data)
        rows[name] = (train_qps, latency_ms)
    base_qps, base_ms = rows["moment_detr"]
    print(f"{'model':>12} {'train q/s':>10} {'vs MD':>6} {'infer ms/q':>11} {'vs MD':>6}")
    for name, (qps, ms) in rows.items():
        print(f"{name:>12} {qps:10.1f} {qps / base_qps:6.2f} {ms:11.2f} {ms / base_ms:6.2f}")


if __name__ == "__main__":
    main()
