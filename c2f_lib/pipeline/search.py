"""Coarse-to-fine search: query -> top-K videos (coarse retriever) -> moments in each (fine model).

The two stages are any models of the contracts in docs/ARCHITECTURE.md:
``coarse.score(text_emb [T,D], frames [V,F,D], chunk_size, generator) -> [T,V]`` and
``fine.predict(samples: list[MomentSample], top_k) -> list[dict]`` (QVHighlights format).

Optionally a first, query-independent stage (`CorpusIndex`, FAISS over mean frame embeddings) cuts
the corpus to `shortlist_size` candidates before the query-conditioned coarse model re-ranks them,
so the per-query cost stops growing with the corpus. The re-ranking reuses per-video terms computed
once for the corpus (`c2f_lib.pipeline.rerank`).

Score fusion (`SearchConfig.fusion`) turns a video's coarse similarity s_v and a moment's fine score
f_m in [0, 1] into one corpus-wide score. With p_v = softmax(s / temperature) over the K shortlisted
videos (the coarse model's learned temperature unless one is given):

* ``"fine"``     — f_m. The coarse stage only decides which videos are searched.
* ``"product"``  — p_v * f_m, XML-style late fusion (probability the video is right x moment score).
* ``"weighted"`` — alpha * log p_v + (1 - alpha) * log f_m, log-linear with a tunable alpha
  (alpha = 0.5 ranks exactly like "product"; alpha = 0 like "fine").

Query modes (`SearchConfig.coarse_query`). ``"moment"`` (default, single-query): both stages use the
moment sentence. ``"caption"`` (two-query, the TACoS-CG protocol): the coarse stage retrieves with a
video-level caption and the fine stage localises the moment sentence in the videos it returns. A
query's caption is one of its own video's captions (moments and captions files share video ids);
the k-th query of a video takes caption k mod n (`assign_captions`), so all n captions are used.
Records then carry the caption as ``coarse_query``.

Search output per query is one record in the prediction format of `c2f_lib.evaluation.vcmr`.
"""
from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch

from c2f_lib.data.schema import VideoCaptions, read_captions, read_moments
from c2f_lib.features.store import FeatureStore
from c2f_lib.features.store_bundles import load_moment_samples
from c2f_lib.features.types import MomentSample
from c2f_lib.pipeline.rerank import Gallery, prepare_gallery
from c2f_lib.progress import progress
from c2f_lib.utils import model_device

FUSIONS = ("fine", "product", "weighted")
COARSE_QUERIES = ("moment", "caption")  # the coarse stage's text (see "Query modes" above)
# Fine scores are clamped before the log of "weighted" fusion.
SCORE_EPS = 1e-6
# CLIP's initial logit scale: the softmax temperature when a coarse model has no learned one.
DEFAULT_TEMPERATURE = 0.01


@dataclass
class SearchConfig:
    k_videos: int = 10                  # videos per query handed to the fine model
    fusion: str = "product"             # one of FUSIONS (see the module docstring)
    alpha: float = 0.5                  # coarse weight of "weighted" fusion
    temperature: float | None = None    # softmax temperature over coarse scores; None = model's own
    moments_per_video: int = 5          # fine predictions kept per searched video
    top_moments: int = 100              # length of each query's corpus-wide moment list
    shortlist_size: int | None = None   # FAISS candidates re-ranked by the coarse model; None = all
    keep_videos: int = 100              # length of the recorded coarse ranking (VR R@100)
    chunk_size: int = 16                # texts per coarse scoring chunk (memory bound)
    fine_batch_size: int = 64           # (query, video) pairs per fine predict() call
    seed: int = 0                       # stochastic coarse models (T-MASS) draw from this
    coarse_query: str = "moment"        # one of COARSE_QUERIES; "caption" = two-query mode

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion {self.fusion!r} is not one of {FUSIONS}")
        if self.coarse_query not in COARSE_QUERIES:
            raise ValueError(f"coarse_query {self.coarse_query!r} is not one of {COARSE_QUERIES}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.k_videos < 1 or self.moments_per_video < 1 or self.top_moments < 1:
            raise ValueError("k_videos, moments_per_video and top_moments must be >= 1")
        if self.shortlist_size is not None and self.shortlist_size < self.k_videos:
            raise ValueError(f"shortlist_size {self.shortlist_size} < k_videos {self.k_videos}")


class CoarseModel(Protocol):
    def score(self, text_emb: torch.Tensor, frames: torch.Tensor, chunk_size: int = ...,
              generator: torch.Generator | None = None) -> torch.Tensor: ...


class FineModel(Protocol):
    def predict(self, samples: list[MomentSample], top_k: int = ...) -> list[dict]: ...


# ----------------------------------------------------------------------------- inputs
@dataclass
class Corpus:
    """The searchable videos: frame features for the coarse stage, clip features for the fine one."""

    video_ids: list[str]
    frames: torch.Tensor              # [V, F, D]
    clips: list[torch.Tensor]         # V x [L_v, Dv]
    durations: list[float]            # V, seconds
    clip_len: float                   # seconds per clip feature

    def __post_init__(self) -> None:
        V = len(self.video_ids)
        if self.frames.shape[0] != V or len(self.clips) != V or len(self.durations) != V:
            raise ValueError("Corpus: video_ids, frames, clips and durations differ in length")
        self.position = {vid: i for i, vid in enumerate(self.video_ids)}


@dataclass
class Queries:
    """Text queries with their features and, for evaluation, their ground truth."""

    qids: list[str | int]
    texts: list[str]
    sentence: torch.Tensor                       # [T, D] for the coarse stage
    tokens: list[torch.Tensor]                   # T x [Lq, Dt] for the fine stage
    gt_vids: list[str | None] = field(default_factory=list)        # empty = unknown (user search)
    gt_windows: list[list[list[float]]] = field(default_factory=list)
    coarse_texts: list[str] = field(default_factory=list)        # two-query mode: one caption per query
    coarse_sentence: torch.Tensor | None = None                  # [T, D] embeddings of coarse_texts

    def __len__(self) -> int:
        return len(self.texts)


class TextEncoder(Protocol):
    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """texts -> (sentence embeddings [T, D], token features T x [Lq, Dt])."""


class StoreTextEncoder:
    """Looks texts up in a feature store (works for any text extracted with the store's backbone)."""

    def __init__(self, store_path: str | Path):
        self.store_path = Path(store_path)

    def _open(self, texts: list[str]) -> FeatureStore:
        store = FeatureStore(self.store_path)
        missing = [t for t in texts if not store.has_text(t)]
        if missing:
            store.close()
            raise KeyError(f"{self.store_path}: no features for text {missing[0]!r}; this store only "
                           f"knows the texts it was built with (use a backbone text encoder)")
        return store

    def _read(self, texts: list[str], with_tokens: bool) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        with self._open(texts) as store:
            sentence = torch.stack([torch.from_numpy(store.sentence(t)).float() for t in texts])  # [T, D]
            tokens = [torch.from_numpy(store.tokens(t)).float() for t in texts] if with_tokens else None
        return sentence, tokens

    def sentences(self, texts: list[str]) -> torch.Tensor:
        """[T, D] sentence embeddings only (captions are stored without token features)."""
        return self._read(texts, with_tokens=False)[0]

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self._read(texts, with_tokens=True)


class BackboneTextEncoder:
    """Encodes any text with the frozen backbone the store was built with (c2f_lib.features.backbones)."""

    def __init__(self, backbone):
        self.backbone = backbone

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        sentence = self.backbone.encode_sentences(texts)                    # [T, D]
        hidden, mask = self.backbone.encode_tokens(texts)                   # [T, Lq, Dt], [T, Lq]
        return sentence, [h[m] for h, m in zip(hidden, mask)]


def load_corpus(store_path: str | Path, video_ids: Sequence[str] | None = None) -> Corpus:
    """Frames, clips and durations of `video_ids` (default: every video in the store)."""
    with FeatureStore(store_path) as store:
        video_ids = list(video_ids) if video_ids is not None else store.video_ids()
        missing = [v for v in video_ids if not store.has_video(v)]
        if missing:
            raise KeyError(f"{store_path}: {len(missing)} video(s) not in the store, e.g. {missing[:3]}")
        frames = [store.frames(v) for v in video_ids]
        if len({f.shape[0] for f in frames}) > 1:
            raise ValueError(f"{store_path}: videos hold different numbers of frames")
        clips = [store.grounding_clips(v) for v in video_ids]
        durations = []
        for vid, clip in zip(video_ids, clips):
            duration = float(store.video_attrs(vid).get("duration", float("nan")))
            durations.append(duration if math.isfinite(duration) else clip.shape[0] * store.meta.clip_len)
        return Corpus(video_ids=video_ids, frames=torch.from_numpy(np.stack(frames)).float(),
                      clips=clips, durations=durations, clip_len=store.meta.clip_len)


def assign_captions(vids: Sequence[str], captions: Sequence[VideoCaptions],
                    where: str | Path = "captions") -> list[str]:
    """Each query's coarse text, given its video id: the k-th query of a video takes that video's
    caption k mod n (deterministic, and every caption of a video is used)."""
    by_vid = {c.vid: c.captions for c in captions}
    seen: Counter[str] = Counter()
    out = []
    for vid in vids:
        if not by_vid.get(vid):
            raise KeyError(f"{where}: no caption for video {vid!r} (two-query mode needs one per queried video)")
        out.append(by_vid[vid][seen[vid] % len(by_vid[vid])])
        seen[vid] += 1
    return out


def load_queries(store_path: str | Path, moments_jsonl: str | Path,
                 captions_jsonl: str | Path | None = None) -> Queries:
    """The moment queries of a split with their sentence/token features and ground truth; with
    `captions_jsonl`, also each query's video caption for the two-query mode."""
    samples = load_moment_samples(store_path, moments_jsonl)
    encoder = StoreTextEncoder(store_path)
    queries = Queries(qids=[s.qid for s in samples], texts=[s.query for s in samples],
                      sentence=encoder.sentences([s.query for s in samples]),
                      tokens=[s.token_feats for s in samples], gt_vids=[s.vid for s in samples],
                      gt_windows=[s.windows for s in samples])
    if captions_jsonl is not None:
        queries.coarse_texts = assign_captions(queries.gt_vids, read_captions(captions_jsonl), captions_jsonl)
        queries.coarse_sentence = encoder.sentences(queries.coarse_texts)
    return queries


def load_split(store_path: str | Path, moments_jsonl: str | Path,
               captions_jsonl: str | Path | None = None) -> tuple[Corpus, Queries]:
    """Corpus = every video the split's moment queries mention; queries = those queries (with their
    video captions when `captions_jsonl` is given)."""
    vids = list(dict.fromkeys(r.vid for r in read_moments(moments_jsonl)))
    with FeatureStore(store_path) as store:
        vids = [v for v in vids if store.has_video(v)]  # undecodable ones are reported by load_queries
    return load_corpus(store_path, vids), load_queries(store_path, moments_jsonl, captions_jsonl)


# ----------------------------------------------------------------------------- stage 1: rank videos
@torch.inference_mode()
def rank_videos(coarse: CoarseModel, text_emb: torch.Tensor, corpus: Corpus, cfg: SearchConfig,
                index=None, gallery: Gallery | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Coarse scores and corpus indices of each query's best videos -> ([T, N], [T, N]), best first.

    Exhaustive: the coarse model scores all V videos. With `index` (a `CorpusIndex`) and
    `cfg.shortlist_size`, it only re-ranks the index's `shortlist_size` nearest videos per query,
    through `gallery` (`prepare_gallery(coarse, corpus.frames)`, built once per corpus by a caller
    that searches repeatedly; else prepared here for this call's candidates only).
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    device = model_device(coarse)
    V = len(corpus.video_ids)
    if index is None or cfg.shortlist_size is None or cfg.shortlist_size >= V:
        scores = coarse.score(text_emb.to(device), corpus.frames.to(device), chunk_size=cfg.chunk_size,
                              generator=generator).cpu()                          # [T, V]
        return scores.topk(min(cfg.keep_videos, V), dim=1)
    _, found = index.search(text_emb, cfg.shortlist_size)                         # [T, S]
    found = torch.as_tensor(found, dtype=torch.long)
    valid = found >= 0                                                            # FAISS pads with -1
    candidates = found.clamp(min=0)
    if gallery is None:  # prepare only the videos some query shortlisted
        rows, candidates = torch.unique(candidates, return_inverse=True)
        gallery = prepare_gallery(coarse, corpus.frames[rows].to(device))
    scores = gallery.rerank(text_emb.to(device), candidates.to(device), chunk_size=cfg.chunk_size,
                            generator=generator).cpu()                            # [T, S]
    width = min(cfg.keep_videos, int(valid.sum(1).min()))
    top = scores.masked_fill(~valid, -math.inf).topk(width, dim=1)
    return top.values, found.gather(1, top.indices)


# ----------------------------------------------------------------------------- stage 2: localise
def _sample(queries: Queries, q: int, corpus: Corpus, v: int) -> MomentSample:
    """The fine model's input for query q in video v. Outside the GT video (or with no GT) the query
    has no window and zero saliency; predict() never looks at either, but collation builds them."""
    is_gt = bool(queries.gt_vids) and queries.gt_vids[q] == corpus.video_ids[v]
    clips = corpus.clips[v]                                                          # [L, Dv]
    return MomentSample(qid=queries.qids[q], query=queries.texts[q], vid=corpus.video_ids[v],
                        duration=corpus.durations[v], clip_len=corpus.clip_len,
                        clip_feats=clips, token_feats=queries.tokens[q],
                        windows=queries.gt_windows[q] if is_gt else [],
                        saliency=None if is_gt else torch.zeros(clips.shape[0]))


def _predict(fine: FineModel, pairs: list[tuple[int, int]], queries: Queries, corpus: Corpus,
             cfg: SearchConfig, desc: str) -> list[dict]:
    """Fine predictions for (query index, video index) pairs, in batches."""
    out: list[dict] = []
    batches = range(0, len(pairs), cfg.fine_batch_size)
    for start in progress(batches, desc=desc, disable=len(batches) < 4):
        chunk = pairs[start:start + cfg.fine_batch_size]
        with torch.no_grad():
            out.extend(fine.predict([_sample(queries, q, corpus, v) for q, v in chunk],
                                    top_k=cfg.moments_per_video))
    return out


@dataclass
class Candidates:
    """One query's coarse ranking and the fine predictions for its first videos (before fusion)."""

    qid: str | int
    query: str
    gt_vid: str | None
    ranked: list[tuple[str, float]]           # coarse ranking, best first
    fine: dict[str, dict]                      # vid -> fine prediction, for the first searched videos
    gt_fine: dict | None = None                # fine prediction on the GT video (SVMR), if known
    coarse_query: str | None = None            # the coarse stage's text when it is not `query`


def coarse_text(queries: Queries, cfg: SearchConfig) -> tuple[torch.Tensor, list[str] | None]:
    """The coarse stage's embeddings [T, D] and, in two-query mode, its texts."""
    if cfg.coarse_query == "moment":
        return queries.sentence, None
    if queries.coarse_sentence is None:
        raise ValueError("coarse_query='caption' needs each query's video caption: "
                         "load_split(store, moments_jsonl, captions_jsonl)")
    return queries.coarse_sentence, queries.coarse_texts


def localise(coarse: CoarseModel, fine: FineModel, queries: Queries, corpus: Corpus,
             cfg: SearchConfig, index=None, with_gt: bool = True,
             gallery: Gallery | None = None,
             fine_cache: dict[tuple[int, int], dict] | None = None) -> list[Candidates]:
    """Rank videos (with `coarse_text`), then run the fine model with the moment sentence in each
    query's first `cfg.k_videos` videos (+ GT video).

    `fine_cache` maps (query index, video index) to the fine prediction: pairs found there are not
    run again and new ones are added, so several coarse methods over the same queries, corpus and
    fine model (the report) run the fine model once per distinct pair."""
    text_emb, coarse_texts = coarse_text(queries, cfg)
    scores, order = rank_videos(coarse, text_emb, corpus, cfg, index, gallery)  # [T, N]
    k = min(cfg.k_videos, order.shape[1])
    pairs = [(q, int(v)) for q in range(len(queries)) for v in order[q, :k]]
    gt_pairs = []
    if with_gt and queries.gt_vids:  # SVMR: the GT video too, unless the shortlist already has it
        gt_pairs = [(q, corpus.position[vid]) for q, vid in enumerate(queries.gt_vids)
                    if (q, corpus.position[vid]) not in set(pairs[q * k:(q + 1) * k])]
    cache = {} if fine_cache is None else fine_cache
    todo = [pair for pair in dict.fromkeys(pairs + gt_pairs) if pair not in cache]
    cache.update(zip(todo, _predict(fine, todo, queries, corpus, cfg, "fine stage")))
    fine_by_query: list[dict[str, dict]] = [{} for _ in range(len(queries))]
    for q, v in pairs + gt_pairs:
        fine_by_query[q][corpus.video_ids[v]] = cache[q, v]
    out = []
    for q in range(len(queries)):
        gt_vid = queries.gt_vids[q] if queries.gt_vids else None
        ranked = [(corpus.video_ids[int(v)], float(s)) for v, s in zip(order[q], scores[q])]
        searched = {vid: fine_by_query[q][vid] for vid, _ in ranked[:k]}
        out.append(Candidates(qid=queries.qids[q], query=queries.texts[q], gt_vid=gt_vid, ranked=ranked,
                              fine=searched, gt_fine=fine_by_query[q].get(gt_vid) if with_gt else None,
                              coarse_query=coarse_texts[q] if coarse_texts else None))
    return out


# ----------------------------------------------------------------------------- fusion
def coarse_temperature(coarse: object, cfg: SearchConfig) -> float:
    """cfg.temperature, else 1 / exp(logit_scale) learned by the coarse model, else CLIP's 0.01."""
    if cfg.temperature is not None:
        return cfg.temperature
    scale = getattr(coarse, "logit_scale", None)
    if isinstance(scale, torch.Tensor):
        return float(torch.exp(-scale.detach().float()).clamp(min=1e-4))
    return DEFAULT_TEMPERATURE


def fuse(video_prob: float, fine_score: float, cfg: SearchConfig) -> float:
    """One moment's corpus-wide score (see the module docstring)."""
    if cfg.fusion == "fine":
        return fine_score
    if cfg.fusion == "product":
        return video_prob * fine_score
    return (cfg.alpha * math.log(max(video_prob, SCORE_EPS))
            + (1 - cfg.alpha) * math.log(max(fine_score, SCORE_EPS)))


def to_record(cand: Candidates, cfg: SearchConfig, temperature: float, k_videos: int | None = None,
              keep_saliency: bool = False) -> dict:
    """Fuse one query's candidates over its first `k_videos` videos into a vcmr prediction record."""
    k = min(k_videos or cfg.k_videos, len(cand.ranked))
    searched = [vid for vid, _ in cand.ranked[:k]]
    missing = [vid for vid in searched if vid not in cand.fine]
    if missing:
        raise ValueError(f"qid {cand.qid!r}: no fine predictions for {missing[:3]}; "
                         f"localise() with k_videos >= {k}")
    sims = torch.tensor([s for _, s in cand.ranked[:k]])
    probs = torch.softmax(sims / temperature, dim=0).tolist()                     # [k]
    moments = [[vid, float(w[0]), float(w[1]), fuse(p, float(w[2]), cfg)]
               for vid, p in zip(searched, probs)
               for w in cand.fine[vid]["pred_relevant_windows"]]
    moments.sort(key=lambda m: -m[3])  # stable: ties keep the coarse order
    record = {"qid": cand.qid, "query": cand.query, "gt_vid": cand.gt_vid,
              "ranked_videos": [[vid, s] for vid, s in cand.ranked],
              "moments": moments[:cfg.top_moments]}
    if cand.coarse_query is not None:
        record["coarse_query"] = cand.coarse_query
    if cand.gt_fine is not None:
        record["gt_moments"] = [[float(s), float(e), float(c)]
                                for s, e, c in cand.gt_fine["pred_relevant_windows"]]
    if keep_saliency:
        record["saliency"] = {vid: list(map(float, cand.fine[vid].get("pred_saliency_scores", [])))
                              for vid in searched}
    return record


def search(coarse: CoarseModel, fine: FineModel, queries: Queries, corpus: Corpus,
           cfg: SearchConfig, index=None, keep_saliency: bool = False,
           gallery: Gallery | None = None) -> list[dict]:
    """Coarse-to-fine search for every query -> vcmr prediction records (one per query)."""
    temperature = coarse_temperature(coarse, cfg)
    return [to_record(c, cfg, temperature, keep_saliency=keep_saliency)
            for c in localise(coarse, fine, queries, corpus, cfg, index, gallery=gallery)]


def records_by_k(coarse: CoarseModel, candidates: list[Candidates], cfg: SearchConfig,
                 ks: Sequence[int]) -> dict[int, list[dict]]:
    """Records for several shortlist sizes from one `localise` run with k_videos = max(ks)."""
    temperature = coarse_temperature(coarse, cfg)
    return {k: [to_record(c, dataclasses.replace(cfg, k_videos=k), temperature, k_videos=k)
                for c in candidates] for k in ks}
