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

from c2f_lib import cli_types
from c2f_lib.cli_types import DEVICE_HELP, positive_float, positive_int, unit_float
from c2f_lib.errors import Interrupted, UserError

MANIFEST = "manifest.json"


# ----------------------------------------------------------------------------- checks both commands share
def load_checkpoint(path: Path, device: str, role: str):
    """A registered model from a checkpoint file; a file that is not one is a one-line error."""
    from c2f_lib.models.registry import load_model

    if not Path(path).is_file():
        raise UserError(f"{role} checkpoint not found" if not Path(path).exists() else "is not a checkpoint file",
                        path, field=f"--{role}")
    try:
        return load_model(path, map_location=device)[0]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"not a usable {role} checkpoint ({err})", path, field=f"--{role}") from None


def check_fine(fine, path: Path, clip_dim: int, token_dim: int) -> None:
    """A fine model must read the clip and token features the index holds (sizes of its input layers)."""
    cfg = getattr(fine, "cfg", None)
    if not hasattr(fine, "predict") or not hasattr(cfg, "video_dim"):
        raise UserError(f"{type(fine).__name__} is not a fine grounding model", path, field="--fine")
    if cfg.video_dim != clip_dim:
        raise UserError(f"the fine model reads clip features of size {cfg.video_dim}, the index holds {clip_dim}; "
                        f"index with the backbone and --frames-per-clip/--motion it was trained on", path, field="--fine")
    if cfg.text_dim != token_dim:
        raise UserError(f"the fine model reads text tokens of width {cfg.text_dim}, the index's backbone gives "
                        f"{token_dim}; index with the backbone it was trained on", path, field="--fine")


def check_coarse(coarse, path: Path, embed_dim: int) -> None:
    dim = getattr(getattr(coarse, "cfg", None), "dim", None)
    if not hasattr(coarse, "score"):
        raise UserError(f"{type(coarse).__name__} is not a coarse retrieval model", path, field="--coarse")
    if dim is not None and dim != embed_dim:
        raise UserError(f"the coarse model reads embeddings of size {dim}, the index's backbone gives {embed_dim}",
                        path, field="--coarse")


# ----------------------------------------------------------------------------- index
def add_index_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video_dir", type=Path, help="folder of videos (searched recursively)")
    parser.add_argument("--backbone", default="ViT-B-32:openai",
                        help="feature backbone: <open_clip model>:<tag or weights file> (a tag downloads once), "
                             "hf:<hub id or folder>, or tinyclip:<checkpoint>")
    parser.add_argument("--coarse", type=Path, help="coarse retriever checkpoint (default: mean pooling)")
    parser.add_argument("--fine", type=Path, help="fine grounding checkpoint (needed by `c2f search`)")
    parser.add_argument("--out", type=Path, help="index folder (default: VIDEO_DIR/.c2f_index)")
    parser.add_argument("--num-frames", type=positive_int, default=12, help="uniform frames per video (coarse)")
    parser.add_argument("--clip-len", type=positive_float, default=2.0, help="seconds per clip feature (fine)")
    parser.add_argument("--frames-per-clip", type=positive_int, default=None,
                        help="frames decoded per clip (default: tinyclip's own, 1 for image backbones, whose "
                             "frame embeddings are averaged)")
    parser.add_argument("--motion", action="store_true",
                        help="add the colour-motion descriptor to the clip features, as the fine model was "
                             "trained (needs --frames-per-clip >= 2)")
    parser.add_argument("--index-kind", choices=["flat", "hnsw", "ivf"], default="flat",
                        help="FAISS index: exact (flat) or approximate (hnsw, ivf) for large folders")
    parser.add_argument("--device", type=cli_types.device, default="auto", help=DEVICE_HELP)


def find_videos(folder: Path) -> dict[str, Path]:
    """vid (path relative to `folder`, without suffix) -> file, for every video file below `folder`."""
    from c2f_lib.features.extract import VIDEO_EXTENSIONS

    if not folder.is_dir():
        raise UserError("not a folder" if folder.exists() else "folder not found", folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()
                   and ".c2f_index" not in p.parts)
    return {str(p.relative_to(folder).with_suffix("")): p for p in files}


def extract_folder(videos: dict[str, Path], store_path: Path, backbone, cfg) -> tuple[dict[str, str], list[str]]:
    """Write frame and clip features of `videos` to the store (the dataset extractor's video half);
    `cfg` an ExtractConfig. A video already stored is reused only if its file is the one it was
    extracted from (same size and mtime); a replaced one is extracted again.
    Returns (vid -> reason for the skipped ones, the vids extracted again)."""
    from c2f_lib.features.extract import extract_videos, store_meta
    from c2f_lib.features.store import file_stamp
    from c2f_lib.features.store_writer import FeatureStoreWriter

    failures: dict[str, str] = {}
    with FeatureStoreWriter(store_path, store_meta(backbone, cfg)) as writer:
        replaced = [vid for vid, path in videos.items()
                    if writer.has_video(vid) and writer.source_stamp(vid) != file_stamp(path)]
        for vid in replaced:
            writer.drop_video(vid)
        extract_videos(writer, backbone, videos, list(videos), cfg, failures)
    return failures, replaced


def main_index(args: argparse.Namespace) -> int:
    from c2f_lib.features.backbone_specs import load_backbone
    from c2f_lib.features.cli import frames_per_clip
    from c2f_lib.features.extract import VIDEO_EXTENSIONS, ExtractConfig
    from c2f_lib.features.motion import MotionConfig
    from c2f_lib.features.store import failures_path
    from c2f_lib.pipeline.corpus_index import CorpusIndex, IndexConfig, video_embeddings
    from c2f_lib.run_lock import folder_lock
    from c2f_lib.pipeline.search import load_corpus
    from c2f_lib.utils import atomic_write_json, provenance

    out = args.out or args.video_dir / ".c2f_index"
    videos = find_videos(args.video_dir)
    if not videos:
        raise UserError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) in this folder", args.video_dir)
    device = args.device
    backbone = load_backbone(args.backbone, device=device)
    cfg = ExtractConfig(num_frames=args.num_frames, clip_len=args.clip_len,
                        frames_per_clip=frames_per_clip(args, backbone), motion=MotionConfig() if args.motion else None)
    # The checkpoints must fit this backbone: found now, not after extraction, nor at search time.
    if args.fine is not None:
        motion_dim = cfg.motion.dim if cfg.motion else 0
        check_fine(load_checkpoint(args.fine, device, "fine"), args.fine, backbone.embed_dim + motion_dim,
                   backbone.token_dim)
    if args.coarse is not None:
        check_coarse(load_checkpoint(args.coarse, device, "coarse"), args.coarse, backbone.embed_dim)
    store = out / "features.h5"
    with folder_lock(out):
        try:
            failures, replaced = extract_folder(videos, store, backbone, cfg)
        except KeyboardInterrupt:
            raise Interrupted("while extracting (the videos done so far are kept)") from None
        atomic_write_json(failures_path(store), [{"vid": v, "reason": r} for v, r in failures.items()])
        for vid in replaced:
            print(f"re-extracted {vid}: its file changed", file=sys.stderr)
        for vid, reason in failures.items():
            print(f"skipped {vid}: {reason}", file=sys.stderr)
        indexed = [v for v in videos if v not in failures]
        if not indexed:
            raise UserError("no video in this folder could be decoded", args.video_dir)
        corpus = load_corpus(store, indexed)
        CorpusIndex.build(video_embeddings(corpus.frames), corpus.video_ids,
                          IndexConfig(kind=args.index_kind)).save(out)
        atomic_write_json(out / MANIFEST, {
            "video_dir": str(args.video_dir.resolve()), "backbone": args.backbone,
            "coarse": str(args.coarse.resolve()) if args.coarse else None,
            "fine": str(args.fine.resolve()) if args.fine else None,
            "videos": {v: str(videos[v]) for v in indexed}, "skipped": failures,
            "provenance": provenance({k: str(v) for k, v in vars(args).items() if not k.startswith("_")})})
    print(f"indexed {len(indexed)} video(s) into {out} ({len(failures)} skipped, {len(replaced)} re-extracted)")
    return 0


# ----------------------------------------------------------------------------- search
def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", help="what to look for, in words")
    parser.add_argument("--index", type=Path, default=Path(".c2f_index"), help="folder written by `c2f index`")
    parser.add_argument("--coarse", type=Path, help="override the coarse checkpoint of the index")
    parser.add_argument("--fine", type=Path, help="override the fine checkpoint of the index")
    parser.add_argument("--k-videos", type=positive_int, default=5, help="videos searched for moments")
    parser.add_argument("--top", type=positive_int, default=10, help="moments to print")
    parser.add_argument("--fusion", choices=["fine", "product", "weighted"], default="product",
                        help="how a moment's score combines its video's coarse score and the fine score")
    parser.add_argument("--alpha", type=unit_float, default=0.5, help="coarse weight of --fusion weighted")
    parser.add_argument("--shortlist", type=positive_int, help="FAISS candidates re-ranked by the coarse model")
    parser.add_argument("--json", action="store_true", help="print the prediction record as JSON")
    parser.add_argument("--device", type=cli_types.device, default="auto", help=DEVICE_HELP)


class SearchSession:
    """Everything `c2f search` loads once: corpus, index, backbone, models (reused by the explorer)."""

    def __init__(self, index_dir: Path, coarse: Path | None = None, fine: Path | None = None,
                 device: str = "cpu"):
        from c2f_lib.features.backbone_specs import load_backbone
        from c2f_lib.models.registry import build_model
        from c2f_lib.pipeline.corpus_index import CorpusIndex
        from c2f_lib.pipeline.search import BackboneTextEncoder, load_corpus
        from c2f_lib.utils import read_json

        manifest_path = Path(index_dir) / MANIFEST
        if not manifest_path.exists():
            raise UserError("no index here; build it with `c2f index DIR`", manifest_path)
        self.manifest = read_json(manifest_path)
        self.index = CorpusIndex.load(index_dir)
        self.corpus = load_corpus(Path(index_dir) / "features.h5", self.index.video_ids)
        backbone = load_backbone(self.manifest["backbone"], device=device)
        self.encode = BackboneTextEncoder(backbone)
        coarse = coarse or self.manifest["coarse"]
        fine = fine or self.manifest["fine"]
        if fine is None:
            raise UserError("the index has no fine checkpoint; pass --fine CKPT (here or to `c2f index`)",
                            manifest_path)
        if coarse is None:  # the index's own similarity: cosine with the plain frame mean
            import c2f_lib.models.meanpool  # noqa: F401  (registers "meanpool")
            self.coarse = build_model("meanpool", {"dim": self.corpus.frames.shape[-1], "adapter": False}).eval()
        else:
            self.coarse = load_checkpoint(Path(coarse), device, "coarse")
            check_coarse(self.coarse, Path(coarse), backbone.embed_dim)
        self.fine = load_checkpoint(Path(fine), device, "fine")
        check_fine(self.fine, Path(fine), self.corpus.clips[0].shape[1], backbone.token_dim)

    def search(self, query: str, cfg) -> dict:
        from c2f_lib.pipeline.search import Queries, search

        if not query.strip():
            raise UserError("empty query", field="QUERY")
        sentence, tokens = self.encode([query])
        queries = Queries(qids=[0], texts=[query], sentence=sentence, tokens=tokens)
        return search(self.coarse, self.fine, queries, self.corpus, cfg, index=self.index, keep_saliency=True)[0]


def main_search(args: argparse.Namespace) -> int:
    from c2f_lib.pipeline.search import SearchConfig

    session = SearchSession(args.index, args.coarse, args.fine, args.device)
    n = len(session.corpus.video_ids)
    cfg = SearchConfig(k_videos=min(args.k_videos, n), fusion=args.fusion, alpha=args.alpha,
                       top_moments=args.top, shortlist_size=min(args.shortlist, n) if args.shortlist else None)
    record = session.search(args.query, cfg)
    if args.json:
        print(json.dumps(record))
        return 0
    files = session.manifest["videos"]
    print(f"{'rank':>4}  {'score':>8}  {'start':>7}  {'end':>7}  video")
    for rank, (vid, start, end, score) in enumerate(record["moments"], start=1):
        print(f"{rank:>4}  {score:8.4f}  {start:7.1f}  {end:7.1f}  {files.get(vid, vid)}")
    return 0
