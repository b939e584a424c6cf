"""The HDF5 feature store: one file per dataset x backbone, read by every later stage.

Layout (all arrays fp16 except indices)::

    /                        attrs: format, meta (json of StoreMeta)
    /videos/<q(vid)>/frames         [N, D]  N uniform frames (middle of N equal segments)
    /videos/<q(vid)>/frame_indices  [N]     decoded frame index of each row of `frames`
    /videos/<q(vid)>/clips          [L, D]  one feature per clip_len seconds, clip i = [i*c, (i+1)*c)
    /videos/<q(vid)>/motion         [L, M]  optional: the clip's motion descriptor (meta.motion names it)
    /videos/<q(vid)>                attrs: vid, duration, fps, source, complete
                                    (q = percent-escaping, so ids may hold '/')
    /text_table                     attrs: rows (rows committed; rows past it are a cut-off append)
    /text_table/key         [T]     sha1(text) hex, the text's id (a text written twice: last row wins)
    /text_table/text        [T]     the text itself
    /text_table/parts       [T]     bit 1: has a sentence row, bit 2: has tokens, bit 4: has token ids
    /text_table/sentence    [T, D]  sentence embedding (CLIP's projected EOT feature)
    /text_table/token_span  [T, 2]  [start, stop) rows of the text's tokens in `tokens`
    /text_table/tokens      [sum Lq, Dt] per-token features (last hidden states, padding removed)
    /text_table/token_ids   [sum Lq] int32, optional: the tokenizer's id of each row of `tokens`
                                    (meta.vocab_size entries; MESM's masked-word targets). Stores
                                    written before ids existed lack it and load with ids None.

Format 1 stored each text as a group (/texts/<sha1(text)>/{sentence, tokens}, attrs text,
complete); creating HDF5 objects per text cost milliseconds each, so format 2 appends texts to one
table in batches. Format-1 stores stay readable; a writer that resumes one marks it format 2.

Writes never touch the finished store in place: `FeatureStoreWriter` appends to
``<store>.partial`` (a copy of the store, if one exists) and moves it over the store with
``os.replace`` on `close()`. An interrupted run leaves the old store intact and a partial file
that the next run resumes from; video groups are marked ``complete`` and the text table's ``rows``
grows only after their data is written, so anything cut off mid-write is discarded on resume.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import h5py
import numpy as np
import torch

from c2f_lib.data.schema import read_captions, read_moments
from c2f_lib.features.motion import append_motion
from c2f_lib.features.types import CoarseSplit, MomentSample

FORMAT = "c2f-feature-store/2"
READABLE_FORMATS = ("c2f-feature-store/1", FORMAT)
TEXT_TABLE = "text_table"
SENTENCE_PART, TOKENS_PART, TOKEN_IDS_PART = 1, 2, 4
# Rows per HDF5 chunk: one chunk read serves one text without pulling in much more.
TEXT_CHUNK_ROWS, TOKEN_CHUNK_ROWS = 64, 256
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
    vocab_size: int = 0              # tokenizer vocabulary the stored token ids index (0 = not fixed)
    motion: str = ""                 # motion descriptor stored beside the clips ("" = none), its config tag
    motion_dim: int = 0              # M of the motion descriptor

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
        """Fields that differ, as 'name: stored != requested' (dims and vocab_size of 0 mean 'not fixed')."""
        problems = []
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if (f.name.endswith("_dim") or f.name == "vocab_size") and 0 in (mine, theirs):
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
    if fmt not in READABLE_FORMATS:
        raise StoreError(f"{path}: not a c2f feature store this code reads (format attribute {fmt!r}, "
                         f"expected one of {READABLE_FORMATS})")
    return StoreMeta.from_json(handle.attrs["meta"], path)


def _complete_names(group: h5py.Group | None) -> set[str]:
    if group is None:
        return set()
    return {name for name, item in group.items() if item.attrs.get("complete", False)}


@dataclass
class _TextRows:
    """The committed rows of the text table, held in memory: sha1 key -> row, parts and spans."""

    rows: dict[str, int]
    parts: np.ndarray        # [T] uint8 bit mask (SENTENCE_PART | TOKENS_PART)
    spans: np.ndarray        # [T, 2] int64 [start, stop) in /text_table/tokens

    @classmethod
    def read(cls, handle: h5py.File) -> "_TextRows":
        table = handle.get(TEXT_TABLE)
        if table is None:
            return cls({}, np.zeros(0, np.uint8), np.zeros((0, 2), np.int64))
        n = int(table.attrs.get("rows", 0))
        keys = table["key"][:n]
        return cls({key.decode(): i for i, key in enumerate(keys)}, table["parts"][:n], table["token_span"][:n])

    def read_item(self, handle: h5py.File, key: str, item: str) -> np.ndarray | None:
        """`item` ("sentence" | "tokens" | "token_ids") of a text in the table; None when it has no such part."""
        row = self.rows[key]
        table = handle[TEXT_TABLE]
        if item == "sentence" and self.parts[row] & SENTENCE_PART:
            return table["sentence"][row]
        part = {"tokens": TOKENS_PART, "token_ids": TOKEN_IDS_PART}.get(item, 0)
        if self.parts[row] & part:
            start, stop = self.spans[row]
            return table[item][start:stop]
        return None


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
            self._texts = _complete_names(self._h5.get("texts"))  # format-1 groups
            self._table = _TextRows.read(self._h5)
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
        key = text_key(text)
        return key in self._table.rows or key in self._texts

    def _array(self, kind: str, name: str, item: str) -> np.ndarray:
        if kind == "text" and text_key(name) in self._table.rows:
            try:
                value = self._table.read_item(self._h5, text_key(name), item)
            except OSError as err:
                raise StoreError(f"{self.path}: {TEXT_TABLE}/{item} is corrupt ({err})") from None
            if value is None:
                raise KeyError(f"{self.path}: text {name!r} has no '{item}' features")
            return value
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

    def motion(self, vid: str) -> np.ndarray:            # [L, M] fp16
        return self._array("video", vid, "motion")

    def grounding_clips(self, vid: str) -> torch.Tensor:
        """The fine stage's per-clip input [L, D (+ M)] float32: the clip embedding, followed by the
        motion descriptor when the store has one (as released features put SlowFast beside CLIP)."""
        return append_motion(torch.from_numpy(self.clips(vid)), self.motion(vid) if self.meta.motion else None)

    def video_attrs(self, vid: str) -> dict[str, Any]:
        if not self.has_video(vid):
            raise KeyError(f"{self.path}: no video {vid!r}")
        return dict(self._h5["videos"][video_key(vid)].attrs)

    def sentence(self, text: str) -> np.ndarray:         # [D] fp16
        return self._array("text", text, "sentence")

    def tokens(self, text: str) -> np.ndarray:           # [Lq, Dt] fp16
        return self._array("text", text, "tokens")

    def token_ids(self, text: str) -> np.ndarray | None:  # [Lq] int64, aligned with tokens(text)
        """The tokenizer ids of a text's token features; None when the store holds none for it."""
        if text_key(text) not in self._table.rows:
            if text_key(text) not in self._texts:
                raise KeyError(f"{self.path}: no text {text!r}")
            return None  # a format-1 text: that layout had no ids
        try:
            ids = self._table.read_item(self._h5, text_key(text), "token_ids")
        except OSError as err:
            raise StoreError(f"{self.path}: {TEXT_TABLE}/token_ids is corrupt ({err})") from None
        return None if ids is None else ids.astype(np.int64)


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
        self._texts = _complete_names(self._h5.get("texts"))  # format-1 groups
        table = _TextRows.read(self._h5)
        self._texts |= set(table.rows)
        self._texts_with_ids = {key for key, row in table.rows.items() if table.parts[row] & TOKEN_IDS_PART}
        self._drop_uncommitted_rows()

    def _open_partial(self) -> h5py.File:
        if self.partial.exists():
            try:
                handle = _open_h5(self.partial, "a")
                self._check_meta(handle, self.partial)
                handle.attrs["meta"] = self.meta.to_json()  # fields a resumed run fixes (vocab_size)
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
        handle.attrs["format"] = FORMAT  # a format-1 store gains the text table
        handle.attrs["meta"] = self.meta.to_json()
        return handle

    def _drop_uncommitted_rows(self) -> None:
        """Cut the text table back to its committed rows (an interrupted append may have left more)."""
        table = self._h5.get(TEXT_TABLE)
        if table is None:
            return
        n = int(table.attrs["rows"])
        for name in ("key", "text", "parts", "token_span"):
            table[name].resize(n, axis=0)
        if "sentence" in table:
            table["sentence"].resize(min(n, table["sentence"].shape[0]), axis=0)
        token_rows = int(table["token_span"][n - 1, 1]) if n else 0
        if "tokens" in table:
            table["tokens"].resize(token_rows, axis=0)
        if "token_ids" in table:
            table["token_ids"].resize(min(token_rows, table["token_ids"].shape[0]), axis=0)

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

    def has_text(self, text: str, with_token_ids: bool = False) -> bool:
        """Whether the text is stored (`with_token_ids`: together with its token ids)."""
        return text_key(text) in (self._texts_with_ids if with_token_ids else self._texts)

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
                  motion: Any = None, clip_len: float | None = None, duration: float | None = None,
                  fps: float | None = None, source: str = "") -> None:
        """Store one video's frame features [N, D] (+ indices [N]) and/or clip features [L, D]
        (+ their motion descriptors [L, M], required exactly when the store's meta names a motion descriptor)."""
        if frames is None and clips is None:
            raise ValueError(f"put_video({vid!r}): give frames and/or clips")
        if clips is not None and (motion is None) != (not self.meta.motion):
            raise ValueError(f"put_video({vid!r}): this store's motion descriptor is {self.meta.motion or 'none'}, "
                             f"but motion features were {'not ' if motion is None else ''}given")
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
        if motion is not None:
            motion = _as_numpy(motion, 2, f"{vid} motion")
            if clips is None or motion.shape[0] != clips.shape[0]:
                raise ValueError(f"put_video({vid!r}): motion needs one row per clip")
            self._fix_dim("motion_dim", motion.shape[1])
            group.create_dataset("motion", data=motion.astype(np.float16))
        group.attrs["duration"] = float(duration) if duration is not None else float("nan")
        group.attrs["fps"] = float(fps) if fps is not None else float("nan")
        group.attrs["source"] = str(source)
        group.attrs["vid"] = vid
        group.attrs["complete"] = True
        self._videos.add(video_key(vid))

    def put_text(self, text: str, *, sentence: Any = None, tokens: Any = None, token_ids: Any = None) -> None:
        """Store one text's sentence embedding [D] and/or token features [Lq, Dt] (no padding),
        optionally with the tokenizer's ids of those tokens [Lq].

        Many texts: `put_texts`, which costs one table append instead of one per text.
        """
        if sentence is None and tokens is None:
            raise ValueError(f"put_text({text!r}): give sentence and/or tokens")
        sentences = None if sentence is None else _as_numpy(sentence, 1, f"sentence of {text!r}")[None]
        self.put_texts([text], sentences=sentences, tokens=None if tokens is None else [tokens],
                       token_ids=None if token_ids is None else [token_ids])

    def put_texts(self, texts: Sequence[str], *, sentences: Any = None, tokens: Sequence[Any] | None = None,
                  token_ids: Sequence[Any] | None = None) -> None:
        """Store many texts at once: sentence embeddings [T, D] and/or token features, one [Lq_i, Dt] each,
        and optionally each text's token ids [Lq_i] (aligned with its token features).

        The rows count as written only once all their data is in the file (the table's `rows`).
        """
        if not texts:
            return
        if sentences is None and tokens is None:
            raise ValueError(f"put_texts({texts[0]!r}, ...): give sentences and/or tokens")
        if sentences is not None:
            sentences = _as_numpy(sentences, 2, f"sentences of {texts[0]!r}, ...")
            if sentences.shape[0] != len(texts):
                raise ValueError(f"put_texts: {len(texts)} texts but {sentences.shape[0]} sentence rows")
            self._fix_dim("text_dim", sentences.shape[1])
        if tokens is not None:
            if len(tokens) != len(texts):
                raise ValueError(f"put_texts: {len(texts)} texts but {len(tokens)} token arrays")
            tokens = [_as_numpy(t, 2, f"tokens of {text!r}") for text, t in zip(texts, tokens)]
            for t in tokens:
                self._fix_dim("token_dim", t.shape[1])
        if token_ids is not None:
            token_ids = self._check_token_ids(texts, tokens, token_ids)
        self._append_texts(list(texts), sentences, tokens, token_ids)
        keys = {text_key(t) for t in texts}
        self._texts |= keys
        if token_ids is not None:
            self._texts_with_ids |= keys
        else:  # a rewrite without ids replaces the row that had them
            self._texts_with_ids -= keys

    def _check_token_ids(self, texts: Sequence[str], tokens: list[np.ndarray] | None,
                         token_ids: Sequence[Any]) -> list[np.ndarray]:
        """Token ids as int32 arrays, one per text, each as long as that text's token features."""
        if tokens is None or len(token_ids) != len(texts):
            raise ValueError(f"put_texts: token ids need token features, one id array per text "
                             f"({len(texts)} texts, {len(token_ids)} id arrays)")
        checked = []
        for text, feats, ids in zip(texts, tokens, token_ids):
            ids = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids)
            if ids.shape != (feats.shape[0],) or not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(f"token ids of {text!r}: expected {feats.shape[0]} integers, got "
                                 f"{ids.dtype} of shape {ids.shape}")
            vocab = self.meta.vocab_size
            if len(ids) and (ids.min() < 0 or (vocab and ids.max() >= vocab)):
                raise ValueError(f"token ids of {text!r}: outside [0, {vocab or 'inf'})")
            checked.append(ids.astype(np.int32))
        return checked

    def _append_texts(self, texts: list[str], sentences: np.ndarray | None,
                      tokens: list[np.ndarray] | None, token_ids: list[np.ndarray] | None) -> None:
        table = self._text_table()
        n, count = int(table.attrs["rows"]), len(texts)
        stop = n + count
        token_start = int(table["token_span"][n - 1, 1]) if n else 0
        lengths = np.array([t.shape[0] for t in tokens] if tokens is not None else [0] * count, dtype=np.int64)
        ends = token_start + np.cumsum(lengths)  # [T]
        parts = ((SENTENCE_PART if sentences is not None else 0) | (TOKENS_PART if tokens is not None else 0)
                 | (TOKEN_IDS_PART if token_ids is not None else 0))
        columns = {"key": np.array([text_key(t) for t in texts], dtype="S40"),
                   "text": np.array(texts, dtype=object),
                   "parts": np.full(count, parts, dtype=np.uint8),
                   "token_span": np.stack([ends - lengths, ends], axis=1)}
        for name, values in columns.items():
            table[name].resize(stop, axis=0)
            table[name][n:stop] = values
        if sentences is not None:
            column = self._column(table, "sentence", self.meta.text_dim, TEXT_CHUNK_ROWS, stop)
            column[n:stop] = sentences.astype(np.float16)  # numpy's fp16 cast is far faster than HDF5's
        if tokens is not None and int(lengths.sum()):
            column = self._column(table, "tokens", self.meta.token_dim, TOKEN_CHUNK_ROWS, int(ends[-1]))
            column[token_start:] = np.concatenate(tokens).astype(np.float16)
        if token_ids is not None and int(lengths.sum()):
            # Rows of texts stored without ids stay 0-filled; their parts bit says they have none.
            column = self._column(table, "token_ids", 0, TOKEN_CHUNK_ROWS, int(ends[-1]), np.int32)
            column[token_start:] = np.concatenate(token_ids)
        table.attrs["rows"] = stop  # commit: only now do the rows count as written

    def _text_table(self) -> h5py.Group:
        if TEXT_TABLE in self._h5:
            return self._h5[TEXT_TABLE]
        table = self._h5.create_group(TEXT_TABLE)
        for name, dtype, shape in (("key", "S40", ()), ("text", h5py.string_dtype(), ()),
                                   ("parts", np.uint8, ()), ("token_span", np.int64, (2,))):
            table.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                                 chunks=(1024, *shape))
        table.attrs["rows"] = 0
        return table

    @staticmethod
    def _column(table: h5py.Group, name: str, dim: int, chunk_rows: int, rows: int,
                dtype: type = np.float16) -> h5py.Dataset:
        """The [rows, dim] dataset `name` ([rows] when dim is 0), created (zero-filled) or grown to `rows` rows."""
        if name not in table:
            row = (dim,) if dim else ()
            table.create_dataset(name, shape=(0, *row), maxshape=(None, *row), dtype=dtype,
                                 chunks=(chunk_rows, *row), fillvalue=0)
        column = table[name]
        column.resize(rows, axis=0)
        return column

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


def load_moment_samples(store_path: str | Path, moments_jsonl: str | Path,
                        labelled: bool = True) -> list[MomentSample]:
    """One MomentSample per query: its video's clip features and the query's token features.

    labelled=False loads a hidden test split too (no windows, all-zero saliency): for prediction only.
    """
    records = read_moments(moments_jsonl, labelled=labelled)
    samples = []
    with FeatureStore(store_path) as store:
        usable = _usable_videos(store, [r.vid for r in records], Path(moments_jsonl))
        clip_len = store.meta.clip_len
        clips_cache: dict[str, torch.Tensor] = {}
        for r in records:
            if r.vid not in usable:
                continue
            if r.vid not in clips_cache:
                clips_cache[r.vid] = store.grounding_clips(r.vid)
            clip_feats = clips_cache[r.vid]  # [L, Dv (+ M)]
            token_ids = store.token_ids(r.query)  # [Lq] or None (a store written without ids)
            samples.append(MomentSample(
                qid=r.qid, query=r.query, vid=r.vid, duration=r.duration, clip_len=clip_len,
                clip_feats=clip_feats,
                token_feats=torch.from_numpy(store.tokens(r.query)).float(),  # [Lq, Dt]
                windows=[list(w) for w in r.relevant_windows],
                saliency=saliency_target(clip_feats.shape[0], clip_len, r.relevant_windows,
                                         r.relevant_clip_ids, r.saliency_scores),
                token_ids=None if token_ids is None else torch.from_numpy(token_ids),
            ))
    return samples
