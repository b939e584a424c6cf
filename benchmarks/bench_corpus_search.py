"""Corpus-scale coarse search: FAISS shortlist + query-conditioned re-ranking vs exhaustive scoring.

Synthetic corpora of clustered random features (V videos x F frames x D). Per query, the two-stage
path searches the index for `--shortlist` videos and re-ranks them with a randomly initialised
X-Pool (query-conditioned pooling; T-MASS/TextDiff cost the same order per video); the baseline
scores every video with the same model in the same process. Printed per corpus size:

* index build time; two-stage query latency p50/p95 (ms), split into FAISS and re-ranking;
* exhaustive latency p50 and the speed-up ratio (exhaustive / two-stage, p50);
* shortlist recall: the fraction of the exhaustive top-10 that falls inside the shortlist (so the
  two-stage top-10 equals the exhaustive one), and the ANN index's recall@S against exact search.

    python benchmarks/bench_corpus_search.py                    # 10k and 100k videos, D=256
    python benchmarks/bench_corpus_search.py --dim 512 --sizes 10000
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from c2f_lib.models.xpool import XPool, XPoolConfig
from c2f_lib.pipeline.corpus_index import CorpusIndex, IndexConfig, shortlist_recall, video_embeddings


def synthetic_corpus(num_videos: int, num_frames: int, dim: int, clusters: int,
                     rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames [V, F, D] around per-video vectors around cluster centres; video vectors [V, D]."""
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    videos = centres[rng.integers(0, clusters, num_videos)] + 0.6 * rng.standard_normal((num_videos, dim), dtype=np.float32)
    frames = videos[:, None] + 0.5 * rng.standard_normal((num_videos, num_frames, dim), dtype=np.float32)
    return torch.from_numpy(frames), torch.from_numpy(videos)


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000, q))


@torch.no_grad()
def run(num_videos: int, args: argparse.Namespace) -> dict[str, float]:
    rng = np.random.default_rng(args.seed)
    frames, videos = synthetic_corpus(num_videos, args.frames, args.dim, args.clusters, rng)
    targets = rng.integers(0, num_videos, args.queries)
    queries = videos[targets] + 0.8 * torch.from_numpy(rng.standard_normal((args.queries, args.dim), dtype=np.float32))
    ids = [f"v{i}" for i in range(num_videos)]
    torch.manual_seed(args.seed)
    model = XPool(XPoolConfig(dim=args.dim)).eval()

    start = time.perf_counter()
    index = CorpusIndex.build(video_embeddings(frames), ids, IndexConfig(kind=args.kind, ef_search=args.shortlist))
    build_s = time.perf_counter() - start
    exact_index = CorpusIndex.build(video_embeddings(frames), ids) if args.kind != "flat" else index

    faiss_s, rerank_s, shortlists = [], [], []
    for q in queries:
        t0 = time.perf_counter()
        _, rows = index.search(q[None], args.shortlist)                       # [1, S]
        t1 = time.perf_counter()
        cand = torch.as_tensor(rows[0][rows[0] >= 0], dtype=torch.long)
        model.score(q[None], frames[cand]).topk(10)
        t2 = time.perf_counter()
        faiss_s.append(t1 - t0)
        rerank_s.append(t2 - t1)
        shortlists.append(rows[0])
    total_s = [a + b for a, b in zip(faiss_s, rerank_s)]

    exhaustive_s, inside = [], []
    for i, q in enumerate(queries[:args.baseline_queries]):
        t0 = time.perf_counter()
        top10 = model.score(q[None], frames, chunk_size=1)[0].topk(10).indices.numpy()
        exhaustive_s.append(time.perf_counter() - t0)
        inside.append(len(set(top10) & set(shortlists[i])) / 10)
    _, exact_rows = exact_index.search(queries, args.shortlist)
    return {
        "videos": num_videos, "build_s": build_s,
        "two_stage_p50_ms": percentile_ms(total_s, 50), "two_stage_p95_ms": percentile_ms(total_s, 95),
        "faiss_p50_ms": percentile_ms(faiss_s, 50), "rerank_p50_ms": percentile_ms(rerank_s, 50),
        "exhaustive_p50_ms": percentile_ms(exhaustive_s, 50),
        "speedup_p50": percentile_ms(exhaustive_s, 50) / percentile_ms(total_s, 50),
        "top10_in_shortlist": float(np.mean(inside)),
        "ann_recall_at_S": shortlist_recall(np.stack(shortlists), exact_rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=256, help="feature size (512 = CLIP ViT-B)")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--baseline-queries", type=int, default=5, help="exhaustive runs are slow")
    parser.add_argument("--shortlist", type=int, default=100)
    parser.add_argument("--kind", choices=["flat", "hnsw", "ivf"], default="hnsw")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    print(f"dim={args.dim} frames={args.frames} shortlist={args.shortlist} index={args.kind} "
          f"threads={args.threads} queries={args.queries} (exhaustive: {args.baseline_queries})")
    for size in args.sizes:
        r = run(size, args)
        print(f"V={r['videos']:>7}: build {r['build_s']:.1f}s | two-stage p50 {r['two_stage_p50_ms']:.1f} ms "
              f"p95 {r['two_stage_p95_ms']:.1f} ms (faiss {r['faiss_p50_ms']:.2f}, re-rank {r['rerank_p50_ms']:.1f}) "
              f"| exhaustive p50 {r['exhaustive_p50_ms']:.0f} ms | speed-up x{r['speedup_p50']:.0f} "
              f"| exhaustive top-10 in shortlist {100 * r['top10_in_shortlist']:.0f}% "
              f"| ANN recall@{args.shortlist} {100 * r['ann_recall_at_S']:.1f}%", flush=True)


if __name__ == "__main__":
    main()
