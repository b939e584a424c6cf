"""The HDF5 feature store: one file per dataset x backbone, read by every later stage.

Layout (all arrays fp16 except indices)::

    /                        attrs: format, meta (json of StoreMeta)
    /videos/<q(vid)>/frames         [N, D]  N uniform frames (middle of N equal segments)
    /videos/<q(vid)>/frame_indices  [N]     decoded frame index of each row of `frames`
    /videos/<q(vid)>/clips          [L, D]  one feature per clip_len seconds, clip i = [i*c, (i+1)*c)
    /videos/<q(vid)>/motion         [L, M]  optional: the clip's motion descriptor (meta.motion names it)
    /videos/<q(vid)>                attrs: vid, duration, fps, source, complete, and source_size +
                                    source_mtime_ns (the source file's, when it is one: `c2f index`
                                    re-extracts a video whose file changed)
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

This module holds the format and the reader (`FeatureStore`); `store_writer.py` writes stores and
`store_bundles.py` loads the CoarseSplit / MomentSample bundles models take.

Writes never touch the finished store in place: `FeatureStoreWriter` appends to
``<store>.partial`` (a copy of the store, if one exists) and moves it over the store with
``os.replace`` on `close()`. An interrupted run leaves the old store intact and a partial file
that the next run resumes from; video groups are marked ``complete`` and the text table's ``rows``
grows only after their data is written, so anything cut off mid-write is discarded on resume.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import h5py
import numpy as np
import torch

from c2f_lib.errors import MissingFileError, UserError
from c2f_lib.features.motion import append_motion

FORMAT = "c2f-feature-store/2"
READABLE_FORMATS = ("c2f-feature-store/1", FORMAT)
TEXT_TABLE = "text_table"
SENTENCE_PART, TOKENS_PART, TOKEN_IDS_PART = 1, 2, 4
# Rows per HDF5 chunk: one chunk read serves one text without pulling in much more.
TEXT_CHUNK_ROWS, TOKEN_CHUNK_ROWS = 64, 256


class StoreError(UserError, RuntimeError):
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
            raise StoreError(f"unreadable store metadata ({err})", where) from None

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


def file_stamp(path: str | Path) -> tuple[int, int] | None:
    """(size, mtime_ns) of a file, or None when `path` is not one: what says a video file was replaced."""
    try:
        stat = os.stat(path)
    except (OSError, ValueError):
        return None
    return (stat.st_size, stat.st_mtime_ns) if os.path.isfile(path) else None


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
        raise StoreError(f"unreadable failures list ({err})", path) from None


def open_h5(path: Path, mode: str) -> h5py.File:
    try:
        handle = h5py.File(path, mode)
    except OSError as err:
        if "lock" in str(err).lower():   # HDF5 file locking: another process has it open for writing
            raise StoreError("the store is open for writing in another process (a running `c2f features` or "
                             "`c2f index`); wait for it to finish", path) from None
        raise StoreError(f"not a readable HDF5 feature store ({err}); delete it to extract again", path) from None
    return handle


def read_meta(handle: h5py.File, path: Path) -> StoreMeta:
    fmt = handle.attrs.get("format")
    if fmt not in READABLE_FORMATS:
        raise StoreError(f"not a c2f feature store this code reads (format attribute {fmt!r}, "
                         f"expected one of {READABLE_FORMATS})", path)
    return StoreMeta.from_json(handle.attrs["meta"], path)


def complete_names(group: h5py.Group | None) -> set[str]:
    if group is None:
        return set()
    return {name for name, item in group.items() if item.attrs.get("complete", False)}


def source_stamp(group: h5py.Group) -> tuple[int, int] | None:
    """The recorded (size, mtime_ns) of a video group's source file, or None."""
    if "source_size" not in group.attrs:
        return None
    return int(group.attrs["source_size"]), int(group.attrs["source_mtime_ns"])


@dataclass
class TextRows:
    """The committed rows of the text table, held in memory: sha1 key -> row, parts and spans."""

    rows: dict[str, int]
    parts: np.ndarray        # [T] uint8 bit mask (SENTENCE_PART | TOKENS_PART)
    spans: np.ndarray        # [T, 2] int64 [start, stop) in /text_table/tokens

    @classmethod
    def read(cls, handle: h5py.File) -> "TextRows":
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
            raise MissingFileError("feature store not found (run `c2f features` first)", self.path)
        self._h5 = open_h5(self.path, "r")
        try:
            self.meta = read_meta(self._h5, self.path)
            if expect is not None:
                problems = self.meta.mismatches(expect)
                if problems:
                    raise StoreError(f"built with other settings ({'; '.join(problems)}); "
                                     f"use another --out or delete it", self.path)
            self._videos = complete_names(self._h5.get("videos"))
            self._texts = complete_names(self._h5.get("texts"))  # format-1 groups
            self._table = TextRows.read(self._h5)
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
                raise StoreError(f"{TEXT_TABLE}/{item} is corrupt ({err})", self.path) from None
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
            raise StoreError(f"{kind}s/{key}/{item} is corrupt ({err})", self.path) from None

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
            raise StoreError(f"{TEXT_TABLE}/token_ids is corrupt ({err})", self.path) from None
        return None if ids is None else ids.astype(np.int64)
