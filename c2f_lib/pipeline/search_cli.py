"""`c2f index DIR` and `c2f search "query"`: coarse-to-fine search over a folder of your own videos.

    c2f index ~/videos --backbone ViT-B-32:openai --coarse ckpt/xpool.pt --fine ckpt/mesm.pt
    c2f search "a man opens the fridge" --index ~/videos/.c2f_index

The index folder holds ``features.h5`` (frame + clip features of every decodable video, the feature
store format), ``index.faiss``/``index.json`` (the `CorpusIndex` over mean frame embeddings),
``failures.json``-style skips beside the store, and ``manifest.json`` (backbone, checkpoints,
provenance). Without ``--coarse`` the videos are ranked by the index's mean-frame cosine (a
parameter-free mean-pooling retriever); a fine checkpoint is required to localise moments.
Re-running ``c2f index`` resumes: videos already in the store are not decoded again.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MANIFEST = "manifest.json"


# ----------------------------------------------------------------------------- index
def add_index_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video_dir", type=Path, help="folder of videos (searched recursively)")
    parser.add_argument("--backbone", default="ViT-B-32:openai",
                        help="feature backbone spec (see c2f_lib.features.backbones.load_backbone)")
    parser.add_argument("--coarse", type=Path, help="coarse retriever checkpoint (default: mean pooling)")
    parser.add_argument("--fine", type=Path, help="fine grounding checkpoint (needed by `c2f search`)")
    parser.add_argument("--out", type=Path, help="index folder (default: VIDEO_DIR/.c2f_index)")
    parser.add_argument("--num-frames", type=int, default=12, help="uniform frames per video (coarse)")
    parser.add_argument("--clip-len", type=float, default=2.0, help="seconds per clip feature (fine)")
    parser.add_argument("--frames-per-clip", type=int, default=1, help="frames averaged per clip")
    parser.add_argument("--motion", action="store_true",
                        help="add the colour-motion descriptor to the clip features, as the fine model was "
                             "trained (needs --frames-per-clip >= 2)")
    parser.add_argument("--index-kind", choices=["flat", "hnsw", "ivf"], default="flat")
    parser.add_argument("--device", default="auto")


def find_videos(folder: Path) -> dict[str, Path]:
    """vid (path relative to `folder`, without suffix) -> file, for every video file below `folder`."""
    from c2f_lib.features.extract import VIDEO_EXTENSIONS

    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()
                   and ".c2f_index" not in p.parts)
    return {str(p.relative_to(folder).with_suffix("")): p for p in files}


def extract_folder(videos: dict[str, Path], store_path: Path, backbone, cfg) -> dict[str, str]:
    """Write frame and clip features of `videos` to the store (the dataset extractor's video half);
    `cfg` an ExtractConfig. Returns vid -> reason for the skipped ones."""
    from c2f_lib.features.extract import extract_videos, store_meta
    from c2f_lib.features.store_writer import FeatureStoreWriter

    failures: dict[str, str] = {}
    with FeatureStoreWriter(store_path, store_meta(backbone, cfg)) as writer:
        extract_videos(writer, backbone, videos, list(videos), cfg, failures)
    return failures


def main_index(args: argparse.Namespace) -> int:
    from c2f_lib.features.backbones import load_backbone
    from c2f_lib.features.extract import VIDEO_EXTENSIONS, ExtractConfig
    from c2f_lib.features.motion import MotionConfig
    from c2f_lib.features.store import failures_path
    from c2f_lib.pipeline.corpus_index import CorpusIndex, IndexConfig, video_embeddings
    from c2f_lib.pipeline.search import load_corpus
    from c2f_lib.utils import atomic_write_json, provenance, resolve_device

    out = args.out or args.video_dir / ".c2f_index"
    videos = find_videos(args.video_dir)
    if not videos:
        print(f"c2f index: no video files ({', '.join(VIDEO_EXTENSIONS)}) under {args.video_dir}", file=sys.stderr)
        return 1
    for ckpt in (args.coarse, args.fine):
        if ckpt is not None and not ckpt.exists():
            print(f"c2f index: {ckpt}: checkpoint not found", file=sys.stderr)
            return 1
    try:
        cfg = ExtractConfig(num_frames=args.num_frames, clip_len=args.clip_len, frames_per_clip=args.frames_per_clip,
                            motion=MotionConfig() if args.motion else None)
    except ValueError as err:
        print(f"c2f index: {err}", file=sys.stderr)
        return 1
    backbone = load_backbone(args.backbone, device=resolve_device(args.device))
    store = out / "features.h5"
    failures = extract_folder(videos, store, backbone, cfg)
    atomic_write_json(failures_path(store), [{"vid": v, "reason": r} for v, r in failures.items()])
    for vid, reason in failures.items():
        print(f"skipped {vid}: {reason}", file=sys.stderr)
    indexed = [v for v in videos if v not in failures]
    if not indexed:
        print("c2f index: no video could be decoded", file=sys.stderr)
        return 1
    corpus = load_corpus(store, indexed)
    CorpusIndex.build(video_embeddings(corpus.frames), corpus.video_ids, IndexConfig(kind=args.index_kind)).save(out)
    atomic_write_json(out / MANIFEST, {
        "video_dir": str(args.video_dir.resolve()), "backbone": args.backbone,
        "coarse": str(args.coarse.resolve()) if args.coarse else None,
        "fine": str(args.fine.resolve()) if args.fine else None,
        "videos": {v: str(videos[v]) for v in indexed}, "skipped": failures,
        "provenance": provenance({k: str(v) for k, v in vars(args).items() if not k.startswith("_")})})
    print(f"indexed {len(indexed)} video(s) into {out} ({len(failures)} skipped)")
    return 0


# ----------------------------------------------------------------------------- search
def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", help="what to look for, in words")
    parser.add_argument("--index", type=Path, default=Path(".c2f_index"), help="folder written by `c2f index`")
    parser.add_argument("--coarse", type=Path, help="override the coarse checkpoint of the index")
    parser.add_argument("--fine", type=Path, help="override the fine checkpoint of the index")
    parser.add_argument("--k-videos", type=int, default=5, help="videos searched for moments")
    parser.add_argument("--top", type=int, default=10, help="moments to print")
    parser.add_argument("--fusion", choices=["fine", "product", "weighted"], default="product")
    parser.add_argument("--alpha", type=float, default=0.5, help="coarse weight of --fusion weighted")
    parser.add_argument("--shortlist", type=int, help="FAISS candidates re-ranked by the coarse model")
    parser.add_argument("--json", action="store_true", help="print the prediction record as JSON")
    parser.add_argument("--device", default="auto")


class SearchSession:
    """Everything `c2f search` loads once: corpus, index, backbone, models (reused by the explorer)."""

    def __init__(self, index_dir: Path, coarse: Path | None = None, fine: Path | None = None,
                 device: str = "cpu"):
        from c2f_lib.features.backbones import load_backbone
        from c2f_lib.models.registry import build_model, load_model
        from c2f_lib.pipeline.corpus_index import CorpusIndex
        from c2f_lib.pipeline.search import BackboneTextEncoder, load_corpus
        from c2f_lib.utils import read_json

        manifest_path = Path(index_dir) / MANIFEST
        if not manifest_path.exists():
            raise FileNotFoundError(f"{manifest_path}: not found; build the index with `c2f index DIR`")
        self.manifest = read_json(manifest_path)
        self.index = CorpusIndex.load(index_dir)
        self.corpus = load_corpus(Path(index_dir) / "features.h5", self.index.video_ids)
        self.encode = BackboneTextEncoder(load_backbone(self.manifest["backbone"], device=device))
        coarse = coarse or self.manifest["coarse"]
        fine = fine or self.manifest["fine"]
        if fine is None:
            raise ValueError(f"{manifest_path}: no fine checkpoint; pass --fine CKPT (here or to `c2f index`)")
        if coarse is None:  # the index's own similarity: cosine with the plain frame mean
            import c2f_lib.models.meanpool  # noqa: F401  (registers "meanpool")
            self.coarse = build_model("meanpool", {"dim": self.corpus.frames.shape[-1], "adapter": False}).eval()
        else:
            self.coarse = load_model(coarse, map_location=device)[0]
        self.fine = load_model(fine, map_location=device)[0]
        clip_dim, wanted = self.corpus.clips[0].shape[1], self.fine.cfg.video_dim
        if clip_dim != wanted:
            raise ValueError(f"{fine}: the fine model reads clip features of size {wanted}, the index holds "
                             f"{clip_dim}; index with the backbone and --frames-per-clip/--motion it was trained on")

    def search(self, query: str, cfg) -> dict:
        from c2f_lib.pipeline.search import Queries, search

        if not query.strip():
            raise ValueError("empty query")
        sentence, tokens = self.encode([query])
        queries = Queries(qids=[0], texts=[query], sentence=sentence, tokens=tokens)
        return search(self.coarse, self.fine, queries, self.corpus, cfg, index=self.index, keep_saliency=True)[0]


def main_search(args: argparse.Namespace) -> int:
    from c2f_lib.pipeline.search import SearchConfig
    from c2f_lib.utils import resolve_device

    try:
        session = SearchSession(args.index, args.coarse, args.fine, resolve_device(args.device))
        n = len(session.corpus.video_ids)
        cfg = SearchConfig(k_videos=min(args.k_videos, n), fusion=args.fusion, alpha=args.alpha,
                           top_moments=args.top, shortlist_size=min(args.shortlist, n) if args.shortlist else None)
        record = session.search(args.query, cfg)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"c2f search: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(record))
        return 0
    files = session.manifest["videos"]
    print(f"{'rank':>4}  {'score':>8}  {'start':>7}  {'end':>7}  video")
    for rank, (vid, start, end, score) in enumerate(record["moments"], start=1):
        print(f"{rank:>4}  {score:8.4f}  {start:7.1f}  {end:7.1f}  {files.get(vid, vid)}")
    return 0
