"""Write a feature store (see store.py for the layout): append videos and texts, resumable, atomic."""
from __future__ import annotations

import math
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from c2f_lib.features.store import (FORMAT, SENTENCE_PART, TEXT_CHUNK_ROWS, TEXT_TABLE, TOKEN_CHUNK_ROWS,
                                    TOKEN_IDS_PART, TOKENS_PART, StoreError, StoreMeta, TextRows, complete_names,
                                    file_stamp, open_h5, read_meta, source_stamp, text_key, video_key)


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
        self._videos = complete_names(self._h5.get("videos"))
        self._texts = complete_names(self._h5.get("texts"))  # format-1 groups
        table = TextRows.read(self._h5)
        self._texts |= set(table.rows)
        self._texts_with_ids = {key for key, row in table.rows.items() if table.parts[row] & TOKEN_IDS_PART}
        self._drop_uncommitted_rows()

    def _open_partial(self) -> h5py.File:
        if self.partial.exists():
            try:
                handle = open_h5(self.partial, "a")
                self._check_meta(handle, self.partial)
                handle.attrs["meta"] = self.meta.to_json()  # fields a resumed run fixes (vocab_size)
                return handle
            except StoreError as err:
                if "built with other settings" in str(err):
                    raise
                warnings.warn(f"discarding unusable partial store: {err}")
                self.partial.unlink()
        if self.path.exists():
            with open_h5(self.path, "r") as handle:
                self._check_meta(handle, self.path)
            shutil.copyfile(self.path, self.partial)
            handle = open_h5(self.partial, "a")
        else:
            handle = open_h5(self.partial, "w")
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
        stored = read_meta(handle, where)
        problems = stored.mismatches(self.meta)
        if problems:
            raise StoreError(f"built with other settings ({'; '.join(problems)}); "
                             f"use another output path or delete it", where)
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

    def source_stamp(self, vid: str) -> tuple[int, int] | None:
        """(size, mtime_ns) of the file `vid` was extracted from, as recorded (None: not recorded)."""
        return source_stamp(self._h5["videos"][video_key(vid)]) if self.has_video(vid) else None

    def drop_video(self, vid: str) -> None:
        """Forget a stored video (its file was replaced): the next extraction encodes it again."""
        if self.has_video(vid):
            del self._h5["videos"][video_key(vid)]
            self._videos.discard(video_key(vid))

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
        stamp = file_stamp(source) if source else None
        if stamp is not None:
            group.attrs["source_size"], group.attrs["source_mtime_ns"] = stamp
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
            raise ValueError("put_texts: token ids need token features, one id array per text "
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
