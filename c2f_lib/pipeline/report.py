"""The evaluation report (notebook 06): every coarse method x the best fine model, in one markdown file.

    stages = stage_metrics(run_dir)                   # metrics json of 03/04/05 (None where missing)
    ckpts = find_checkpoints(run_dir, seed)           # {"coarse": {method: path}, "fine": {...}}
    fine = choose_fine(ckpts["fine"], stages["05_fine"])   # best on validation (see SELECT_METRICS)
    results = evaluate_methods(ckpts, store, moments_jsonl, cfg, ks_videos=(1, 5, 10), fine_name=fine.name)
    # two-query mode (TACoS-CG): cfg.coarse_query = "caption" and captions_jsonl=<the split's captions>
    write_report(run_dir, build_report(stages, results, figures, cfg, split, fine=fine))
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from c2f_lib.evaluation.fine_summary import best_val
from c2f_lib.evaluation.vcmr import evaluate_vcmr, iou_of_top1
from c2f_lib.models.registry import load_model
from c2f_lib.paths import RunPaths
from c2f_lib.pipeline.search import SearchConfig, load_split, localise, records_by_k
from c2f_lib.utils import atomic_write_text, read_json

# stage -> kind of model it trains (checkpoints/<stage>/<name>_seed<seed>.pt, or
# checkpoints/<stage>/<name>_seed<seed>/<name>.pt for stages that keep several files per seed)
STAGES = {"03_coarse": "coarse", "04_textdiff": "coarse", "05_fine": "fine"}
# The fine model is the one with the best moment-retrieval number, looked up in this order:
#  1. validation numbers in stage 05's metrics json (`mean.val.<model>`, mean over seeds);
#  2. the validation numbers each fine checkpoint keeps from training (`summary.best_val`);
#  3. held-out numbers in stage 05's metrics json (`mean.test`, then `mean.test_cg`): test-set
#     selection, used only when no validation number exists, and the report says so;
#  4. the papers' order, FINE_PREFERENCE, when no stage metric says which is best.
# Within a source, the first metric of SELECT_METRICS that some model has decides (training's
# checkpoint selection metric first).
SELECT_METRICS = ("MR-full-mAP", "MR-full-R1@0.7", "MR-full-R1@0.5", "mIoU")
HELD_OUT_SPLITS = ("test", "test_cg")
FINE_PREFERENCE = ("mesm", "qd_detr", "moment_detr")


def stage_metrics(run_dir: str | Path) -> dict[str, dict | None]:
    """Each upstream stage's metrics json, or None when the stage has not run."""
    paths = RunPaths(run_dir)
    return {stage: read_json(paths.metrics_file(stage)) if paths.metrics_file(stage).exists() else None
            for stage in STAGES}


def find_checkpoints(run_dir: str | Path, seed: int = 0) -> dict[str, dict[str, Path]]:
    """{"coarse": {method: path}, "fine": {model: path}} for one seed, from every trained stage."""
    paths = RunPaths(run_dir)
    found: dict[str, dict[str, Path]] = {"coarse": {}, "fine": {}}
    suffix = f"_seed{seed}"
    for stage, kind in STAGES.items():
        for path in sorted(paths.checkpoints(stage).glob(f"*{suffix}.pt")):
            found[kind][path.name.removesuffix(f"{suffix}.pt")] = path
        for folder in sorted(paths.checkpoints(stage).glob(f"*{suffix}")):
            name = folder.name.removesuffix(suffix)
            if (folder / f"{name}.pt").is_file():
                found[kind][name] = folder / f"{name}.pt"
    return found


@dataclass
class FineChoice:
    name: str | None        # None: no fine checkpoint
    basis: str              # how it was chosen, in words (printed in the report)


def _pick(scores: dict[str, dict], source: str) -> FineChoice | None:
    """The model with the best first SELECT_METRICS entry any model has; None when none has one."""
    for metric in SELECT_METRICS:
        have = {name: float(m[metric]) for name, m in scores.items() if isinstance((m or {}).get(metric), (int, float))}
        if have:
            name = max(sorted(have), key=have.get)  # sorted: ties go to the first name
            return FineChoice(name, f"best {source} {metric} ({name}: {have[name]:.2f})")
    return None


def _checkpoint_val(path: Path) -> dict:
    return best_val(load_model(path)[1])


def _fine_scores(fine: dict[str, Path], stage05: dict | None) -> Iterator[tuple[str, dict[str, dict | None]]]:
    """(source, {model: its metrics}) in the order of the sources above; lazy (checkpoints load last)."""
    means = (stage05 or {}).get("mean", {})
    yield "validation (stage 05 metrics)", {n: means.get("val", {}).get(n) for n in fine}
    yield "validation (each checkpoint's best epoch)", {n: _checkpoint_val(path) for n, path in fine.items()}
    for split in HELD_OUT_SPLITS:
        yield (f"held-out `{split}` (stage 05 metrics; no validation numbers found)",
               {n: means.get(split, {}).get(n) for n in fine})


def choose_fine(fine: dict[str, Path], stage05: dict | None = None) -> FineChoice:
    """The fine model to pair with every coarse method, from stage 05's metrics json (`stage05`)."""
    if not fine:
        return FineChoice(None, "no fine checkpoint")
    for source, scores in _fine_scores(fine, stage05):
        choice = _pick(scores, source)
        if choice is not None:
            return choice
    ranked = sorted(fine, key=lambda n: (FINE_PREFERENCE.index(n) if n in FINE_PREFERENCE else len(FINE_PREFERENCE), n))
    return FineChoice(ranked[0], f"fixed preference {FINE_PREFERENCE} (no stage-05 metrics found)")


def best_fine(fine: dict[str, Path], stage05: dict | None = None) -> str | None:
    return choose_fine(fine, stage05).name


@dataclass
class MethodResult:
    method: str                     # coarse method
    fine: str                       # fine model
    metrics: dict[str, Any]         # evaluate_vcmr at cfg.k_videos (numbers, plus query_mode)
    by_k: dict[int, dict[str, Any]]     # k_videos -> metrics
    top1_iou: np.ndarray            # [Q] IoU of each query's first corpus moment
    records: list[dict]             # prediction records at cfg.k_videos


def evaluate_methods(checkpoints: dict[str, dict[str, Path]], store: str | Path, moments_jsonl: str | Path,
                     cfg: SearchConfig, ks_videos: Sequence[int] = (1, 5, 10), device: str = "cpu",
                     fine_name: str | None = None,
                     captions_jsonl: str | Path | None = None) -> list[MethodResult]:
    """Coarse-to-fine VCMR for every coarse checkpoint x one fine checkpoint (default: `best_fine`).
    `captions_jsonl` (the split's video captions) is needed by the two-query mode only."""
    fine_name = fine_name or best_fine(checkpoints["fine"])
    if fine_name is None or not checkpoints["coarse"]:
        return []
    if cfg.coarse_query == "caption" and captions_jsonl is None:
        raise ValueError("coarse_query='caption' (two-query mode) needs captions_jsonl")
    corpus, queries = load_split(store, moments_jsonl, captions_jsonl if cfg.coarse_query == "caption" else None)
    gts = [{"qid": q, "vid": v, "relevant_windows": w}
           for q, v, w in zip(queries.qids, queries.gt_vids, queries.gt_windows)]
    fine = load_model(checkpoints["fine"][fine_name], map_location=device)[0]
    ks = sorted({*ks_videos, cfg.k_videos})
    ks = [k for k in ks if k <= len(corpus.video_ids)]
    results = []
    for method, path in checkpoints["coarse"].items():
        coarse = load_model(path, map_location=device)[0]
        cands = localise(coarse, fine, queries, corpus, dataclasses.replace(cfg, k_videos=max(ks)))
        per_k = records_by_k(coarse, cands, cfg, ks)
        by_k = {k: evaluate_vcmr(recs, gts, k_videos=(k,)) for k, recs in per_k.items()}
        k_main = min(cfg.k_videos, max(ks))
        records = per_k[k_main]
        results.append(MethodResult(method, fine_name, by_k[k_main], by_k, iou_of_top1(records, gts), records))
    return results


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    return head + "".join("| " + " | ".join(fmt(r.get(c, "—")) for c in columns) + " |\n" for r in rows)


HEADLINE = ("VR-R@1", "VR-R@10", "SVMR-R@1-IoU0.5", "SVMR-R@1-IoU0.7", "VCMR-R@1-IoU0.5",
            "VCMR-R@1-IoU0.7", "VCMR-R@10-IoU0.5", "VCMR-R@100-IoU0.7")


def build_report(stages: dict[str, dict | None], results: list[MethodResult], figures: dict[str, Path],
                 cfg: SearchConfig, split: str, notes: Sequence[str] = (), fine: FineChoice | None = None,
                 dataset: str = "synthmoments") -> str:
    """Markdown: which stages ran, the headline table, effect of K, figures (paths relative to run_dir)."""
    chosen = f"`{fine.name}`, chosen by {fine.basis}" if fine and fine.name else "the best fine model"
    mode = ("two-query mode: the coarse stage searches with a caption of the query's video, the fine stage "
            "with the moment sentence" if cfg.coarse_query == "caption" else "single-query mode: both stages "
            "search with the moment sentence")
    lines = ["# c2f evaluation report", "",
             f"Coarse-to-fine video-corpus moment retrieval on `{dataset}`, `{split}` split: top-{cfg.k_videos} "
             f"videos from each coarse method, moments from {chosen}, `{cfg.fusion}` fusion; {mode}.", "",
             "## Stages", ""]
    for stage, metrics in stages.items():
        lines.append(f"- `{stage}`: " + ("metrics found" if metrics is not None else "**missing** (stage not run)"))
    lines += [f"- {note}" for note in notes]
    lines += ["", "## Coarse-to-fine VCMR (percent)", ""]
    if results:
        rows = [{"coarse": r.method, "fine": r.fine, **r.metrics} for r in results]
        lines.append(_table(rows, ["coarse", "fine", f"Ceiling@{cfg.k_videos}", *HEADLINE]))
        lines += ["## Effect of K (videos searched)", ""]
        rows = [{"coarse": r.method, "K": k, "Ceiling@K": m[f"Ceiling@{k}"], **m}
                for r in results for k, m in r.by_k.items()]
        lines.append(_table(rows, ["coarse", "K", "Ceiling@K", "VCMR-R@1-IoU0.5", "VCMR-R@1-IoU0.7"]))
    else:
        lines.append("**Not evaluated**: needs at least one coarse and one fine checkpoint.")
    for name, path in figures.items():
        lines += ["", f"### {name}", "", f"![{name}]({path})"]
    for stage, metrics in stages.items():
        rows = [{"metric": " / ".join(path), "value": value} for path, value in _leaves(metrics or {})]
        if rows:
            lines += ["", f"## `{stage}` headline numbers", "", _table(rows, ["metric", "value"])]
    return "\n".join(lines) + "\n"


# Bulky or per-seed entries of a stage's metrics that the report leaves to the json file.
_NOT_HEADLINE = {"provenance", "model_config", "per_seed", "config", "history"}


def _leaves(metrics: dict, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str | float]]:
    """(path, value) for every number in a nested metrics dict; {mean, std} pairs become 'mean ± std'."""
    if all(isinstance(metrics.get(k), (int, float)) for k in ("mean", "std")):
        return [(path, f"{metrics['mean']:.2f} ± {metrics['std']:.2f}")]
    found = []
    for key, value in metrics.items():
        if key in _NOT_HEADLINE:
            continue
        if isinstance(value, dict):
            found += _leaves(value, (*path, str(key)))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found.append(((*path, str(key)), value))
    return found


def write_report(run_dir: str | Path, markdown: str) -> Path:
    path = RunPaths(run_dir).report
    atomic_write_text(path, markdown)
    return path
