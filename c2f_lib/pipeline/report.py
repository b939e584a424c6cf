"""The evaluation report (notebook 06): every coarse method x the best fine model, in one markdown file.

    stages = stage_metrics(run_dir)                   # metrics json of 03/04/05 (None where missing)
    ckpts = find_checkpoints(run_dir, seed)           # {"coarse": {method: path}, "fine": {...}}
    fine = run_fine_choice(run_dir, seed)             # best on validation (see SELECT_METRICS); the explorer's too
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
import torch

from c2f_lib.evaluation.bootstrap import paired_difference_ci
from c2f_lib.evaluation.fine_summary import best_val
from c2f_lib.evaluation.vcmr import evaluate_vcmr, iou_of_top1
from c2f_lib.models.registry import load_model
from c2f_lib.paths import RunPaths
from c2f_lib.pipeline.search import SearchConfig, load_split, localise, records_by_k
from c2f_lib.utils import atomic_write_text, read_json

# stage -> kind of model it trains (checkpoints/<stage>/<name>_seed<seed>.pt, or
# checkpoints/<stage>/<name>_seed<seed>/<name>.pt for stages that keep several files per seed)
STAGES = {"03_coarse": "coarse", "04_textdiff": "coarse", "05_fine": "fine"}
REPORTED = ("01_synthmoments", "02_features", *STAGES)   # stages whose metrics the report shows
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
            for stage in REPORTED}


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


def run_fine_choice(run_dir: str | Path, seed: int = 0) -> FineChoice:
    """The one fine model of a run, for everything that shows its results (report 06, explorer 07):
    `choose_fine` over the run's fine checkpoints with stage 05's metrics json, so both pick the same."""
    stage05 = RunPaths(run_dir).metrics_file("05_fine")
    return choose_fine(find_checkpoints(run_dir, seed)["fine"], read_json(stage05) if stage05.exists() else None)


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
    results, fine_cache = [], {}     # one fine run per distinct (query, video) across the methods
    for method, path in checkpoints["coarse"].items():
        coarse = load_model(path, map_location=device)[0]
        cands = localise(coarse, fine, queries, corpus, dataclasses.replace(cfg, k_videos=max(ks)),
                         fine_cache=fine_cache)
        per_k = records_by_k(coarse, cands, cfg, ks)
        by_k = {k: evaluate_vcmr(recs, gts, k_videos=(k,)) for k, recs in per_k.items()}
        k_main = min(cfg.k_videos, max(ks))
        records = per_k[k_main]
        results.append(MethodResult(method, fine_name, by_k[k_main], by_k, iou_of_top1(records, gts), records))
    return results


def _fmt(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def _table(rows: list[dict[str, Any]], columns: Sequence[str], headers: Sequence[str] | None = None) -> str:
    """A markdown table; `headers` are the shown column names (default: the keys)."""
    names = headers or columns
    head = "| " + " | ".join(names) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(_fmt(r.get(c, "—")) for c in columns) + " |\n" for r in rows)


def metric_label(name: str) -> str:
    """'VCMR-R@1-IoU0.5' -> 'VCMR R@1 (IoU ≥ 0.5)': readable, and no Markdown preview turns it into a mailto
    link (an '@' followed by a dotted word looks like an e-mail address)."""
    for setting in ("VCMR-", "SVMR-", "MR-full-"):
        if name.startswith(setting):
            label, rest = setting.rstrip("-").replace("MR-full", "MR"), name[len(setting):]
            if "-IoU" in rest:
                recall, iou = rest.split("-IoU")
                return f"{label} {recall} (IoU ≥ {iou})"
            if "@" in rest:
                recall, iou = rest.split("@")
                return f"{label} {recall} (IoU ≥ {iou})"
            return f"{label} {rest}"
    return name.replace("-", " ")


def _pm(mean: float, std: float | None, n: int) -> str:
    return f"{mean:.1f} ± {std:.1f}" if n > 1 and std is not None else f"{mean:.1f}"


def _data_section(m01: dict | None) -> list[str]:
    if not m01:
        return []
    rows = [{"split": s, "videos": m01["videos"][s], "queries": m01["queries"][s],
             "mean video (s)": m01["mean_duration_s"][s], "mean moment (s)": m01["mean_moment_s"][s]}
            for s in sorted(m01["videos"], key=lambda s: SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER))]
    return ["## 1. Data (stage 01)", "",
            _table(rows, ["split", "videos", "queries", "mean video (s)", "mean moment (s)"])]


def _features_section(m02: dict | None) -> list[str]:
    if not m02 or "grounding_auc_val" not in m02:
        return []
    zs = m02["zero_shot_val"]
    rows = [{"probe": "caption → video R@1, mean of clips (val)", "value": zs["t2v_R@1"],
             "chance": zs["t2v_R@1_chance"]}]
    for split in ("val", "test_cg"):
        if f"grounding_auc_{split}" in m02:
            recall = m02[f"moment_video_recall_{split}"]
            rows += [{"probe": f"sentence–clip grounding AUC ({split})", "value": m02[f"grounding_auc_{split}"],
                      "chance": 50.0},
                     {"probe": f"moment → video R@1, best clip ({split})", "value": recall["R@1"],
                      "chance": 100.0 / recall["videos"]}]
    return ["## 2. Features (stage 02)", "", f"Backbone `{m02['backbone']}` (`{m02['weights']}`); probes need no "
            "training.", "", _table(rows, ["probe", "value", "chance"], ["probe (no training)", "value", "chance"])]


def _interval(ci: dict | None) -> str:
    """'-2.2 to +4.4' from a paired_difference_ci result; '—' without one."""
    return "—" if not ci else f"{ci['low']:+.1f} to {ci['high']:+.1f}"


def _coarse_section(m03: dict | None, m04: dict | None, split: str) -> list[str]:
    if not m03:
        return []
    if split not in m03["t2v_R@1"]:          # e.g. a report on val, which stage 03 selects on but does not score
        return ["## 3. Coarse retrieval (stage 03)", "",
                f"Stage 03 scored {', '.join(f'`{s}`' for s in m03['t2v_R@1'])}, not `{split}`: no table here."]
    r1 = m03["t2v_R@1"][split]
    base = r1["correct"].get("meanpool")
    margins = m03.get("t2v_R@1_margin_vs_meanpool", {}).get(split, {})
    rows = [{"method": method, "R@1": _pm(v["mean"], v.get("std"), v.get("n", 1)),
             "Δ": "—" if base is None or method == "meanpool" else f"{v['mean'] - base['mean']:+.1f}",
             "CI": _interval(margins.get(method)), "reference": r1["reference"][method]["mean"]}
            for method, v in r1["correct"].items()]
    lines = ["## 3. Coarse retrieval (stage 03)", "",
             f"Text → video R@1 (%) on `{split}`, every caption against the whole gallery. **Correct** protocol: "
             "each video pooled by the query being scored; the published code's **reference** protocol pools each "
             "gallery video by its own caption and leaks the answer. Mean-pool is the baseline.", "",
             _table(rows, ["method", "R@1", "Δ", "CI", "reference"],
                    ["method", "R@1 (correct)", "Δ vs mean-pool", "95 % interval of Δ (videos resampled)",
                     "R@1 (reference, leaky)"])]
    td = (m04 or {}).get("t2v_v2t", {})
    if f"textdiff/{split}" in td and f"xpool/{split}" in td:
        t, x = td[f"textdiff/{split}"]["t2v_R@1"], td[f"xpool/{split}"]["t2v_R@1"]
        ablation = sorted(m04.get("step_ablation_t2v_R@1", {}).items(), key=lambda kv: int(kv[0]))
        lines += ["", "## 4. TextDiff (stage 04)", "",
                  _table([{"method": "X-Pool (the base TextDiff refines)", "R@1": x["mean"], "Δ": "—"},
                          {"method": "TextDiff", "R@1": t["mean"], "Δ": f"{t['mean'] - x['mean']:+.1f}"}],
                         ["method", "R@1", "Δ"], ["method", f"R@1 on {split} (correct)", "Δ vs X-Pool"]),
                  "Diffusion steps K (seed 0, R@1 on " + split + "): "
                  + (", ".join(f"K = {k}: {v[split]:.1f}" for k, v in ablation) or "—") + "."]
    return lines


SPLIT_ORDER = ("train", "val", "test", "test_cg")
FINE_HEADLINE = ("MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP")


def _fine_section(m05: dict | None) -> list[str]:
    if not m05:
        return []
    prior, mean, std, n = m05["window_prior"], m05["mean"], m05.get("std", {}), m05.get("n_seeds", 1)
    rows = []
    for name in [*mean.get("test", {}), "window prior"]:
        row: dict[str, Any] = {"model": name}
        for split in ("test", "test_cg"):
            values = prior[split] if name == "window prior" else mean[split][name]
            for metric in FINE_HEADLINE:
                sd = None if name == "window prior" else std.get(split, {}).get(name, {}).get(metric)
                row[f"{split} {metric}"] = _pm(values[metric], sd, n)
            row[f"{split} Δ"] = "—" if name == "window prior" else \
                f"{values['MR-full-R1@0.5'] - prior[split]['MR-full-R1@0.5']:+.1f}"
        rows.append(row)
    metrics = (*FINE_HEADLINE, "Δ")
    columns = [f"{s} {m}" for s in ("test", "test_cg") for m in metrics]
    headers = [f"{s}: {'Δ R1 vs prior' if m == 'Δ' else metric_label(m)}" for s in ("test", "test_cg") for m in metrics]
    lines = ["## 5. Fine grounding (stage 05)", "",
             "Moment retrieval inside the ground-truth video (QVHighlights evaluator, %). The **window prior** "
             "ignores video and sentence (the best position-only answer on train); Δ is R1 (IoU ≥ 0.5) above it.", "",
             _table(rows, ["model", *columns], ["model", *headers])]
    swap = m05.get("query_swap_test", {})
    if swap:
        rows = [{"model": name, **scores} for name, scores in swap.items()]
        lines += ["**Does it read the sentence?** The query-swap test asks each `test` query's video again with "
                  "another moment's sentence: a text-blind model keeps its answer (query dependence 0), a grounding "
                  "one follows the new sentence (dependence up to its own R1).", "",
                  _table(rows, ["model", "own", "swapped_vs_own", "swapped_vs_partner", "query_dependence"],
                         ["model", "R1, own sentence", "R1, swapped vs own window", "R1, swapped vs partner window",
                          "query dependence"])]
    return lines


VCMR_COLUMNS = ("VR-R@1", "VR-R@10", "SVMR-R@1-IoU0.5", "VCMR-R@1-IoU0.5", "VCMR-R@1-IoU0.7", "VCMR-R@10-IoU0.5")


def vcmr_margins(results: Sequence[MethodResult], baseline: str = "meanpool",
                 seed: int = 0) -> dict[str, dict[str, float]]:
    """Each method's VCMR R@1 (IoU >= 0.5) minus the baseline's, with its paired bootstrap interval over the
    queries' ground-truth videos (the resampling unit of `paired_difference_ci`): {method: {diff, low, high}}."""
    base = next((r for r in results if r.method == baseline), None)
    if base is None:
        return {}
    order = [str(rec["qid"]) for rec in base.records]
    videos = {v: i for i, v in enumerate(dict.fromkeys(rec["gt_vid"] for rec in base.records))}
    groups = torch.tensor([videos[rec["gt_vid"]] for rec in base.records])
    base_hits = torch.from_numpy(base.top1_iou >= 0.5).float()
    out = {}
    for r in results:
        if r is base:
            continue
        position = {str(rec["qid"]): i for i, rec in enumerate(r.records)}
        if sorted(position) != sorted(order):
            raise ValueError(f"{r.method} and {baseline} were evaluated on different queries")
        hits = torch.from_numpy(r.top1_iou >= 0.5).float()[[position[q] for q in order]]
        out[r.method] = paired_difference_ci(hits, base_hits, groups, seed=seed)
    return out


def _vcmr_section(results: list[MethodResult], oracle: dict | None, cfg: SearchConfig, split: str,
                  chosen: str, mode: str) -> list[str]:
    lines = ["## 6. Coarse-to-fine search (stage 06)", "",
             f"Video-corpus moment retrieval on `{split}`: each coarse method ranks the whole corpus, {chosen} "
             f"localises the moment in its top {cfg.k_videos} videos, `{cfg.fusion}` fusion; {mode}. A moment in "
             "the wrong video is a miss; the ceiling is the share of queries whose video is in the shortlist.", ""]
    if not results:
        return lines + ["**Not evaluated**: needs at least one coarse and one fine checkpoint."]
    base = next((r for r in results if r.method == "meanpool"), None)
    ceiling = f"Ceiling@{cfg.k_videos}"
    margins = vcmr_margins(results, seed=cfg.seed)
    rows = [{"coarse": r.method, ceiling: r.metrics.get(ceiling), **{c: r.metrics.get(c) for c in VCMR_COLUMNS},
             "Δ": "—" if base is None or r is base else
             f"{r.metrics['VCMR-R@1-IoU0.5'] - base.metrics['VCMR-R@1-IoU0.5']:+.1f}",
             "CI": _interval(margins.get(r.method))}
            for r in results]
    if oracle:
        rows.append({"coarse": "script oracle (ceiling)", ceiling: oracle.get(ceiling),
                     **{c: oracle.get(c) for c in VCMR_COLUMNS}, "Δ": "—"})
    lines.append(_table(rows, ["coarse", ceiling, *VCMR_COLUMNS, "Δ", "CI"],
                        ["coarse", f"ceiling (top {cfg.k_videos})", *map(metric_label, VCMR_COLUMNS),
                         "Δ VCMR vs mean-pool", "95 % interval of Δ (videos resampled)"]))
    if oracle:
        lines += ["The **script oracle** knows each video's script and each query's (colour, shape, action): it "
                  "finds every video holding the event and guesses among them, with exact windows. No system "
                  "reading the same sentences can beat it on average.", ""]
    ks = sorted({k for r in results for k in r.by_k})
    rows = [{"coarse": r.method, **{k: f"{m['VCMR-R@1-IoU0.5']:.1f} ({m[f'Ceiling@{k}']:.1f})" for k, m in r.by_k.items()}}
            for r in results]
    lines += ["### Videos handed to the fine model", "",
              f"{metric_label('VCMR-R@1-IoU0.5')} (and the ceiling) when the fine model searches the top K videos:", "",
              _table(rows, ["coarse", *ks], ["coarse", *(f"K = {k}" for k in ks)])]
    return lines


def build_report(stages: dict[str, dict | None], results: list[MethodResult], figures: dict[str, Path],
                 cfg: SearchConfig, split: str, notes: Sequence[str] = (), fine: FineChoice | None = None,
                 dataset: str = "synthmoments", oracle: dict | None = None) -> str:
    """Markdown, one section per stage: each method beside its baseline with the difference, the query-swap
    test, coarse-to-fine search with the script oracle's ceiling, then the figures (paths relative to run_dir)."""
    chosen = f"`{fine.name}` (chosen by {fine.basis})" if fine and fine.name else "the best fine model"
    mode = ("two-query mode: the coarse stage searches with a caption of the query's video, the fine stage with "
            "the moment sentence" if cfg.coarse_query == "caption" else "single-query mode: both stages search with the moment "
            "sentence")
    lines = ["# c2f evaluation report", "",
             f"Dataset `{dataset}`, held-out split `{split}`; checkpoints and the fine model were chosen on validation.", ""]
    missing = [stage for stage, metrics in stages.items() if metrics is None]
    if missing:
        lines += [f"**Missing stages** (not run): {', '.join(f'`{s}`' for s in missing)}.", ""]
    lines += [f"- {note}" for note in notes]
    for section in (_data_section(stages.get("01_synthmoments")), _features_section(stages.get("02_features")),
                    _coarse_section(stages.get("03_coarse"), stages.get("04_textdiff"), split),
                    _fine_section(stages.get("05_fine")), _vcmr_section(results, oracle, cfg, split, chosen, mode)):
        if section:
            lines += [*section, ""]
    if figures:
        lines += ["## Figures", ""]
        for name, path in figures.items():
            lines += [f"### {name}", "", f"![{name}]({path})", ""]
    return "\n".join(lines) + "\n"


def report_sections(markdown: str) -> list[str]:
    """The report cut at its `## ` headings, without the Figures section (a notebook shows them itself): small
    outputs that no viewer truncates mid-table."""
    sections, current = [], []
    for line in markdown.splitlines():
        if line.startswith("## ") and current:
            sections.append("\n".join(current).strip())
            current = []
        current.append(line)
    sections.append("\n".join(current).strip())
    return [s for s in sections if s and not s.startswith("## Figures")]


def display_report(markdown: str) -> None:
    """Show the report's sections in a notebook; each output's plain-text form is its full Markdown (not
    "<IPython.core.display.Markdown object>"), for viewers that cannot render Markdown."""
    from IPython.display import display

    for section in report_sections(markdown):
        display({"text/markdown": section, "text/plain": section}, raw=True)


def write_report(run_dir: str | Path, markdown: str) -> Path:
    path = RunPaths(run_dir).report
    atomic_write_text(path, markdown)
    return path
