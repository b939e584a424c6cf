"""Extract a dataset's video and text features into its feature store (resumable).

Videos are decoded by a DataLoader (parallel workers on a GPU box, in-process on a laptop), encoded
by the backbone, and written one video group at a time; texts (moment queries and video captions
of every split) get a sentence embedding and per-token features with their tokenizer ids. A video
that cannot be decoded is recorded in `<store>.failures.json` with the reason, and extraction goes on.

`extract_videos` is the video half on its own, for any set of files (`c2f index DIR` uses it on a
folder of the user's videos).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from c2f_lib.data.schema import read_captions, read_moments
from c2f_lib.data.video_files import VIDEO_EXTENSIONS
from c2f_lib.features.backbones import Backbone, mean_frame_embedding
from c2f_lib.features.decode import SampledVideo, VideoDecodeError, sample_video, uniform_indices
from c2f_lib.features.motion import MotionConfig, motion_features
from c2f_lib.features.store import FeatureStore, StoreError, StoreMeta, failures_path, read_failures
from c2f_lib.features.store_writer import FeatureStoreWriter
from c2f_lib.progress import progress
from c2f_lib.amp import Precision, check_amp
from c2f_lib.errors import MissingFileError
from c2f_lib.utils import atomic_write_json


@dataclass
class ExtractConfig:
    num_frames: int = 12          # "frames" sampling (coarse stage)
    clip_len: float = 2.0         # "clips" sampling (fine stage), seconds
    frames_per_clip: int = 1      # frames mean-pooled per clip
    motion: MotionConfig | None = None  # also store each clip's motion descriptor (needs frames_per_clip >= 2)
    backend: str = "auto"         # decord, pyav, or auto (decord, then PyAV)
    num_workers: int = 0          # decoding processes (0 = in this process)
    text_batch: int = 256
    amp: bool | str = False       # autocast of the backbone, as c2f_lib/amp.py ("auto": fp16 CUDA, bf16 CPU)

    def __post_init__(self) -> None:
        check_amp(self.amp)
        if self.motion is not None and self.frames_per_clip < 2:
            raise ValueError(f"motion features need frames_per_clip >= 2, got {self.frames_per_clip}")


def dataset_annotations(dataset_dir: str | Path, splits: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(video ids, texts) mentioned by the moments_/captions_<split>.jsonl files of a dataset folder."""
    dataset_dir = Path(dataset_dir)
    files = sorted(dataset_dir.glob("moments_*.jsonl")) + sorted(dataset_dir.glob("captions_*.jsonl"))
    if splits is not None:
        files = [f for f in files if f.stem.split("_", 1)[1] in splits]
    if not files:
        raise MissingFileError("no moments_<split>.jsonl or captions_<split>.jsonl files", dataset_dir)
    vids, texts = {}, {}
    for path in files:
        if path.name.startswith("moments_"):
            for r in read_moments(path, labelled=False):     # a hidden test split's videos are extracted too
                vids[r.vid] = texts[r.query] = None
        else:
            for r in read_captions(path):
                vids[r.vid] = None
                texts.update(dict.fromkeys(r.captions))
    return list(vids), list(texts)


def find_video(video_dir: Path, vid: str) -> Path:
    for ext in VIDEO_EXTENSIONS + tuple(e.upper() for e in VIDEO_EXTENSIONS):   # e.g. DiDeMo's .MOV
        if (video_dir / f"{vid}{ext}").is_file():
            return video_dir / f"{vid}{ext}"
    raise VideoDecodeError(f"no video file ({', '.join(VIDEO_EXTENSIONS)})", f"{video_dir / vid}.*")


class _VideoDataset(torch.utils.data.Dataset):
    """Decodes one video per item; errors are returned, not raised, so a worker never dies.

    `sources`: a folder holding `<vid>.<ext>` files, or each vid's file.
    """

    def __init__(self, sources: Path | Mapping[str, Path], vids: list[str], cfg: ExtractConfig,
                 short_side: int):
        self.sources, self.vids, self.cfg, self.short_side = sources, vids, cfg, short_side

    def __len__(self) -> int:
        return len(self.vids)

    def _path(self, vid: str) -> Path:
        return self.sources[vid] if isinstance(self.sources, Mapping) else find_video(self.sources, vid)

    def __getitem__(self, i: int) -> tuple[str, str, SampledVideo | str]:
        vid = self.vids[i]
        try:
            path = self._path(vid)
            return vid, str(path), sample_video(path, self.cfg.num_frames, self.cfg.clip_len,
                                                self.cfg.frames_per_clip, backend=self.cfg.backend,
                                                short_side=self.short_side)
        except VideoDecodeError as err:
            return vid, "", str(err)


def store_meta(backbone: Backbone, cfg: ExtractConfig) -> StoreMeta:
    motion = cfg.motion
    return StoreMeta(backbone=backbone.name, weights=backbone.weights, num_frames=cfg.num_frames,
                     clip_len=cfg.clip_len, frames_per_clip=cfg.frames_per_clip, image_size=backbone.image_size,
                     video_dim=backbone.embed_dim, text_dim=backbone.embed_dim, token_dim=backbone.token_dim,
                     vocab_size=backbone.vocab_size, motion=motion.tag() if motion else "",
                     motion_dim=motion.dim if motion else 0)


def encode_clips(backbone: Backbone, clip_frames: np.ndarray, motion: MotionConfig | None = None
                 ) -> tuple[torch.Tensor, np.ndarray | None]:
    """[L, K, H, W, 3] frames of each clip -> (clip embedding [L, D], motion descriptor [L, M] or None)."""
    clips = backbone.encode_clips(clip_frames) if getattr(backbone, "clip_level", False) else \
        mean_frame_embedding(backbone, clip_frames)                       # duck-typed image backbones too
    return clips, (motion_features(clip_frames, motion) if motion is not None else None)


def coarse_frames(backbone: Backbone, video: SampledVideo, clips: torch.Tensor, num_frames: int
                  ) -> tuple[torch.Tensor, np.ndarray]:
    """The coarse stage's N "frames" [N, D] and their frame indices [N]: N uniform frame embeddings, or
    for a video backbone the embeddings of N uniformly picked clips (indexed by their middle frame)."""
    if not backbone.clip_level:
        return backbone.encode_frames(video.frames), video.frame_indices
    picks = uniform_indices(len(clips), num_frames)                                   # [N]
    return clips[picks], video.clip_indices[picks, video.clip_indices.shape[1] // 2]


def autocast(backbone: Backbone, cfg: ExtractConfig):
    """The autocast context `cfg.amp` asks for on the backbone's device (a no-op for amp False)."""
    if cfg.amp in (False, "off"):
        return contextlib.nullcontext()         # duck-typed backbones need no device for that
    return Precision.of(cfg.amp, getattr(backbone, "device", "cpu")).autocast()


def extract_videos(writer: FeatureStoreWriter, backbone: Backbone, sources: Path | Mapping[str, Path],
                   vids: list[str], cfg: ExtractConfig, failures: dict[str, str]) -> int:
    """Encode and write the frame and clip features of every vid not yet in the store.

    `sources` as in `_VideoDataset`. Undecodable videos go to `failures` (vid -> reason); a video
    that now succeeds leaves it. Returns how many videos were encoded.
    """
    todo = [v for v in vids if not writer.has_video(v)]
    loader = torch.utils.data.DataLoader(_VideoDataset(sources, todo, cfg, backbone.image_size),
                                         batch_size=None, num_workers=cfg.num_workers)
    encoded = 0
    for vid, source, video in progress(loader, total=len(todo), desc="video features", unit="video"):
        if isinstance(video, str):
            failures[vid] = video
            continue
        with autocast(backbone, cfg):
            clips, motion = encode_clips(backbone, video.clip_frames, cfg.motion)       # [L, D], [L, M]
            frames, frame_indices = coarse_frames(backbone, video, clips, cfg.num_frames)   # [N, D], [N]
        clips, frames = clips.float(), frames.float()
        writer.put_video(vid, frames=frames, frame_indices=frame_indices, clips=clips, motion=motion, clip_len=cfg.clip_len, duration=video.duration,
                         fps=video.fps, source=source)
        failures.pop(vid, None)
        encoded += 1
    return encoded


def shard_path(out: str | Path, index: int, count: int) -> Path:
    """Where shard `index` of `count` is written: STORE.h5 -> STORE.shard<index>of<count>.h5."""
    out = Path(out)
    return out.with_name(f"{out.stem}.shard{index}of{count}{out.suffix}")


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"shard {index}/{count}: need 0 <= index < count")
    return index, count


def remove_if_built_otherwise(path: Path, meta: StoreMeta) -> bool:
    """Delete the store at `path` when it was built with other settings than `meta`; True if deleted.
    (A store that cannot be read is left for the writer to report.)"""
    if not path.exists():
        return False
    try:
        with FeatureStore(path) as store:
            stale = bool(store.meta.mismatches(meta))
    except StoreError:
        return False
    if stale:
        path.unlink()
    return stale


def extract_dataset(dataset_dir: str | Path, backbone: Backbone, out: str | Path,
                    cfg: ExtractConfig | None = None, splits: list[str] | None = None,
                    video_dir: str | Path | None = None, shard: tuple[int, int] | None = None,
                    replace_stale: bool = False) -> dict:
    """Fill `out` with every video and text of the dataset; returns counts and the failures.

    `shard` (index, count): only every count-th video and text, starting at index (in annotation order),
    so `count` processes or machines can share the work; each writes its own store (`shard_path`),
    resumable like any store, and `merge_shards` joins them. An existing `out` built with other settings
    (another backbone, weights, sampling) is refused, unless `replace_stale`: then it is deleted and
    rebuilt (for a pipeline stage, whose store is its own output; a user's store is never deleted)."""
    cfg = cfg or ExtractConfig()
    dataset_dir, out = Path(dataset_dir), Path(out)
    if replace_stale:
        remove_if_built_otherwise(out, store_meta(backbone, cfg))
    video_dir = Path(video_dir) if video_dir else dataset_dir / "videos"
    vids, texts = dataset_annotations(dataset_dir, splits)
    if shard is not None:
        index, count = check_shard(shard)
        vids, texts = vids[index::count], texts[index::count]
    failures = read_failures(out)
    summary = {"videos": len(vids), "texts": len(texts), "encoded_videos": 0, "encoded_texts": 0}
    with FeatureStoreWriter(out, store_meta(backbone, cfg)) as writer:
        summary["encoded_videos"] = extract_videos(writer, backbone, video_dir, vids, cfg, failures)
        # Texts stored before token ids existed are encoded again (their new row wins), so a rerun
        # upgrades an old store for MESM's masked-word targets.
        todo_texts = [t for t in texts if not writer.has_text(t, with_token_ids=True)]
        batches = range(0, len(todo_texts), cfg.text_batch)
        for start in progress(batches, desc="text features", unit="batch"):
            batch = todo_texts[start:start + cfg.text_batch]
            with autocast(backbone, cfg):
                sentences, tokens, mask, ids = backbone.encode_texts(batch)  # [T, D], [T, Lq, Dt], [T, Lq] x2
            writer.put_texts(batch, sentences=sentences,
                             tokens=[token[valid] for token, valid in zip(tokens, mask)],
                             token_ids=[row[valid] for row, valid in zip(ids, mask)])
            summary["encoded_texts"] += len(batch)
    atomic_write_json(failures_path(out), [{"vid": v, "reason": r} for v, r in sorted(failures.items())])
    summary["failures"] = failures
    return summary


def merge_shards(dataset_dir: str | Path, out: str | Path, count: int, splits: list[str] | None = None,
                 text_batch: int = 256) -> dict:
    """Join the `count` finished shard stores of `out` (`shard_path(out, i, count)`) into `out`.

    The shards must agree on their settings and together hold every video of the dataset (or record
    it as failed) and every text; a missing or unfinished shard is an error naming it. Failures are
    merged. Rerunning adds only what `out` lacks. Returns counts and the failures."""
    out = Path(out)
    vids, texts = dataset_annotations(dataset_dir, splits)
    shards = [shard_path(out, i, count) for i in range(count)]
    for path in shards:
        if not path.exists():
            unfinished = path.with_name(path.name + ".partial").exists()
            state = "not finished (a .partial file is there)" if unfinished else "missing"
            raise MissingFileError(f"shard {state}; run `c2f features ... --shard "
                                    f"{shards.index(path)}/{count}` (it resumes)", path)
    stores = [FeatureStore(p) for p in shards]
    try:
        meta = stores[0].meta
        for store in stores[1:]:
            problems = store.meta.mismatches(meta)
            if problems:
                raise StoreError(f"built with other settings than {shards[0]} "
                                 f"({'; '.join(problems)})", store.path)
        failures: dict[str, str] = {}
        for path in shards:
            failures.update(read_failures(path))
        owner = {vid: store for store in stores for vid in store.video_ids()}
        missing = [v for v in vids if v not in owner and v not in failures]
        absent_texts = [t for t in texts if not any(s.has_text(t) for s in stores)]
        if missing or absent_texts:
            first = f"video {missing[0]!r}" if missing else f"text {absent_texts[0]!r}"
            raise StoreError(f"the {count} shards lack {len(missing)} videos and {len(absent_texts)} texts "
                             f"(first: {first}); were they extracted from this dataset with the same --splits?", out)
        summary = {"videos": len(vids), "texts": len(texts), "merged_videos": 0, "merged_texts": 0}
        with FeatureStoreWriter(out, meta) as writer:
            for vid in vids:
                store = owner.get(vid)
                if store is None or writer.has_video(vid):
                    continue
                attrs = store.video_attrs(vid)
                writer.put_video(vid, frames=store.frames(vid), frame_indices=store.frame_indices(vid),
                                 clips=store.clips(vid), motion=store.motion(vid) if meta.motion else None,
                                 clip_len=meta.clip_len, duration=attrs.get("duration"), fps=attrs.get("fps"),
                                 source=str(attrs.get("source", "")))
                failures.pop(vid, None)
                summary["merged_videos"] += 1
            todo = [t for t in texts if not writer.has_text(t, with_token_ids=True)]
            for start in range(0, len(todo), text_batch):
                batch = todo[start:start + text_batch]
                rows = [next(s for s in stores if s.has_text(t)) for t in batch]
                ids = [store.token_ids(t) for store, t in zip(rows, batch)]
                with_ids = all(i is not None for i in ids)
                writer.put_texts(batch, sentences=np.stack([s.sentence(t) for s, t in zip(rows, batch)]),
                                 tokens=[s.tokens(t) for s, t in zip(rows, batch)],
                                 token_ids=ids if with_ids else None)
                summary["merged_texts"] += len(batch)
    finally:
        for store in stores:
            store.close()
    atomic_write_json(failures_path(out), [{"vid": v, "reason": r} for v, r in sorted(failures.items())])
    summary["failures"] = failures
    return summary
