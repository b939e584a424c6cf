"""Text -> video and video -> text retrieval metrics with several captions per video.

Conventions (one audited implementation; tests compare it with a brute-force definition):
* Ranks are 1-based. TIES COUNT AGAINST THE QUERY: a gallery item scoring exactly as much as the
  positive is ranked before it (a constant scorer gets the worst rank, never R@1 = 100). This
  makes ranks independent of the order of queries and gallery items.
* t2v: one query per caption; its positive is its own video; rank = 1 + #{other videos v with
  s(q, v) >= s(q, own video)}.
* v2t: one query per video that has at least one caption; the gallery is every caption; the
  video's rank is the BEST rank among its own captions: 1 + #{captions of other videos c with
  s(c, v) >= max over own captions of s}. (The reference ranks caption *groups* by their max;
  with one caption per video, as in MSR-VTT 1k-A, LSMDC and DiDeMo, both are identical.)
* R@K = % of queries with rank <= K; MdR = median rank; MnR = mean rank.
* DSL (dual softmax, optional and transductive): s <- s * softmax(temperature * s) over the query
  axis (texts for t2v, videos for v2t), as CAMoE / the T-MASS `--DSL` flag.

Protocols (`score_split`):
* "correct" (default): s(q, v) = the model's `score`, every video pooled by the query itself.
* "reference": reproduces the published T-MASS / TextDiffs evaluation (spec coarse §2.4), where
  gallery video v is pooled by ITS OWN ground-truth caption instead of the query. A query that is
  caption m of its video is scored against videos pooled by their caption m (m modulo their number
  of captions; the original is only defined for one caption per video). Use it only to compare
  with published numbers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from c2f_lib.data.schema import read_captions
from c2f_lib.features.types import CoarseSplit
from c2f_lib.utils import model_device

KS = (1, 5, 10, 50)
PROTOCOLS = ("correct", "reference")


def _check(sims: torch.Tensor, text_to_video: torch.Tensor) -> None:
    if sims.ndim != 2 or text_to_video.shape != (sims.shape[0],):
        raise ValueError(f"sims must be [T, V] with text_to_video [T]; got {tuple(sims.shape)} "
                         f"and {tuple(text_to_video.shape)}")
    if torch.isnan(sims).any():
        raise ValueError("similarity matrix contains NaN")


def t2v_ranks(sims: torch.Tensor, text_to_video: torch.Tensor) -> torch.Tensor:
    """[T] 1-based rank of each caption's own video (ties count against the query)."""
    _check(sims, text_to_video)
    positive = sims.gather(1, text_to_video[:, None])                            # [T, 1]
    return (sims >= positive).sum(1)                                             # own video counts as 1


def v2t_ranks(sims: torch.Tensor, text_to_video: torch.Tensor) -> torch.Tensor:
    """[V'] 1-based best rank of each captioned video's own captions among all captions."""
    _check(sims, text_to_video)
    own = text_to_video[:, None] == torch.arange(sims.shape[1], device=sims.device)  # [T, V]
    captioned = own.any(0)
    best = sims.masked_fill(~own, float("-inf")).amax(0)                         # [V]
    ranks = 1 + ((sims >= best) & ~own).sum(0)
    return ranks[captioned]


def metrics_from_ranks(ranks: torch.Tensor, prefix: str, ks: Sequence[int] = KS) -> dict[str, float]:
    ranks = ranks.double()
    out = {f"{prefix}_R@{k}": 100.0 * float((ranks <= k).double().mean()) for k in ks}
    out[f"{prefix}_MdR"] = float(ranks.quantile(0.5))   # the middle value; mean of the two for even n
    out[f"{prefix}_MnR"] = float(ranks.mean())
    return out


def dual_softmax(sims: torch.Tensor, dim: int, temperature: float = 100.0) -> torch.Tensor:
    """Dual-softmax inverted-softmax re-weighting: sims * softmax(temperature * sims, dim)."""
    return sims * torch.softmax(temperature * sims, dim=dim)


def retrieval_metrics(sims: torch.Tensor, text_to_video: torch.Tensor, ks: Sequence[int] = KS,
                      dsl: bool = False) -> dict[str, float]:
    """t2v and v2t R@K, MdR, MnR from a [T, V] similarity matrix (conventions: module docstring)."""
    sims = sims.float().cpu()
    text_to_video = text_to_video.cpu()
    t2v = dual_softmax(sims, dim=0) if dsl else sims
    v2t = dual_softmax(sims, dim=1) if dsl else sims
    return {**metrics_from_ranks(t2v_ranks(t2v, text_to_video), "t2v", ks),
            **metrics_from_ranks(v2t_ranks(v2t, text_to_video), "v2t", ks)}


def caption_index_in_video(text_to_video: torch.Tensor) -> torch.Tensor:
    """[T] position m of each caption among its video's captions (in caption order)."""
    index = torch.empty_like(text_to_video)
    seen: dict[int, int] = {}
    for i, v in enumerate(text_to_video.tolist()):
        index[i] = seen.get(v, 0)
        seen[v] = int(index[i]) + 1
    return index


def text_inputs(split: Any) -> torch.Tensor:
    """What a model's `score` takes as text: features (CoarseSplit) or token ids (end-to-end splits)."""
    tokens = getattr(split, "text_tokens", None)
    return split.text_emb if tokens is None else tokens


def score_split(model: Any, split: CoarseSplit, protocol: str = "correct", chunk_size: int = 16,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """[T, V] similarities (on the CPU) of a coarse model on a split under the given protocol (module
    docstring); the split's texts and frames are scored on the model's device, wherever the split is."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; use one of {PROTOCOLS}")
    device = model_device(model)
    text, frames = text_inputs(split).to(device), split.frames.to(device)
    if protocol == "correct":
        return model.score(text, frames, chunk_size=chunk_size, generator=generator).cpu()
    V = frames.shape[0]
    captions: list[list[int]] = [[] for _ in range(V)]
    for i, v in enumerate(split.text_to_video.tolist()):
        captions[v].append(i)
    missing = [split.video_ids[v] for v in range(V) if not captions[v]]
    if missing:
        raise ValueError("protocol='reference' needs a caption for every gallery video; "
                         f"none for {missing[:5]}")
    m_index = caption_index_in_video(split.text_to_video)
    sims = torch.empty(len(text), V)
    for m in m_index.unique().tolist():
        queries = (m_index == m).nonzero().squeeze(1)
        gallery_text = text[[caps[m % len(caps)] for caps in captions]]           # [V, D]
        sims[queries] = model.score(text[queries], frames, chunk_size=chunk_size,
                                    generator=generator, gallery_text=gallery_text).cpu()
    return sims


def seeded_scores(model: Any, split: CoarseSplit, protocol: str = "correct", chunk_size: int = 16,
                  seed: int = 0) -> torch.Tensor:
    """`score_split` with a generator seeded by `seed` (T-MASS samples its texts from it): [T, V]."""
    return score_split(model, split, protocol, chunk_size, torch.Generator().manual_seed(seed))


def evaluate_retrieval(model: Any, split: CoarseSplit, protocol: str = "correct",
                       chunk_size: int = 16, seed: int = 0, dsl: bool = False,
                       ks: Sequence[int] = KS) -> dict[str, float]:
    """Score a split (seeded) and return its t2v / v2t metrics."""
    return retrieval_metrics(seeded_scores(model, split, protocol, chunk_size, seed), split.text_to_video, ks, dsl)


def hits_at(sims: torch.Tensor, text_to_video: torch.Tensor, k: int = 1) -> torch.Tensor:
    """[T] bool from [T, V] scores: does each caption find its video in the top k (the captions behind R@k)?"""
    return t2v_ranks(sims, text_to_video) <= k


def recall_by_group(hits: torch.Tensor, groups: torch.Tensor) -> dict[int, float]:
    """R@k (%) within each group of captions: hits [T] (0/1, e.g. `hits_at`), groups [T] int -> {group: %}."""
    return {int(g): 100 * float(hits[groups == g].float().mean()) for g in torch.unique(groups)}


def caption_event_counts(split: CoarseSplit, captions_jsonl: str | Path) -> torch.Tensor:
    """[T] how many events each text of `split` (from `load_coarse_split` on this file, so a video's texts
    come in its file order) names, as the captions' meta["caption_events"] records (SynthMoments: 0 for the
    scene caption); -1 where it is not recorded (real datasets)."""
    named = {r.vid: [len(e) for e in r.meta.get("caption_events", [])] for r in read_captions(captions_jsonl)}
    position = caption_index_in_video(split.text_to_video).tolist()
    counts = []
    for v, k in zip(split.text_to_video.tolist(), position):
        per_caption = named.get(split.video_ids[v], [])
        counts.append(per_caption[k] if k < len(per_caption) else -1)
    return torch.tensor(counts, dtype=torch.long)

