"""Corpus-scale coarse search: FAISS shortlist + query-conditioned re-ranking vs exhaustive scoring.

Synthetic corpora of clustered random features (V videos x F frames x D). At index time the FAISS
index is built and X-Pool's query-independent per-video terms are prepared once
(`c2f_lib.pipeline.rerank.prepare_gallery`). Per query, the two-stage path searches the index for
`--shortlist` videos and re-ranks them with a randomly initialised X-Pool through that gallery
(T-MASS/TextDiff cost the same order per video); the baseline scores every video with the plain
model (`XPool.score`) in the same process. Printed per corpus size:

* index build and gallery preparation time; two-stage query latency p50/p95 (ms), split into
  FAISS and re-ranking; the largest difference between fast-path and plain-model scores;
* exhaustive latency p50 and the speed-up ratio (exhaustive / two-stage, p50);
* per shortlist size S in `--sweep`: re-ranking p50 and shortlist recall, the fraction of the
  exhaustive top-10 that falls inside the shortlist (so the two-stage top-10 equals the
  exhaustive one), and the ANN index's recall@S against exact search.

    OMP_NUM_THREADS=2 python benchmarks/bench_corpus_search.py     # 10k and 100k videos, D=256
    python benchmarks/bench_corpus_search.py --dim 512 --sizes 10000
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from c2f_lib.models.xpool import XPool, XPoolConfig
from c2f_lib.pipeline.corpus_index import CorpusIndex, IndexConfig, shortlist_recall, video_embeddings
from c2f_lib.pipeline.rerank import prepare_gallery


def synthetic_corpus(num_videos: int, num_frames: int, dim: int, clusters: int,
                     rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames [V, F, D] around per-video vectors around cluster centres; video vectors [V, D]."""
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    videos = centres[rng.integers(0, clusters, num_videos)] + 0.6 * rng.standard_normal((num_videos, dim), dtype=np.float32)
    frames = videos[:, None] + 0.5 * rng.standard_normal((num_videos, num_frames, dim), dtype=np.float32)
    return torch.from_numpy(frames), torch.from_numpy(videos)


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000, q))


def two_stage(index: CorpusIndex, gallery, queries: torch.Tensor, size: int
              ) -> tuple[list[float], list[float], np.ndarray]:
    """One query at a time: FAISS shortlist of `size`, re-rank, top-10 -> (FAISS s, re-rank s, rows [Q, S])."""
    faiss_s, rerank_s, shortlists = [], [], []
    for q in queries:
        t0 = time.perf_counter()
        _, rows = index.search(q[None], size)                                  # [1, S]
        t1 = time.perf_counter()
        cand = torch.as_tensor(rows[:, rows[0] >= 0], dtype=torch.long)        # [1, S]
        gallery.rerank(q[None], cand).topk(10)
        faiss_s.append(t1 - t0)
        rerank_s.append(time.perf_counter() - t1)
        shortlists.append(rows[0])
    return faiss_s, rerank_s, np.stack(shortlists)


@torch.inference_mode()
def run(num_videos: int, args: argparse.Namespace) -> dict:
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
    start = time.perf_counter()
    gallery = prepare_gallery(model, frames)
    prepare_s = time.perf_counter() - start
    exact_index = CorpusIndex.build(video_embeddings(frames), ids) if args.kind != "flat" else index

    gallery.rerank(queries[:1], torch.zeros(1, args.shortlist, dtype=torch.long))  # warm-up allocations
    faiss_s, rerank_s, shortlists = two_stage(index, gallery, queries, args.shortlist)
    total_s = [a + b for a, b in zip(faiss_s, rerank_s)]
    sizes = sorted({*args.sweep, args.shortlist})
    swept = {size: two_stage(index, gallery, queries, size)[1:] for size in sizes}  # before the big buffers

    exhaustive_s, max_diff = [], 0.0
    every = torch.arange(num_videos)[None]                                     # [1, V]
    for q, rows in zip(queries[:args.baseline_queries], shortlists):
        t0 = time.perf_counter()
        plain = model.score(q[None], frames, chunk_size=1)[0]                  # [V]
        plain.topk(10)
        exhaustive_s.append(time.perf_counter() - t0)
        fast = gallery.rerank(q[None], every)[0]                               # [V]
        max_diff = max(max_diff, float((fast - plain).abs().max()))
    # exhaustive top-10 of every query, through the gallery (equal to the plain model, checked above)
    top10 = [gallery.rerank(q[None], every)[0].topk(10).indices.numpy() for q in queries]
    sweep = []
    for size, (rerank_size, rows) in swept.items():
        _, exact_rows = exact_index.search(queries, size)
        sweep.append({"size": size, "rerank_p50_ms": percentile_ms(rerank_size, 50),
                      "top10_in_shortlist": float(np.mean([len(set(t) & set(r)) / 10 for t, r in zip(top10, rows)])),
                      "ann_recall": shortlist_recall(rows, exact_rows)})
    return {
        "videos": num_videos, "build_s": build_s, "prepare_s": prepare_s, "max_abs_diff": max_diff,
        "two_stage_p50_ms": percentile_ms(total_s, 50), "two_stage_p95_ms": percentile_ms(total_s, 95),
        "faiss_p50_ms": percentile_ms(faiss_s, 50), "rerank_p50_ms": percentile_ms(rerank_s, 50),
        "exhaustive_p50_ms": percentile_ms(exhaustive_s, 50),
        "speedup_p50": percentile_ms(exhaustive_s, 50) / percentile_ms(total_s, 50),
        "sweep": sweep,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=256, help="feature size (512 = CLIP ViT-B)")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--baseline-queries", type=int, default=5, help="exhaustive runs are slow")
    parser.add_argument("--shortlist", type=int, default=100,
                        help="the size whose p50/p95 is reported (100: >= 98%% of the exhaustive top-10)")
    parser.add_argument("--sweep", type=int, nargs="+", default=[10, 20, 50, 100, 200],
                        help="shortlist sizes for the recall-vs-size table")
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
        print(f"V={r['videos']:>7}: build {r['build_s']:.1f}s + prepare {r['prepare_s']:.1f}s "
              f"| two-stage p50 {r['two_stage_p50_ms']:.1f} ms p95 {r['two_stage_p95_ms']:.1f} ms "
              f"(faiss {r['faiss_p50_ms']:.2f}, re-rank {r['rerank_p50_ms']:.1f}) "
              f"| exhaustive p50 {r['exhaustive_p50_ms']:.0f} ms | speed-up x{r['speedup_p50']:.0f} "
              f"| fast vs plain max |diff| {r['max_abs_diff']:.1e}", flush=True)
        for row in r["sweep"]:
            print(f"    S={row['size']:>4}: re-rank p50 {row['rerank_p50_ms']:.2f} ms | exhaustive top-10 in "
                  f"shortlist {100 * row['top10_in_shortlist']:.1f}% | ANN recall@S {100 * row['ann_recall']:.1f}%",
                  flush=True)


if __name__ == "__main__":
    main()
