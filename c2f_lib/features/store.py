"""The HDF5 feature store: one file per dataset x backbone, read by every later stage.

Layout (all arrays fp16 except indices)::

    /                        attrs: format, meta (json of StoreMeta)
    /videos/<q(vid)>/frames         [N, D]  N uniform frames (middle of N equal segments)
    /videos/<q(vid)>/frame_indices  [N]     decoded frame index of each row of `frames`
    /videos/<q(vid)>/clips          [L, D]  one feature per clip_len seconds, clip i = [i*c, (i+1)*c)
    /videos/<q(vid)>                attrs: vid, duration, fps, source, complete
                                    (q = percent-escaping, so ids may hold '/')
    /texts/<sha1(text)>/sentence [D]      sentence embedding (CLIP's projected EOT feature)
    /texts/<sha1(text)>/tokens   [Lq, Dt] per-token features (last hidden states, padding removed)
    /texts/<sha1(text)>          attrs: text, complete

Writes never touch the finished store in place: `FeatureStoreWriter` appends to
``<store>.partial`` (a copy of the store, if one exists) and moves it over the store with
``os.replace`` on `close()`. An interrupted run leaves the old store intact and a partial file
that the next run resumes from; groups are marked ``complete`` only after their data is written,
so a group cut off mid-write is discarded on resume.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import h5py
import numpy as np
import torch

from c2f_lib.data.schema import read_captions, read_moments
from c2f_lib.features.types import CoarseSplit, MomentSample

FORMAT = "c2f-feature-store/1"
# QVHighlights saliency_scores are 0..4 per annotator; targets are scaled to [0, 1].
SALIENCY_SCALE = 4.0


class StoreError(RuntimeError):
    """A feature store that cannot be used: corrupt, foreign, or built with other settings."""


@dataclass(frozen=True)
class StoreMeta:
    """How the features were made. Two stores with different metadata never mix."""

    backbone: str                    # registry name, e.g. "tinyclip", "ViT-B-32:openai", "hf:/path"
    weights: str = ""                # weights file / tag / content hash that makes `backbone` exact
    num_frames: int = 12             # N uniform frames per video ("frames" sampling)
    clip_len: float = 2.0            # seconds per clip feature ("clips" sampling)
    frames_per_clip: int = 1         # frames decoded (and mean-pooled) inside each clip window
    image_size: int = 224            # backbone input resolution
    normalisation: str = "none"      # features are stored as the backbone returns them
    video_dim: int = 0               # D of frames/clips (0 = not fixed yet)
    text_dim: int = 0                # D of sentence embeddings
    token_dim: int = 0               # Dt of token features

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str | Path) -> "StoreMeta":
        try:
            raw = json.loads(text)
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(raw) - known)
            if unknown:
                raise ValueError(f"unknown metadata keys {unknown}")
            return cls(**raw)
        except (ValueError, TypeError) as err:
            raise StoreError(f"{where}: unreadable store metadata ({err})") from None

    def mismatches(self, other: "StoreMeta") -> list[str]:
        """Fields that differ, as 'name: stored != requested' (dims of 0 mean 'not fixed')."""
        problems = []
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if f.name.endswith("_dim") and 0 in (mine, theirs):
                continue
            if mine != theirs:
                problems.append(f"{f.name}: stored {mine!r} != requested {theirs!r}")
        return problems


def text_key(text: str) -> str:
    """Group name of a text: captions may hold '/' and other characters HDF5 names cannot."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def video_key(vid: str) -> str:
    """Group name of a video id ('/' would nest groups; '%' escapes keep the name reversible)."""
    return quote(vid, safe="")


def failures_path(store_path: str | Path) -> Path:
    """The json list of videos that could not be decoded, written beside the store."""
    store_path = Path(store_path)
    return store_path.with_name(store_path.stem + ".failures.json")


def read_failures(store_path: str | Path) -> dict[str, str]:
    """vid -> reason for every video the extractor skipped (empty when none were recorded)."""
    path = failures_path(store_path)
    if not path.exists():
        return {}
    try:
        return {row["vid"]: row["reason"] for row in json.loads(path.read_text())}
    except (ValueError, KeyError, TypeError) as err:
        raise StoreError(f"{path}: unreadable failures list ({err})") from None


def _open_h5(path: Path, mode: str) -> h5py.File:
    try:
        handle = h5py.File(path, mode)
    except OSError as err:
        raise StoreError(f"{path}: not a readable HDF5 feature store ({err}); "
                         f"delete it to extract again") from None
    return handle


def _read_meta(handle: h5py.File, path: Path) -> StoreMeta:
    fmt = handle.attrs.get("format")
    if fmt != FORMAT:
        raise StoreError(f"{path}: not a c2f feature store (format attribute {fmt!r}, expected {FORMAT!r})")
    return StoreMeta.from_json(handle.attrs["meta"], path)


def _complete_names(group: h5py.Group | None) -> set[str]:
    if group is None:
        return set()
    return {name for name, item in group.items() if item.attrs.get("complete", False)}


class FeatureStore:
    """Read-only view of a finished store. Use as a context manager or call close()."""

    def __init__(self, path: str | Path, expect: StoreMeta | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: feature store not found (run `c2f features` first)")
        self._h5 = _open_h5(self.path, "r")
        try:
            self.meta = _read_meta(self._h5, self.path)
            if expect is not None:
                problems = self.meta.mismatches(expect)
                if problems:
                    raise StoreError(f"{self.path}: built with other settings ({'; '.join(problems)}); "
                                     f"use another --out or delete it")
            self._videos = _complete_names(self._h5.get("videos"))
            self._texts = _complete_names(self._h5.get("texts"))
        except Exception:
            self._h5.close()
            raise

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._h5.close()

    def video_ids(self) -> list[str]:
        return sorted(unquote(key) for key in self._videos)

    def has_video(self, vid: str) -> bool:
        return video_key(vid) in self._videos

    def has_text(self, text: str) -> bool:
        return text_key(text) in self._texts

    def _array(self, kind: str, name: str, item: str) -> np.ndarray:
        key, keys = (video_key(name), self._videos) if kind == "video" else (text_key(name), self._texts)
        if key not in keys:
            raise KeyError(f"{self.path}: no {kind} {name!r}")
        node = self._h5[f"{kind}s"][key]
        if item not in node:
            raise KeyError(f"{self.path}: {kind} {name!r} has no '{item}' features")
        try:
            return node[item][()]
        except OSError as err:
            raise StoreError(f"{self.path}: {kind}s/{key}/{item} is corrupt ({err})") from None

    def frames(self, vid: str) -> np.ndarray:            # [N, D] fp16
        return self._array("video", vid, "frames")

    def frame_indices(self, vid: str) -> np.ndarray:     # [N] int
        return self._array("video", vid, "frame_indices")

    def clips(self, vid: str) -> np.ndarray:             # [L, D] fp16
        return self._array("video", vid, "clips")

    def video_attrs(self, vid: str) -> dict[str, Any]:
        if not self.has_video(vid):
            raise KeyError(f"{self.path}: no video {vid!r}")
        return dict(self._h5["videos"][video_key(vid)].attrs)

    def sentence(self, text: str) -> np.ndarray:         # [D] fp16
        return self._array("text", text, "sentence")

    def tokens(self, text: str) -> np.ndarray:           # [Lq, Dt] fp16
        return self._array("text", text, "tokens")


class FeatureStoreWriter:
    """Append videos and texts to a store; reruns skip what is already there.

    ``with FeatureStoreWriter(path, meta) as w: w.put_video(...); w.put_text(...)`` — the store
    appears (atomically) when the block exits without error; otherwise the partial file is kept
    for the next run to resume from.
    """

    def __init__(self, path: str | Path, meta: StoreMeta):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.meta = meta
        self._h5 = self._open_partial()
        self._videos = _complete_names(self._h5.get("videos"))
        self._texts = _complete_names(self._h5.get("texts"))

    def _open_partial(self) -> h5py.File:
        if self.partial.exists():
            try:
                handle = _open_h5(self.partial, "a")
                self._check_meta(handle, self.partial)
                return handle
            except StoreError as err:
                if "built with other settings" in str(err):
                    raise
                warnings.warn(f"discarding unusable partial store: {err}")
                self.partial.unlink()
        if self.path.exists():
            with _open_h5(self.path, "r") as handle:
                self._check_meta(handle, self.path)
            shutil.copyfile(self.path, self.partial)
            handle = _open_h5(self.partial, "a")
        else:
            handle = _open_h5(self.partial, "w")
            handle.attrs["format"] = FORMAT
        handle.attrs["meta"] = self.meta.to_json()
        return handle

    def _check_meta(self, handle: h5py.File, where: Path) -> None:
        stored = _read_meta(handle, where)
        problems = stored.mismatches(self.meta)
        if problems:
            raise StoreError(f"{where}: built with other settings ({'; '.join(problems)}); "
                             f"use another output path or delete it")
        # Keep dims learned by an earlier run when the caller did not fix them.
        merged = {f.name: getattr(self.meta, f.name) or getattr(stored, f.name) for f in fields(stored)}
        self.meta = StoreMeta(**merged)

    def __enter__(self) -> "FeatureStoreWriter":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self._h5.close()  # keep the partial file: the next run resumes from it

    def has_video(self, vid: str) -> bool:
        return video_key(vid) in self._videos

    def has_text(self, text: str) -> bool:
        return text_key(text) in self._texts

    def _fix_dim(self, name: str, value: int) -> None:
        fixed = getattr(self.meta, name)
        if fixed and fixed != value:
            raise ValueError(f"{self.path}: {name} is {fixed} in this store, got features of size {value}")
        if not fixed:
            self.meta = StoreMeta(**{**asdict(self.meta), name: value})
            self._h5.attrs["meta"] = self.meta.to_json()

    @staticmethod
    def _fresh_group(parent: h5py.Group, name: str) -> h5py.Group:
        if name in parent:  # an incomplete group left by an interrupted run
            del parent[name]
        return parent.create_group(name)

    def put_video(self, vid: str, *, frames: Any = None, frame_indices: Any = None, clips: Any = None,
                  clip_len: float | None = None, duration: float | None = None, fps: float | None = None,
                  source: str = "") -> None:
        """Store one video's frame features [N, D] (+ indices [N]) and/or clip features [L, D]."""
        if frames is None and clips is None:
            raise ValueError(f"put_video({vid!r}): give frames and/or clips")
        if clip_len is not None and not math.isclose(clip_len, self.meta.clip_len):
            raise ValueError(f"put_video({vid!r}): clip_len {clip_len} != store clip_len {self.meta.clip_len}")
        group = self._fresh_group(self._h5.require_group("videos"), video_key(vid))
        if frames is not None:
            frames = _as_numpy(frames, 2, f"{vid} frames")
            if frame_indices is None:
                raise ValueError(f"put_video({vid!r}): frames need frame_indices")
            frame_indices = np.asarray(frame_indices, dtype=np.int64)
            if frame_indices.shape != (frames.shape[0],):
                raise ValueError(f"put_video({vid!r}): {frames.shape[0]} frames but "
                                 f"frame_indices of shape {frame_indices.shape}")
            self._fix_dim("video_dim", frames.shape[1])
            group.create_dataset("frames", data=frames.astype(np.float16))
            group.create_dataset("frame_indices", data=frame_indices)
        if clips is not None:
            clips = _as_numpy(clips, 2, f"{vid} clips")
            self._fix_dim("video_dim", clips.shape[1])
            group.create_dataset("clips", data=clips.astype(np.float16))
        group.attrs["duration"] = float(duration) if duration is not None else float("nan")
        group.attrs["fps"] = float(fps) if fps is not None else float("nan")
        group.attrs["source"] = str(source)
        group.attrs["vid"] = vid
        group.attrs["complete"] = True
        self._videos.add(video_key(vid))

    def put_text(self, text: str, *, sentence: Any = None, tokens: Any = None) -> None:
        """Store one text's sentence embedding [D] and/or token features [Lq, Dt] (no padding)."""
        if sentence is None and tokens is None:
            raise ValueError(f"put_text({text!r}): give sentence and/or tokens")
        group = self._fresh_group(self._h5.require_group("texts"), text_key(text))
        group.attrs["text"] = text
        if sentence is not None:
            sentence = _as_numpy(sentence, 1, f"sentence of {text!r}")
            self._fix_dim("text_dim", sentence.shape[0])
            group.create_dataset("sentence", data=sentence.astype(np.float16))
        if tokens is not None:
            tokens = _as_numpy(tokens, 2, f"tokens of {text!r}")
            self._fix_dim("token_dim", tokens.shape[1])
            group.create_dataset("tokens", data=tokens.astype(np.float16))
        group.attrs["complete"] = True
        self._texts.add(text_key(text))

    def flush(self) -> None:
        self._h5.flush()

    def close(self) -> None:
        """Finish: move the partial file over the store (atomic on one filesystem)."""
        if not self._h5.id.valid:
            return
        self._h5.close()
        os.replace(self.partial, self.path)


def _as_numpy(x: Any, ndim: int, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != ndim:
        raise ValueError(f"{what}: expected {ndim} dimensions, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: holds NaN or inf")
    return x


def _usable_videos(store: FeatureStore, vids: list[str], annotation: Path) -> set[str]:
    """Videos present in the store; ones the extractor reported as broken are skipped with a warning."""
    missing = [v for v in dict.fromkeys(vids) if not store.has_video(v)]
    if not missing:
        return set(vids)
    failed = read_failures(store.path)
    unexplained = [v for v in missing if v not in failed]
    if unexplained:
        raise StoreError(f"{store.path}: {len(unexplained)} video(s) of {annotation} are not in the store "
                         f"(first: {unexplained[:3]}); extract features for this split first")
    warnings.warn(f"{annotation}: skipping {len(missing)} video(s) that failed to decode "
                  f"(see {failures_path(store.path)}): {missing[:3]}")
    return set(vids) - set(missing)


def load_coarse_split(store_path: str | Path, captions_jsonl: str | Path) -> CoarseSplit:
    """Gallery of the split's videos (frames [V, F, D]) and every caption (one text per caption)."""
    records = read_captions(captions_jsonl)
    with FeatureStore(store_path) as store:
        usable = _usable_videos(store, [r.vid for r in records], Path(captions_jsonl))
        records = [r for r in records if r.vid in usable]
        video_ids = [r.vid for r in records]
        frames = [store.frames(v) for v in video_ids]
        counts = {f.shape[0] for f in frames}
        if len(counts) > 1:
            raise StoreError(f"{store.path}: videos hold different numbers of frames {sorted(counts)}")
        texts, text_to_video = [], []
        for index, record in enumerate(records):
            for caption in record.captions:
                texts.append(caption)
                text_to_video.append(index)
        text_emb = [store.sentence(t) for t in texts]
    dim = store.meta.video_dim
    return CoarseSplit(
        video_ids=video_ids,
        frames=torch.from_numpy(np.stack(frames)).float() if frames else torch.zeros(0, 0, dim),
        texts=texts,
        text_emb=torch.from_numpy(np.stack(text_emb)).float() if texts else torch.zeros(0, dim),
        text_to_video=torch.tensor(text_to_video, dtype=torch.long),
    )


def saliency_target(num_clips: int, clip_len: float, windows: list[list[float]],
                    clip_ids: list[int] | None = None,
                    scores: list[list[float]] | None = None) -> torch.Tensor:
    """Per-clip saliency in [0, 1]: annotators' mean score / 4 when given, else 1 inside a window."""
    target = torch.zeros(num_clips)  # [L]
    if scores is not None and clip_ids is not None:
        for clip_id, row in zip(clip_ids, scores):
            if clip_id < num_clips:
                target[clip_id] = min(float(np.mean(row)) / SALIENCY_SCALE, 1.0)
        return target
    for start, end in windows:
        # Clip i covers [i*c, (i+1)*c); it is salient when it overlaps the window.
        first = int(math.floor(start / clip_len))
        last = int(math.ceil(end / clip_len))
        target[max(first, 0):min(last, num_clips)] = 1.0
    return target


def load_moment_samples(store_path: str | Path, moments_jsonl: str | Path) -> list[MomentSample]:
    """One MomentSample per query: its video's clip features and the query's token features."""
    records = read_moments(moments_jsonl)
    samples = []
    with FeatureStore(store_path) as store:
        usable = _usable_videos(store, [r.vid for r in records], Path(moments_jsonl))
        clip_len = store.meta.clip_len
        clips_cache: dict[str, torch.Tensor] = {}
        for r in records:
            if r.vid not in usable:
                continue
            if r.vid not in clips_cache:
                clips_cache[r.vid] = torch.from_numpy(store.clips(r.vid)).float()
            clip_feats = clips_cache[r.vid]  # [L, Dv]
            samples.append(MomentSample(
                qid=r.qid, query=r.query, vid=r.vid, duration=r.duration, clip_len=clip_len,
                clip_feats=clip_feats,
                token_feats=torch.from_numpy(store.tokens(r.query)).float(),  # [Lq, Dt]
                windows=[list(w) for w in r.relevant_windows],
                saliency=saliency_target(clip_feats.shape[0], clip_len, r.relevant_windows,
                                         r.relevant_clip_ids, r.saliency_scores),
            ))
    return samples
