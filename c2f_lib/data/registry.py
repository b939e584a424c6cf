"""Every real benchmark by name: where its files live, how to get them, how to load a split.

    info = get_dataset("charades_sta")
    split = load_split("charades_sta", "test")            # LoadedSplit in the unified schema
    export_dataset("charades_sta", run_dir)               # -> <run_dir>/data/charades_sta/*.jsonl
    present, missing = find_videos("charades_sta", "/data/Charades_v1_480")

The annotation root defaults to `../shared/datasets` beside the repository, or
$C2F_SHARED_DATASETS; every function also takes `root=`.
"""
from __future__ import annotations

import os
import shutil
import statistics
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from c2f_lib.data.adapters.activitynet import ACTIVITYNET_FILES, load_activitynet
from c2f_lib.data.adapters.base import DatasetFormatError, LoadedSplit
from c2f_lib.data.adapters.charades import CHARADES_CG_FILES, load_charades_cg, load_charades_sta
from c2f_lib.data.adapters.qvhighlights import load_qvhighlights
from c2f_lib.data.adapters.retrieval import MSRVTT_TRAIN_LISTS, load_didemo, load_lsmdc, load_msrvtt, load_msvd
from c2f_lib.data.adapters.tacos import TACOS_CG_FILES, load_tacos, load_tacos_cg
from c2f_lib.data.schema import VideoCaptions, write_captions, write_moments
from c2f_lib.data.video_files import FEATURE_EXTENSIONS, VIDEO_EXTENSIONS
from c2f_lib.errors import MissingFileError, UserError
from c2f_lib.paths import RunPaths
from c2f_lib.utils import atomic_path, atomic_write_json, provenance



@dataclass(frozen=True)
class Fetch:
    """A freely downloadable file; from a zip, only `members` (matched by file name) are kept."""

    url: str
    file_name: str
    members: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    title: str
    folder: str                                   # sub-folder of the annotation root
    splits: tuple[str, ...]
    kind: str                                     # "moments", "captions" or "moments+captions"
    loader: Callable[[Path, str], LoadedSplit]
    # Counts in the original files (before cleaning), from the papers / specs:
    # split -> {"queries" | "captions": n, "videos": n}.
    published: dict[str, dict[str, int]]
    homepage: str
    fetch: tuple[Fetch, ...] = ()                 # what `c2f data download` can fetch by itself
    manual_steps: tuple[str, ...] = ()            # what the user has to do by hand
    notes: str = ""

    def path(self, root: str | Path | None = None) -> Path:
        return resolve_root(root) / self.folder


def _charades_videos() -> tuple[str, ...]:
    return ("Videos: Charades_v1_480.zip (13 GB) from https://prior.allenai.org/projects/charades "
            "(https://ai2-public-datasets.s3-us-west-2.amazonaws.com/charades/Charades_v1_480.zip); "
            "files are <vid>.mp4.",)


DATASETS: dict[str, DatasetInfo] = {info.name: info for info in [
    DatasetInfo(
        "msrvtt", "MSR-VTT (1k-A test, 9k/7k train)", "msrvtt", ("test", "train_9k", "train_7k"), "captions",
        load_msrvtt,
        {"test": {"captions": 1000, "videos": 1000}, "train_9k": {"captions": 180000, "videos": 9000},
         "train_7k": {"captions": 140200, "videos": 7010}},
        "https://www.microsoft.com/en-us/research/publication/msr-vtt-a-large-video-description-dataset-"
        "for-bridging-video-and-language/",
        fetch=(Fetch("https://github.com/ArrowLuo/CLIP4Clip/releases/download/v0.0/msrvtt_data.zip",
                     "msrvtt_data.zip", ("MSRVTT_data.json", "MSRVTT_JSFUSION_test.csv",
                                         *MSRVTT_TRAIN_LISTS.values())),),
        manual_steps=("Videos (6.3 GB): https://www.robots.ox.ac.uk/~maxbain/frozen-in-time/data/MSRVTT.zip; "
                      "unzip and point the video folder at MSRVTT/videos/all (files video<N>.mp4).",),
        notes="Train captions (20 per video) come from MSRVTT_data.json, which is not in the shared folder."),
    DatasetInfo(
        "msvd", "MSVD (YouTube2Text)", "msvd", ("train", "val", "test"), "captions", load_msvd,
        {"train": {"captions": 48774, "videos": 1200}, "val": {"captions": 4290, "videos": 100},
         "test": {"captions": 27763, "videos": 670}},
        "https://www.cs.utexas.edu/users/ml/clamp/videoDescription/",
        manual_steps=("Captions and split lists (captions_msvd.json, {train,val,test}_list.txt) are the X-Pool "
                      "release: https://github.com/layer6ai-labs/xpool (data/MSVD).",
                      "Videos: https://www.cs.utexas.edu/users/ml/clamp/videoDescription/YouTubeClips.tar "
                      "(files <vid>.avi)."),
        notes="Multi-caption t2v: every caption of a test video is a query (max 81 per video)."),
    DatasetInfo(
        "lsmdc", "LSMDC (1k public test)", "lsmdc", ("test",), "captions", load_lsmdc,
        {"test": {"captions": 1000, "videos": 1000}},
        "https://sites.google.com/site/describingmovies/",
        manual_steps=("LSMDC needs permission: fill in the agreement at "
                      "https://sites.google.com/site/describingmovies/download and wait for credentials.",
                      "Then download LSMDC16_challenge_1000_publictect.csv and the clips (<movie>/<clip>.avi) "
                      "from the protected MPII server named in the reply."),
        notes="T-MASS skips clip 1012_Unbreakable_00.05.16.065-00.05.21.941 (missing video there); it is "
              "kept here and reported by find_videos when its video is absent."),
    DatasetInfo(
        "didemo", "DiDeMo (paragraph retrieval)", "didemo", ("train", "val", "test"), "captions", load_didemo,
        {"train": {"captions": 8362, "videos": 8362}, "val": {"captions": 1062, "videos": 1062},
         "test": {"captions": 1004, "videos": 1004}},
        "https://github.com/LisaAnne/LocalizingMoments",
        manual_steps=("The paragraph csvs (didemo_{train,val,test}_label.csv) are the T-MASS release: "
                      "https://github.com/Salesforce/T-MASS (data/Didemo).",
                      "Videos: run the download script of https://github.com/LisaAnne/LocalizingMoments "
                      "(Flickr; some videos are gone) or request the AWS copy linked there."),
        notes="One paragraph (all sentences joined) per video; val is not used by T-MASS."),
    DatasetInfo(
        "activitynet_captions", "ActivityNet Captions", "activitynet_captions", tuple(ACTIVITYNET_FILES),
        "moments+captions", load_activitynet,
        {"train": {"queries": 37421, "videos": 10009}, "val_1": {"queries": 17505, "videos": 4917}},
        "https://cs.stanford.edu/people/ranjaykrishna/densevid/",
        fetch=(Fetch("https://cs.stanford.edu/people/ranjaykrishna/densevid/captions.zip", "captions.zip",
                     ("train.json", "val_1.json", "train_ids.json", "val_ids.json")),),
        manual_steps=("Videos: request ActivityNet v1.3 via the form at http://activity-net.org/download.html "
                      "(files v_<youtube id>.mp4/.mkv).",),
        notes="Paragraph retrieval uses val_1 as the test split; moments use one window per sentence."),
    DatasetInfo(
        "charades_sta", "Charades-STA", "charades_sta", ("train", "test"), "moments", load_charades_sta,
        {"train": {"queries": 12408, "videos": 5338}, "test": {"queries": 3720, "videos": 1334}},
        "https://github.com/jiyanggao/TALL",
        fetch=(Fetch("https://ai2-public-datasets.s3-us-west-2.amazonaws.com/charades/Charades.zip",
                     "Charades.zip", ("Charades_v1_train.csv", "Charades_v1_test.csv")),),
        manual_steps=("charades_sta_{train,test}.txt: follow the Charades-STA link in "
                      "https://github.com/jiyanggao/TALL (also under data/charades/annotations of MESM).",
                      *_charades_videos()),
        notes="Train: 4 reversed windows swapped, 3 windows starting after the video end dropped, "
              "ends past the video clipped (as MESM)."),
    DatasetInfo(
        "charades_cg", "Charades-CG", "charades_cg", tuple(CHARADES_CG_FILES), "moments", load_charades_cg,
        {"train": {"queries": 8281, "videos": 3555}, "novel_composition": {"queries": 3442, "videos": 2480},
         "novel_word": {"queries": 695, "videos": 580}, "test_trivial": {"queries": 3096, "videos": 1689}},
        "https://github.com/YYJMJC/Compositional-Temporal-Grounding",
        manual_steps=("Split files: data/Charades-CG/*.json of "
                      "https://github.com/YYJMJC/Compositional-Temporal-Grounding.", *_charades_videos()),
        notes="novel_composition / novel_word keep their novel pair / new word in meta."),
    DatasetInfo(
        "tacos", "TACoS (2D-TAN split)", "tacos", ("train", "val", "test"), "moments", load_tacos,
        {"train": {"queries": 9790, "videos": 75}, "val": {"queries": 4436, "videos": 27},
         "test": {"queries": 4001, "videos": 25}},
        "https://www.coli.uni-saarland.de/projects/smile/page.php?id=tacos",
        manual_steps=("Annotations: data/TACoS/{train,val,test}.json of https://github.com/microsoft/VideoX "
                      "(2D-TAN).",
                      "Videos: the MPII Cooking Composite videos (s<NN>-d<NN>.avi), from the TACoS page "
                      "https://www.coli.uni-saarland.de/projects/smile/page.php?id=tacos."),
        notes="Times are frames / fps (fps from the file, 29.4 when absent); video ids drop '.avi'."),
    DatasetInfo(
        "qvhighlights", "QVHighlights", "qvhighlights", ("train", "val", "test"), "moments", load_qvhighlights,
        {"train": {"queries": 7218, "videos": 7100}, "val": {"queries": 1550, "videos": 1519},
         "test": {"queries": 1542, "videos": 1529}},
        "https://github.com/jayleicn/moment_detr",
        fetch=tuple(Fetch(f"https://raw.githubusercontent.com/jayleicn/moment_detr/main/data/"
                          f"highlight_{split}_release.jsonl", f"highlight_{split}_release.jsonl")
                    for split in ("train", "val", "test")),
        manual_steps=("Videos (150-s clips, <vid>.mp4): https://nlp.cs.unc.edu/data/jielei/qvh/"
                      "qvhilights_videos.tar.gz (linked from the moment_detr README).",),
        notes="The test release has no labels: its queries load unlabelled (read_moments(..., labelled=False)), "
              "for a submission file only."),
    DatasetInfo(
        "tacos_cg", "TACoS-CG (LLM whole-video captions + TACoS moments)", "tacos_cg", tuple(TACOS_CG_FILES),
        "moments+captions", load_tacos_cg,
        {"train": {"captions": 375, "queries": 9790, "videos": 75},
         "val": {"captions": 135, "queries": 4436, "videos": 27},
         "test": {"captions": 125, "queries": 4001, "videos": 25}},
        "https://www.coli.uni-saarland.de/projects/smile/page.php?id=tacos",
        manual_steps=("cg_{train,val,test}.json are the v2 (gpt-4o) TACoS-CG captions of the coarse-to-fine "
                      "repository (data_generation/tacos_cg/new_annotations_1/); tacos.json holds all 127 TACoS "
                      "videos in the MESM layout.",
                      "Or regenerate coarse captions from TACoS with c2f_lib.data.coarse_captions (offline) or "
                      "c2f_lib.data.llm_captions (any OpenAI-compatible endpoint).",
                      "Videos: as for TACoS."),
        notes="Captions: 5 per video; moments: the split's videos in tacos.json."),
]}


def resolve_root(root: str | Path | None = None) -> Path:
    """The annotation root: `root`, else $C2F_SHARED_DATASETS, else ../shared/datasets of the repo."""
    if root is not None:
        return Path(root)
    if os.environ.get("C2F_SHARED_DATASETS"):
        return Path(os.environ["C2F_SHARED_DATASETS"])
    return Path(__file__).resolve().parents[3] / "shared" / "datasets"


def list_datasets() -> list[DatasetInfo]:
    return list(DATASETS.values())


class UnknownNameError(UserError, KeyError):
    """A dataset or split name the registry does not know."""


def get_dataset(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise UnknownNameError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def load_split(name: str, split: str, root: str | Path | None = None) -> LoadedSplit:
    info = get_dataset(name)
    if split not in info.splits:
        raise UnknownNameError(f"dataset {name!r} has no split {split!r}; splits: {', '.join(info.splits)}")
    loaded = info.loader(info.path(root), split)
    _refuse_repeated_ids(loaded)
    return loaded


def _refuse_repeated_ids(split: LoadedSplit) -> None:
    """A qid (or a captioned video) listed twice would be scored twice: refuse it, naming the source files."""
    for kind, ids in (("qid", [str(m.qid) for m in split.moments]), ("vid", [c.vid for c in split.captions])):
        seen: set[str] = set()
        for value in ids:
            if value in seen:
                raise DatasetFormatError(", ".join(split.sources), f"{split.dataset}/{split.split}: {kind} "
                                         f"{value!r} given twice", field=kind)
            seen.add(value)


def split_stats(split: LoadedSplit) -> dict[str, float | int | str]:
    """Counts and length statistics of one loaded split (what `c2f data stats` prints)."""
    durations = [d for d in _durations(split).values() if d is not None]
    lengths = [e - s for m in split.moments for s, e in m.relevant_windows]
    query_words = [len(m.query.split()) for m in split.moments]
    caption_words = [len(c.split()) for v in split.captions for c in v.captions]
    return {
        "split": split.split, "videos": len(split.video_ids), "queries": len(split.moments),
        "captions": sum(len(v.captions) for v in split.captions),
        "mean_duration_s": _mean(durations), "max_duration_s": max(durations, default=float("nan")),
        "mean_moment_s": _mean(lengths), "mean_query_words": _mean(query_words),
        "mean_caption_words": _mean(caption_words), "cleaning": split.report.summary(),
    }


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _durations(split: LoadedSplit) -> dict[str, float | None]:
    durations: dict[str, float | None] = {c.vid: c.duration for c in split.captions}
    durations.update({m.vid: m.duration for m in split.moments})
    return durations


def dataset_stats(name: str, root: str | Path | None = None) -> list[dict]:
    return [split_stats(load_split(name, split, root)) for split in _available_splits(name, root)]


def _available_splits(name: str, root: str | Path | None) -> list[str]:
    """Splits whose files exist (MSR-VTT train needs the user's MSRVTT_data.json)."""
    info = get_dataset(name)
    if name == "msrvtt" and not (info.path(root) / "MSRVTT_data.json").is_file():
        return ["test"]
    return list(info.splits)


def _index_videos(folder: Path) -> dict[str, Path]:
    """file stem -> path for every video (or feature) file below `folder`."""
    index = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in VIDEO_EXTENSIONS + FEATURE_EXTENSIONS and path.is_file():
            index.setdefault(path.stem, path)
    return index


def find_videos(name: str, video_dir: str | Path, split: str | None = None,
                root: str | Path | None = None) -> tuple[dict[str, Path], list[str]]:
    """Match a dataset's videos against a folder of video or feature files (searched recursively by
    file stem). Returns ({vid: path} present, [vid] missing); missing videos are not an error."""
    video_dir = Path(video_dir)
    if not video_dir.is_dir():
        raise MissingFileError("video folder not found", video_dir)
    splits = [split] if split else _available_splits(name, root)
    vids = list(dict.fromkeys(v for s in splits for v in load_split(name, s, root).video_ids))
    index = _index_videos(video_dir)
    present, missing = {}, []
    for vid in vids:  # every adapter's video id is its file stem
        if vid in index:
            present[vid] = index[vid]
        else:
            missing.append(vid)
    return present, missing


def export_dataset(name: str, out_dir: str | Path, root: str | Path | None = None,
                   splits: list[str] | None = None, coarse_captions: str = "auto") -> Path:
    """Write the dataset into the run-dir layout: `RunPaths(out_dir).dataset_dir(name)` gets
    moments_<split>.jsonl / captions_<split>.jsonl and meta.json (cleaning reports, provenance).

    coarse_captions: "auto" uses the dataset's own whole-video captions and generates them with the
    offline generator (c2f_lib.data.coarse_captions) for moment-only datasets; "native" writes only
    the dataset's own; "offline" always generates; "none" writes no captions.
    """
    from c2f_lib.data.coarse_captions import OfflineCaptionConfig, offline_coarse_captions

    if coarse_captions not in ("auto", "native", "offline", "none"):
        raise ValueError(f"coarse_captions must be auto/native/offline/none, got {coarse_captions!r}")
    target = RunPaths(out_dir).dataset_dir(name)
    meta: dict = {"dataset": name, "source_root": str(resolve_root(root)), "splits": {}}
    loaded = [load_split(name, split_name, root) for split_name in splits or _available_splits(name, root)]
    for split in loaded:  # every split loaded (and checked) before anything is written
        split_name = split.split
        captions: list[VideoCaptions] = [] if coarse_captions in ("offline", "none") else split.captions
        caption_source = "native" if captions else None
        if coarse_captions == "offline" or (coarse_captions == "auto" and not captions and split.moments):
            captions = offline_coarse_captions(split.moments, OfflineCaptionConfig())
            caption_source = "offline"
        if split.moments:
            write_moments(target / f"moments_{split_name}.jsonl", split.moments)
        if captions:
            write_captions(target / f"captions_{split_name}.jsonl", captions)
        meta["splits"][split_name] = {"queries": len(split.moments), "videos": len(split.video_ids),
                                      "captions_from": caption_source, "sources": split.sources,
                                      "cleaning": split.report.to_json()}
    meta["provenance"] = provenance({"dataset": name, "coarse_captions": coarse_captions})
    atomic_write_json(target / "meta.json", meta)
    return target


def download_steps(name: str) -> str:
    """Human-readable instructions: what `download` fetches and what must be done by hand."""
    info = get_dataset(name)
    lines = [f"{info.title}  ({info.homepage})"]
    lines += [f"  fetch: {f.url}" + (f"  -> {', '.join(f.members)}" if f.members else "") for f in info.fetch]
    lines += [f"  manual: {step}" for step in info.manual_steps]
    if info.notes:
        lines.append(f"  note: {info.notes}")
    return "\n".join(lines)


def download(name: str, root: str | Path | None = None, timeout_s: float = 60.0) -> list[Path]:
    """Fetch the freely downloadable annotation files of `name` into `<root>/<folder>` (files
    already there are kept). Returns the files written. Needs internet; never called by tests."""
    info = get_dataset(name)
    folder = info.path(root)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for item in info.fetch:
        wanted = item.members or (item.file_name,)
        if all((folder / member).is_file() for member in wanted):
            continue
        archive = folder / item.file_name
        try:
            with atomic_path(archive) as tmp, urllib.request.urlopen(item.url, timeout=timeout_s) as response, \
                    tmp.open("wb") as handle:
                shutil.copyfileobj(response, handle)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            reason = getattr(err, "reason", err)
            raise UserError(f"cannot download {item.url} ({reason}); offline? fetch it by hand into {folder} "
                            f"(`c2f data download {name} --print-only` lists every step)") from None
        if not item.members:
            written.append(archive)
            continue
        written += _extract_members(archive, item.members, folder)
        archive.unlink()
    return written


def _extract_members(archive: Path, members: tuple[str, ...], folder: Path) -> list[Path]:
    written = []
    with zipfile.ZipFile(archive) as zipped:
        by_name = {Path(n).name: n for n in zipped.namelist() if not n.endswith("/")}
        for member in members:
            if member not in by_name:
                raise MissingFileError(f"expected {member} inside the archive", archive)
            with atomic_path(folder / member) as tmp, zipped.open(by_name[member]) as src, tmp.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            written.append(folder / member)
    return written
