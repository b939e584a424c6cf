"""`c2f repro --recipe configs/repro/<x>.yaml`: train and evaluate one paper's setting on a real benchmark.

A recipe (one YAML per paper and benchmark, see configs/repro/) names the dataset, the released or
extracted features it reads, the models with their published hyperparameters (each with its source),
and the numbers it should reproduce. Running one:

1. exports the benchmark's annotations from the annotation root (`--datasets-root`, as `c2f data`)
   into `<run-dir>/data/<dataset>/` (skipped when that folder already holds the needed splits);
2. loads features from `--features-root`:
   * stage `fine`: a released layout (Moment-DETR/QD-DETR npz folders or MESM HDF5 files) read by
     `features.released.load_released_moment_samples`;
   * stage `coarse` / `textdiff`: a feature store made by `c2f features` (frozen CLIP frames);
   * stage `coarse` with `features.mode: end_to_end`: the raw videos (`features.video_dir`) and the
     pretrained CLIP (`features.backbone`), fine-tuned with the head as the papers do
     (training.end_to_end: frames decoded lazily, CLIP at `clip_lr`);
3. trains every model (resumable, checkpoints reused when their settings are unchanged), evaluates it,
   and writes `<run-dir>/metrics/repro_<recipe>.json` with each metric beside its published target.

Overrides: `--set train.epochs=1 --set models.qd_detr.config.hidden_dim=32` (values parsed as YAML).

Why not `c2f run`: the notebook pipeline (01-07) is built around SynthMoments (stage 01 generates it,
02 trains the tiny CLIP on it, 05 and 06 read its fixed splits, test_cg included); a real benchmark has
other splits, released features instead of extraction, and no compositional split. Recipes reuse the
library the notebooks call (adapters, released features, trainers, evaluators) without them.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
from pathlib import Path
from typing import Any

import yaml

from c2f_lib.errors import UserError

STAGES = ("fine", "coarse", "textdiff", "vcmr")
REQUIRED = ("recipe", "stage", "dataset", "splits", "features", "models", "train", "targets")
# a `vcmr` recipe names a coarse and a fine recipe (paths relative to it) and how to search with them
REQUIRED_VCMR = ("recipe", "stage", "dataset", "splits", "coarse", "fine", "search")
CAPTION_SOURCES = ("native", "offline")   # the dataset's own whole-video captions, or generated from moments
FEATURE_MODES = ("store", "end_to_end")   # coarse: frozen features of a store, or CLIP fine-tuned on raw videos
END_TO_END_KEYS = ("backbone", "video_dir")


class RecipeError(UserError, ValueError):
    """A recipe file that does not say what it must."""


# --------------------------------------------------------------------------------------------- loading
def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise RecipeError(f"--set {dotted}: {key} is not a mapping")
    node[leaf] = value


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The recipe at `path` with `key.sub=value` overrides applied, checked for its required keys."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError("recipe file not found", str(path))
    recipe = yaml.safe_load(path.read_text()) or {}
    if not isinstance(recipe, dict):
        raise RecipeError("expected a mapping at the top level", str(path))
    sub_overrides: dict[str, list[str]] = {"coarse": [], "fine": []}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"--set {item!r}: use key.sub=value")
        part, _, rest = key.strip().partition(".")
        if recipe.get("stage") == "vcmr" and part in sub_overrides and rest:
            sub_overrides[part].append(f"{rest}={raw}")    # e.g. coarse.train.epochs=1 -> its coarse recipe
            continue
        _set(recipe, key.strip(), yaml.safe_load(raw))
    if recipe.get("stage") not in STAGES:
        raise RecipeError(f"stage must be one of {STAGES}, got {recipe.get('stage')!r}", str(path))
    missing = [k for k in (REQUIRED_VCMR if recipe["stage"] == "vcmr" else REQUIRED) if k not in recipe]
    if missing:
        raise RecipeError(f"missing key {missing[0]!r}", str(path))
    if recipe["stage"] == "vcmr":
        for part, stages in (("coarse", ("coarse",)), ("fine", ("fine",))):
            sub = load_recipe(path.parent / recipe[part], sub_overrides[part])
            if sub["stage"] not in stages or sub["dataset"] != recipe["dataset"]:
                raise RecipeError(f"{part}: {recipe[part]} must be a {stages[0]} recipe on {recipe['dataset']}, "
                                  f"got a {sub['stage']} recipe on {sub['dataset']}", str(path))
            recipe[f"_{part}"] = sub
        recipe.setdefault("targets", {})
    else:
        unknown_targets = set(recipe["targets"]) - set(recipe["models"])
        if unknown_targets:
            raise RecipeError(f"targets name models the recipe does not train: {sorted(unknown_targets)}",
                              str(path))
    if recipe.get("captions", "native") not in CAPTION_SOURCES:
        raise RecipeError(f"captions must be one of {CAPTION_SOURCES}, got {recipe['captions']!r}", str(path))
    recipe["_path"] = str(path)
    return recipe


def recipe_configs(recipe: dict, device: str = "cpu", dims: dict[str, int] | None = None) -> dict[str, tuple]:
    """{model name: (registry name, model config, train config)} the recipe trains, built (and so checked)
    without data. `dims`: feature sizes found in the data (video_dim/text_dim, or dim/num_frames)."""
    dims = dims or {}
    out = {}
    if recipe["stage"] == "vcmr":     # both parts, as "coarse.<model>" / "fine.<model>" (dims are the parts')
        return {f"{part}.{name}": built for part in ("coarse", "fine")
                for name, built in recipe_configs(recipe[f"_{part}"], device).items()}
    if recipe["stage"] == "fine":
        import c2f_lib.models.mesm  # noqa: F401  (registers qd_detr and mesm)
        import c2f_lib.models.moment_detr  # noqa: F401
        from c2f_lib.models.fine_presets import loss_preset
        from c2f_lib.models.registry import _REGISTRY
        from c2f_lib.training.fine import FineTrainConfig

        for name, spec in recipe["models"].items():
            if spec["registry"] not in _REGISTRY:
                raise RecipeError(f"models.{name}.registry: unknown fine model {spec['registry']!r}")
            config = {**spec.get("config", {}), **{k: v for k, v in dims.items() if k in ("video_dim", "text_dim")}}
            _REGISTRY[spec["registry"]][1](**config)             # raises on an unknown or bad field
            loss_preset(spec["loss_preset"])
            train = FineTrainConfig(**{**recipe["train"], **spec.get("train", {}), "device": device,
                                       "loss_preset": spec["loss_preset"]})
            out[name] = (spec["registry"], config, train)
    else:
        from c2f_lib.training.coarse_presets import preset

        _feature_mode(recipe)
        base = preset(recipe["train"].get("preset", recipe["dataset"]))
        train_fields = {k: v for k, v in recipe["train"].items() if k != "preset"}
        for name, spec in recipe["models"].items():
            if recipe["stage"] == "textdiff":
                out[name] = ("textdiff", _textdiff_config(recipe, spec, base, dims, device), None)
                continue
            fields = {f.name for f in dataclasses.fields(base.model_config(spec["registry"]))}
            config = base.model_config(spec["registry"], **{**spec.get("config", {}),
                                                            **{k: v for k, v in dims.items() if k in fields}})
            train = base.train_config(**{**train_fields, **spec.get("train", {}), "device": device})
            out[name] = (spec["registry"], config, train)
    return out


def _feature_mode(recipe: dict) -> str:
    """"store" or "end_to_end", checked (end to end: coarse stage, backbone and video folder named)."""
    feats = recipe["features"]
    mode = feats.get("mode", "store")
    if mode not in FEATURE_MODES:
        raise RecipeError(f"features.mode must be one of {FEATURE_MODES}, got {mode!r}", recipe.get("_path"))
    if mode == "end_to_end":
        if recipe["stage"] != "coarse":
            raise RecipeError(f"features.mode end_to_end is for stage coarse, not {recipe['stage']}",
                              recipe.get("_path"))
        missing = [k for k in END_TO_END_KEYS if k not in feats]
        if missing:
            raise RecipeError(f"features.mode end_to_end needs features.{missing[0]}", recipe.get("_path"))
    return mode


def _textdiff_config(recipe: dict, spec: dict, base, dims: dict[str, int], device: str):
    from c2f_lib.models.textdiff import TextDiffConfig
    from c2f_lib.models.xpool import XPoolConfig
    from c2f_lib.training.textdiff import TeacherTrainConfig, TextDiffTrainConfig

    cfg = copy.deepcopy(spec.get("config", {}))
    pool = XPoolConfig(**{"dim": base.dim, "dropout": base.dropout, **cfg.pop("pool", {}),
                          **({"dim": dims["dim"]} if "dim" in dims else {})})
    if "num_frames" in dims:
        cfg["num_frames"] = dims["num_frames"]
    train_fields = {k: v for k, v in recipe["train"].items() if k != "preset"}
    phases = spec.get("phases", {})
    return TextDiffTrainConfig(
        model=TextDiffConfig(pool=pool, **cfg),
        teacher=TeacherTrainConfig(**{**phases.get("teacher", {}), "device": device}),
        student=base.train_config(**{**train_fields, **phases.get("student", {}), "device": device}),
        base=base.train_config(**{**train_fields, **phases.get("base", {}), "device": device}))


# --------------------------------------------------------------------------------------------- data
def _splits(recipe: dict) -> list[str]:
    splits = recipe["splits"]
    names = [splits["train"], *([splits["val"]] if isinstance(splits.get("val"), str) else []), *splits["eval"]]
    return list(dict.fromkeys(names))


def export_annotations(recipe: dict, run_dir: Path, datasets_root: str | Path | None) -> Path:
    """`<run_dir>/data/<dataset>/` with the recipe's splits (exported unless already there)."""
    from c2f_lib.data.registry import export_dataset
    from c2f_lib.paths import RunPaths

    paths, dataset = RunPaths(run_dir), recipe["dataset"]
    kinds = {"fine": ["moments"], "vcmr": ["moments", "captions"]}.get(recipe["stage"], ["captions"])
    needed = [getattr(paths, f"{kind}_file")(dataset, s) for kind in kinds for s in _splits(recipe)]
    source = recipe.get("captions", "native")
    if not all(p.exists() for p in needed) or ("captions" in kinds and _caption_source(paths, dataset) != source):
        export_dataset(dataset, run_dir, root=datasets_root, splits=_splits(recipe),
                       coarse_captions=source if "captions" in kinds else "none")
    return paths.dataset_dir(dataset)


def _caption_source(paths, dataset: str) -> str | None:
    """How the exported captions were made ("native" / "offline"), from the export's meta.json."""
    import json

    meta = paths.dataset_dir(dataset) / "meta.json"
    if not meta.exists():
        return None
    sources = {s.get("captions_from") for s in json.loads(meta.read_text()).get("splits", {}).values()}
    return sources.pop() if len(sources) == 1 else None


def _feature_path(root: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else root / path


def load_fine_splits(recipe: dict, run_dir: Path, features_root: Path) -> tuple[list, list, dict[str, list]]:
    """(training samples, selection samples, {eval split: samples}) from the released features.
    `splits.val` is a split name, or `{holdout_videos: N}`: the last N train videos (sorted ids) select."""
    from c2f_lib.features.released import ReleasedConfig, load_released_moment_samples
    from c2f_lib.paths import RunPaths

    feats = recipe["features"]
    cfg = ReleasedConfig(**{k: feats[k] for k in ("clip_len", "max_clips", "max_query_tokens", "video_key",
                                                  "text_key", "text_name", "normalize_video", "normalize_text")
                            if k in feats})
    videos = [_feature_path(features_root, v) for v in feats["video"]]
    text = _feature_path(features_root, feats["text"])
    paths = RunPaths(run_dir)
    loaded = {split: load_released_moment_samples(paths.moments_file(recipe["dataset"], split), videos, text, cfg)[0]
              for split in _splits(recipe)}
    splits = recipe["splits"]
    fit = loaded[splits["train"]]
    if isinstance(splits["val"], str):
        select = loaded[splits["val"]]
    else:     # no validation split (Charades-STA): hold out the last N train videos
        vids = sorted({s.vid for s in fit})
        kept = set(vids[-_holdout(splits["val"], len(vids)):])
        fit, select = [s for s in fit if s.vid not in kept], [s for s in fit if s.vid in kept]
    return fit, select, {name: loaded[name] for name in splits["eval"]}


def _holdout(spec: dict, n_videos: int) -> int:
    held = int(spec["holdout_videos"])
    if not 0 < held < n_videos - 1:
        raise RecipeError(f"splits.val.holdout_videos must be in 1..{n_videos - 2}, got {held}")
    return held


def _subset(split, video_ids: list[str]):
    """The CoarseSplit (or end-to-end FrameSplit) restricted to `video_ids` (their captions only)."""
    import torch

    from c2f_lib.features.types import CoarseSplit
    from c2f_lib.training.coarse import FrameSplit

    index = {v: i for i, v in enumerate(split.video_ids)}
    keep = torch.tensor([index[v] for v in video_ids], dtype=torch.long)
    remap = torch.full((len(split.video_ids),), -1, dtype=torch.long)
    remap[keep] = torch.arange(len(keep))
    texts = (remap[split.text_to_video] >= 0).nonzero().flatten()
    captions, text_to_video = [split.texts[i] for i in texts.tolist()], remap[split.text_to_video[texts]]
    if isinstance(split, FrameSplit):     # lazy frames: pick the files, decode nothing
        frames = split.frames.subset(keep) if hasattr(split.frames, "subset") else split.frames[keep]
        return FrameSplit(list(video_ids), frames, captions, split.text_tokens[texts], text_to_video)
    return CoarseSplit(list(video_ids), split.frames[keep], captions, split.text_emb[texts], text_to_video)


def load_coarse_splits(recipe: dict, run_dir: Path, features_root: Path, clip=None
                       ) -> tuple[Any, Any, dict[str, Any]]:
    """(training split, selection split, {eval split: split}): CoarseSplits of the store, or with
    `features.mode: end_to_end` FrameSplits of the raw videos (lazy frames, captions tokenised by `clip`, a
    training.end_to_end.ClipSource); `splits.val` as in `load_fine_splits` (held-out videos take their
    captions with them)."""
    from c2f_lib.features.store_bundles import load_coarse_split
    from c2f_lib.paths import RunPaths

    paths, dataset = RunPaths(run_dir), recipe["dataset"]
    if _feature_mode(recipe) == "end_to_end":
        loaded = {s: _load_frame_split(recipe, paths.captions_file(dataset, s), features_root, clip)
                  for s in _splits(recipe)}
    else:
        store = _feature_path(features_root, recipe["features"]["store"])
        loaded = {s: load_coarse_split(store, paths.captions_file(dataset, s)) for s in _splits(recipe)}
    splits = recipe["splits"]
    fit = loaded[splits["train"]]
    if isinstance(splits["val"], str):
        select = loaded[splits["val"]]
    else:
        vids = sorted(fit.video_ids)
        held = _holdout(splits["val"], len(vids))
        fit, select = _subset(fit, vids[:-held]), _subset(fit, vids[-held:])
    return fit, select, {name: loaded[name] for name in splits["eval"]}


def _load_frame_split(recipe: dict, captions: Path, features_root: Path, clip):
    from c2f_lib.training.end_to_end import load_frame_split

    feats = recipe["features"]
    options = {k: feats[k] for k in ("backend", "decode_threads", "cache_videos") if k in feats}
    return load_frame_split(captions, _feature_path(features_root, feats["video_dir"]), clip.tokenizer,
                            int(feats.get("num_frames", 12)), clip.image_size, clip.mean, clip.std, **options)


# --------------------------------------------------------------------------------------------- running
def _compare(metrics: dict[str, dict[str, float]], targets: dict) -> dict:
    """{metric: {"ours", "published", "gap"}} on the target's split."""
    ours = metrics.get(targets.get("split"), {})
    return {m: {"ours": ours.get(m), "published": v,
                "gap": None if ours.get(m) is None else round(ours[m] - v, 2)}
            for m, v in targets.get("metrics", {}).items()}


def train_fine_recipe(recipe: dict, run_dir: Path, device: str, features_root: Path
                      ) -> tuple[dict[str, Any], dict[str, dict], dict[str, list]]:
    """Train (or load) every model of a `fine` recipe -> ({name: model}, {name: {split: metrics}},
    {eval split: samples})."""
    from c2f_lib.paths import RunPaths
    from c2f_lib.training.fine import evaluate_model, train_or_load

    ckpts = RunPaths(run_dir).checkpoints("repro") / recipe["recipe"]
    fit, select, evals = load_fine_splits(recipe, run_dir, features_root)
    first = fit[0]
    dims = {"video_dim": int(first.clip_feats.shape[1]), "text_dim": int(first.token_feats.shape[1])}
    models, results = {}, {}
    for name, (registry, config, train_cfg) in recipe_configs(recipe, device, dims).items():
        models[name], _ = train_or_load(registry, config, fit, select, train_cfg, ckpts / f"{name}.pt")
        results[name] = {s: evaluate_model(models[name], samples)[0] for s, samples in evals.items()}
    return models, results, evals


def train_coarse_recipe(recipe: dict, run_dir: Path, device: str, features_root: Path
                        ) -> tuple[dict[str, Any], dict[str, dict], dict[str, Any]]:
    """Train (or load) every model of a `coarse` / `textdiff` recipe -> ({name: model},
    {name: {split: metrics}}, {eval split: CoarseSplit})."""
    from c2f_lib.evaluation.retrieval import evaluate_retrieval
    from c2f_lib.paths import RunPaths

    ckpts = RunPaths(run_dir).checkpoints("repro") / recipe["recipe"]
    clip = None
    if _feature_mode(recipe) == "end_to_end":        # the pretrained CLIP: tokenises, and every model starts from it
        from c2f_lib.training.end_to_end import load_clip

        clip = load_clip(recipe["features"]["backbone"])
    fit, select, evals = load_coarse_splits(recipe, run_dir, features_root, clip)
    frames = fit.frames                                              # [V, F, D] (end to end: [V, F, 3, S, S])
    dims = {"dim": int(clip.embed_dim if clip else frames.shape[2]), "num_frames": int(frames.shape[1])}
    chunk = recipe.get("eval", {}).get("chunk_size", 16)
    protocols = recipe.get("eval", {}).get("protocols", ["correct"])
    models, results = {}, {}
    for name, (registry, config, train_cfg) in recipe_configs(recipe, device, dims).items():
        models[name] = _train_coarse_model(registry, config, train_cfg, fit, select, ckpts / name, clip,
                                           int(recipe["features"].get("encode_batch_size", 64)))
        results[name] = {s: {f"{protocol}/{k}" if protocol != "correct" else k: v
                             for protocol in protocols
                             for k, v in evaluate_retrieval(models[name], split, protocol, chunk).items()}
                         for s, split in evals.items()}
    return models, results, evals


def run_recipe(path: str | Path, run_dir: str | Path, device: str = "auto", features_root: str | Path = ".",
               datasets_root: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Run one recipe (see the module docstring); returns what it writes to the metrics file."""
    from c2f_lib.paths import RunPaths
    from c2f_lib.run_lock import folder_lock
    from c2f_lib.utils import atomic_write_json, provenance, resolve_device

    recipe = load_recipe(path, overrides)
    device = resolve_device(device)
    run_dir, features_root = Path(run_dir).resolve(), Path(features_root)
    recipe_configs(recipe, device)                      # every config checked before any data is read
    with folder_lock(run_dir):                          # one recipe (or pipeline run) per folder at a time
        summary = _run_locked(recipe, run_dir, device, features_root, datasets_root)
        summary.update(overrides=list(overrides),
                       provenance=provenance({k: v for k, v in recipe.items() if not k.startswith("_")}))
        atomic_write_json(RunPaths(run_dir).metrics_file(f"repro_{recipe['recipe']}"), summary)
    return summary


def _run_locked(recipe: dict, run_dir: Path, device: str, features_root: Path,
                datasets_root: str | Path | None) -> dict:
    if recipe["stage"] == "vcmr":
        from c2f_lib.pipeline.recipe_vcmr import run_vcmr_recipe

        return run_vcmr_recipe(recipe, run_dir, device, features_root, datasets_root)
    export_annotations(recipe, run_dir, datasets_root)
    train = train_fine_recipe if recipe["stage"] == "fine" else train_coarse_recipe
    _, results, _ = train(recipe, run_dir, device, features_root)
    return {"recipe": recipe["recipe"], "dataset": recipe["dataset"], "device": device, "metrics": results,
            "vs_published": {n: _compare(results[n], t) for n, t in recipe["targets"].items()}}


def _train_coarse_model(registry: str, config, train_cfg, fit, select, ckpt: Path, clip=None,
                        encode_batch_size: int = 64):
    if clip is not None:      # end to end: the head on fine-tuned copies of the CLIP towers
        from c2f_lib.training.end_to_end import train_or_load_end_to_end

        model, _ = train_or_load_end_to_end(registry, config, clip, fit, select, train_cfg, ckpt.with_suffix(".pt"),
                                            encode_batch_size)
        return model
    if registry == "textdiff":
        from c2f_lib.training.textdiff import train_textdiff

        model, _ = train_textdiff(fit, select, config, ckpt)
        return model
    from c2f_lib.training.coarse import train_or_load_coarse

    model, _ = train_or_load_coarse(registry, config, fit, select, train_cfg, ckpt.with_suffix(".pt"))
    return model


# --------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from c2f_lib import cli_types
    from c2f_lib.cli_types import DEVICE_HELP

    parser.add_argument("--recipe", required=True, help="a recipe file, e.g. configs/repro/qvhighlights_qd_detr.yaml")
    parser.add_argument("--features-root", default=".",
                        help="folder the recipe's feature paths are relative to (e.g. where "
                             "moment_detr_features.tar.gz was unpacked)")
    parser.add_argument("--datasets-root", default=None,
                        help="annotation root holding qvhighlights/, msrvtt/, ... (default: as `c2f data`)")
    parser.add_argument("--run-dir", default=None, help="output folder (default: outputs/repro_<recipe>)")
    parser.add_argument("--device", type=cli_types.device, default="auto", help=DEVICE_HELP)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set train.epochs=1 (repeatable)")


def main(args: argparse.Namespace) -> int:
    from c2f_lib.paths import RunPaths
    from c2f_lib.utils import REPO_ROOT

    recipe = load_recipe(args.recipe, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else REPO_ROOT / "outputs" / f"repro_{recipe['recipe']}"
    summary = run_recipe(args.recipe, run_dir, args.device, args.features_root, args.datasets_root,
                         args.overrides)
    for name, rows in summary["vs_published"].items():
        for metric, row in rows.items():
            ours = "-" if row["ours"] is None else f"{row['ours']:.1f}"
            print(f"{name:14s} {metric:16s} ours {ours:>6s}  published {row['published']:.1f}")
    for name, by_split in (summary["metrics"].items() if recipe["stage"] == "vcmr" else ()):
        for split, m in by_split.items():
            print(f"{name:18s} {split:6s} VR-R@1 {m['VR-R@1']:5.1f}  SVMR-R@1-IoU0.5 {m.get('SVMR-R@1-IoU0.5', 0):5.1f}"
                  f"  VCMR-R@1-IoU0.5 {m['VCMR-R@1-IoU0.5']:5.1f}")
    print(f"metrics: {RunPaths(run_dir).metrics_file('repro_' + recipe['recipe'])}")
    return 0
