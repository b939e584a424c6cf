"""`stage: vcmr` recipes: coarse-to-fine video-corpus moment retrieval on a real benchmark (TACoS-CG).

A vcmr recipe names one `coarse` recipe (retrievers trained on whole-video captions, frozen CLIP frames
from `c2f features`) and one `fine` recipe (grounding models on released clip features), both on the
same dataset, and how to search with them (`search:`, the fields of `SearchConfig`). Running it:

1. exports the dataset once, moments and whole-video captions (`captions: native` = the dataset's own,
   the LLM-written TACoS-CG captions; `offline` = generated from the moment sentences with
   `c2f_lib.data.coarse_captions`, no model);
2. trains (or reuses) every model of both recipes, with their own metrics;
3. searches each eval split's corpus in the two-query protocol of TACoS-CG: the coarse stage ranks the
   corpus with the query's video caption, the fine stage localises the moment sentence in the first
   `k_videos` videos. Every coarse model is paired with every fine model, plus a fine-only row that
   searches every video of the corpus (fusion "fine"): what the coarse stage buys;
4. picks the fusion's coarse weight `alpha` and `temperature` on the val split (grids in
   `select:`), never on the eval splits, and reports VR / SVMR / VCMR recall per split.

The corpus of a split is every video its moment queries mention; a video needs both its frames (coarse
store) and its clip features (released tree).
"""
from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

import torch

from c2f_lib.pipeline.recipes import RecipeError, export_annotations, train_coarse_recipe, train_fine_recipe

SELECT_METRIC = "VCMR-R@1-IoU0.5"
DEFAULT_GRID = {"alpha": [0.1, 0.2, 0.3, 0.5], "temperature": [None, 0.05]}   # None: the model's own


class FineOnly:
    """The coarse stage of the fine-only baseline: every video scores the same, so the fine model
    searches the whole corpus (with k_videos = the corpus size and fusion "fine")."""

    def score(self, text_emb: torch.Tensor, frames: torch.Tensor, chunk_size: int = 16,
              generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.zeros(text_emb.shape[0], frames.shape[0])          # [T, V]


def corpus_and_queries(samples: list, split, captions_file: Path):
    """(Corpus, Queries) of one split: clip features and moment tokens from the fine samples, frames and
    caption embeddings from the coarse split (a CoarseSplit of the same videos)."""
    from c2f_lib.data.schema import read_captions
    from c2f_lib.pipeline.search import Corpus, Queries, assign_captions

    frame_row = {vid: i for i, vid in enumerate(split.video_ids)}
    by_vid = {}
    for s in samples:
        by_vid.setdefault(s.vid, s)
    missing = [v for v in by_vid if v not in frame_row]
    if missing:
        raise RecipeError(f"{len(missing)} video(s) with moment features have no frames in the coarse store, "
                          f"e.g. {missing[:3]}")
    vids = list(by_vid)
    corpus = Corpus(video_ids=vids, frames=split.frames[[frame_row[v] for v in vids]],   # [V, F, D]
                    clips=[by_vid[v].clip_feats for v in vids], durations=[by_vid[v].duration for v in vids],
                    clip_len=samples[0].clip_len)
    caption_row = {t: i for i, t in enumerate(split.texts)}
    coarse_texts = assign_captions([s.vid for s in samples], read_captions(captions_file), captions_file)
    coarse_sentence = split.text_emb[[caption_row[t] for t in coarse_texts]]                # [T, D]
    queries = Queries(qids=[s.qid for s in samples], texts=[s.query for s in samples],
                      sentence=coarse_sentence, tokens=[s.token_feats for s in samples],
                      gt_vids=[s.vid for s in samples], gt_windows=[s.windows for s in samples],
                      coarse_texts=coarse_texts, coarse_sentence=coarse_sentence)
    return corpus, queries


def _ground_truth(samples: list) -> list[dict]:
    return [{"qid": s.qid, "vid": s.vid, "relevant_windows": s.windows} for s in samples]


def _evaluate(coarse, fine, corpus, queries, gts, base, grid: list[dict]) -> list[tuple[dict, dict]]:
    """[(fusion settings, metrics)] for each grid point, from one localisation (the fine model runs once
    per (query, video) pair)."""
    from c2f_lib.evaluation.vcmr import evaluate_vcmr
    from c2f_lib.pipeline.search import coarse_temperature, localise, to_record

    candidates = localise(coarse, fine, queries, corpus, base)
    out = []
    for point in grid:
        cfg = dataclasses.replace(base, **point)
        records = [to_record(c, cfg, coarse_temperature(coarse, cfg)) for c in candidates]
        out.append((point, evaluate_vcmr(records, gts, k_videos=[cfg.k_videos])))
    return out


def _grid(recipe: dict) -> list[dict]:
    select = {**DEFAULT_GRID, **recipe.get("select", {})}
    unknown = set(select) - set(DEFAULT_GRID)
    if unknown:
        raise RecipeError(f"select: only {sorted(DEFAULT_GRID)} are chosen on val, got {sorted(unknown)}")
    return [dict(zip(select, values)) for values in itertools.product(*select.values())]


def run_vcmr_recipe(recipe: dict, run_dir: Path, device: str, features_root: Path,
                    datasets_root: str | Path | None) -> dict[str, Any]:
    """Train both recipes, choose the fusion on val, evaluate VCMR on the eval splits (module docstring)."""
    from c2f_lib.paths import RunPaths
    from c2f_lib.pipeline.search import SearchConfig

    coarse_recipe, fine_recipe = recipe["_coarse"], recipe["_fine"]
    coarse_recipe["captions"] = recipe.get("captions", "native")
    split_names = recipe["splits"]
    if not isinstance(split_names.get("val"), str):
        raise RecipeError("splits.val must name a split: the fusion is chosen on it")
    wanted = [split_names["val"], *split_names["eval"]]
    for sub in (coarse_recipe, fine_recipe):
        sub["splits"] = {**sub["splits"], "eval": list(dict.fromkeys([*sub["splits"]["eval"], *wanted]))}
    base = SearchConfig(**{**recipe["search"], "coarse_query": "caption", "fusion": "weighted",
                           "seed": recipe["search"].get("seed", 0)})
    grid = _grid(recipe)
    every_split = [coarse_recipe["splits"]["train"], fine_recipe["splits"]["train"], *wanted]
    export_annotations({**recipe, "splits": {"train": every_split[0], "eval": every_split[1:]}}, run_dir,
                       datasets_root)
    coarse_models, coarse_metrics, coarse_splits = train_coarse_recipe(coarse_recipe, run_dir, device, features_root)
    fine_models, fine_metrics, fine_splits = train_fine_recipe(fine_recipe, run_dir, device, features_root)
    paths = RunPaths(run_dir)
    data = {s: corpus_and_queries(fine_splits[s], coarse_splits[s], paths.captions_file(recipe["dataset"], s))
            for s in wanted}
    gts = {s: _ground_truth(fine_splits[s]) for s in wanted}
    systems: dict[str, dict] = {}
    for (c_name, coarse), (f_name, fine) in itertools.product(coarse_models.items(), fine_models.items()):
        val = _evaluate(coarse, fine, *data[split_names["val"]], gts[split_names["val"]], base, grid)
        chosen, val_metrics = max(val, key=lambda row: row[1][SELECT_METRIC])       # first best on ties
        cfg = dataclasses.replace(base, **chosen)
        systems[f"{c_name}+{f_name}"] = {
            "fusion": {"fusion": "weighted", **chosen}, "val_grid": [{**p, SELECT_METRIC: m[SELECT_METRIC]}
                                                                     for p, m in val],
            "metrics": {s: _evaluate(coarse, fine, *data[s], gts[s], cfg, [{}])[0][1] for s in wanted}}
    for f_name, fine in fine_models.items():
        metrics = {}
        for s in wanted:
            corpus, queries = data[s]
            cfg = dataclasses.replace(base, fusion="fine", k_videos=len(corpus.video_ids))
            metrics[s] = _evaluate(FineOnly(), fine, corpus, queries, gts[s], cfg, [{}])[0][1]
        systems[f"fine_only+{f_name}"] = {"fusion": {"fusion": "fine", "k_videos": "all"}, "metrics": metrics}
    return {"recipe": recipe["recipe"], "dataset": recipe["dataset"], "device": device,
            "captions": coarse_recipe["captions"], "selected_on": split_names["val"], "select_metric": SELECT_METRIC,
            "search": dataclasses.asdict(base), "metrics": {n: s["metrics"] for n, s in systems.items()},
            "systems": systems, "coarse": coarse_metrics, "fine": fine_metrics, "vs_published": {}}
