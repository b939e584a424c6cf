"""Readers for the feature layouts published with Moment-DETR / QD-DETR and MESM.

Users who already hold the released QVHighlights (or Charades) features can train and evaluate the
fine stage on them without extracting anything: this module turns them into `MomentSample`s.

Layouts (one *source* per backbone; several video sources are concatenated along D):

* npz folder (Moment-DETR / QD-DETR): ``<dir>/<vid>.npz`` holding ``features`` [L, D], one row per
  clip (2 s on QVHighlights: ``clip_features/`` CLIP 512-d, ``slowfast_features/`` 2304-d);
  text ``<dir>/qid<qid>.npz`` holding ``last_hidden_state`` [Lq, Dt] (CLIP token states after the
  final LayerNorm, before projection).
* HDF5 file (MESM, ``data/npy2hdf5.py``): one file per backbone whose top-level datasets are named by
  the npz stems they were converted from, i.e. ``<vid>`` -> [L, D] (and ``qid<qid>`` -> [Lq, Dt] for a
  converted text folder). A group of that name holding the key (``features`` / ``last_hidden_state``)
  is read as well.

Like the originals, each video source is L2-normalised per clip *before* concatenation, the
sources are cut to the shortest length (CLIP and SlowFast can differ by a clip), and token
features are L2-normalised per token. Normalisation is optional; lengths are optionally capped
(max_v_l = 75 / max_q_l = 32 on QVHighlights). TEF columns are the model's business, not added here.

Missing files are not fatal: the query is skipped and reported. A file that exists but has the
wrong key or shape is an error naming the file, because it means the layout is not what it claims.
"""
from __future__ import annotations

import warnings
import zipfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from c2f_lib.data.schema import read_moments
from c2f_lib.errors import MissingFileError, UserError
from c2f_lib.features.store_bundles import saliency_target
from c2f_lib.features.types import MomentSample

H5_SUFFIXES = (".h5", ".hdf5")


class ReleasedFeatureError(UserError, ValueError):
    """A released feature file that exists but does not have the layout it should."""


class MissingFeature(KeyError):
    """No features for this name in the source (the query is skipped, not fatal)."""


@dataclass
class ReleasedConfig:
    clip_len: float = 2.0                 # seconds per feature row (2 on QVHighlights, 1 for QD-DETR Charades)
    normalize_video: bool = True          # L2 per clip and per source, before concatenation
    normalize_text: bool = True           # L2 per token
    max_clips: int | None = None          # truncate videos to this many clips (Moment-DETR max_v_l)
    max_query_tokens: int | None = None   # truncate queries to this many tokens (max_q_l)
    video_key: str = "features"
    text_key: str = "last_hidden_state"
    text_name: str = "qid{qid}"           # file stem / dataset name of a query's text features


class FeatureSource:
    """One backbone's features: an npz folder or an HDF5 file. `read(name)` -> float32 [rows, D]."""

    def __init__(self, path: str | Path, key: str, stack: ExitStack):
        self.path, self.key = Path(path), key
        self._h5: h5py.File | None = None
        if self.path.is_dir():
            return
        if not self.path.exists():
            raise MissingFileError("feature folder / HDF5 file not found", self.path)
        if self.path.suffix.lower() not in H5_SUFFIXES:
            raise ReleasedFeatureError("expected a folder of .npz files or an "
                                       f"HDF5 file ({', '.join(H5_SUFFIXES)})", self.path)
        try:
            self._h5 = stack.enter_context(h5py.File(self.path, "r"))
        except OSError as err:
            raise ReleasedFeatureError(f"not a readable HDF5 file ({err})", self.path) from None

    def where(self, name: str) -> str:
        return f"{self.path}[{name!r}]" if self._h5 is not None else str(self.path / f"{name}.npz")

    def read(self, name: str) -> np.ndarray:
        array = self._read_h5(name) if self._h5 is not None else self._read_npz(name)
        if array.ndim != 2:
            hint = " (a pooled sentence vector? the fine stage needs per-token features)" if array.ndim == 1 else ""
            raise ReleasedFeatureError("expected a 2-D [rows, dim] array, "
                                       f"got shape {array.shape}{hint}", self.where(name))
        if array.shape[0] == 0:
            raise ReleasedFeatureError("holds no rows", self.where(name))
        return array.astype(np.float32)

    def _read_npz(self, name: str) -> np.ndarray:
        path = self.path / f"{name}.npz"
        if not path.is_file():
            raise MissingFeature(f"{path}: file not found")
        try:
            with np.load(path, allow_pickle=False) as npz:
                if self.key not in npz.files:
                    raise ReleasedFeatureError(f"no key {self.key!r} (keys: {sorted(npz.files)})", path)
                return npz[self.key]
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            if isinstance(err, ReleasedFeatureError):
                raise
            raise ReleasedFeatureError(f"not a readable npz file ({err})", path) from None

    def _read_h5(self, name: str) -> np.ndarray:
        assert self._h5 is not None
        if name not in self._h5:
            raise MissingFeature(f"{self.path}: no dataset {name!r}")
        node = self._h5[name]
        if isinstance(node, h5py.Group):
            if self.key not in node:
                raise ReleasedFeatureError(f"group without key {self.key!r} "
                                           f"(keys: {sorted(node)})", self.where(name))
            node = node[self.key]
        try:
            return node[()]
        except OSError as err:
            raise ReleasedFeatureError(f"unreadable ({err})", self.where(name)) from None


def _l2(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)  # rows of zeros stay zero


def video_features(sources: Sequence[FeatureSource], vid: str, cfg: ReleasedConfig) -> torch.Tensor:
    """[L, sum of D] features of one video: per-source truncate, normalise, cut to the shortest, concat."""
    parts = []
    for source in sources:
        part = torch.from_numpy(source.read(vid)[:cfg.max_clips])  # [L_s, D_s]
        parts.append(_l2(part) if cfg.normalize_video else part)
    length = min(p.shape[0] for p in parts)
    return torch.cat([p[:length] for p in parts], dim=1)  # [L, D]


def text_features(source: FeatureSource, qid: str | int, cfg: ReleasedConfig) -> torch.Tensor:
    tokens = torch.from_numpy(source.read(cfg.text_name.format(qid=qid))[:cfg.max_query_tokens])  # [Lq, Dt]
    return _l2(tokens) if cfg.normalize_text else tokens


def _check_dim(what: str, where: str, tensor: torch.Tensor, seen: dict[str, tuple[int, str]]) -> None:
    dim = tensor.shape[1]
    first = seen.setdefault(what, (dim, where))
    if first[0] != dim:
        raise ReleasedFeatureError(f"{what} dimension {dim} differs from {first[0]} in {first[1]}", where)


def load_released_moment_samples(moments_jsonl: str | Path, video_sources: Sequence[str | Path],
                                 text_source: str | Path, cfg: ReleasedConfig | None = None
                                 ) -> tuple[list[MomentSample], list[str | int]]:
    """MomentSamples for every query of `moments_jsonl` whose features exist; also the skipped qids.

    video_sources: npz folders and/or HDF5 files, concatenated in the given order (Moment-DETR
    passes [slowfast_features, clip_features]); text_source: an npz folder or HDF5 file.
    """
    cfg = cfg or ReleasedConfig()
    if not video_sources:
        raise ValueError("load_released_moment_samples: give at least one video feature source")
    records = read_moments(moments_jsonl)
    samples: list[MomentSample] = []
    skipped: dict[str | int, str] = {}
    dims: dict[str, tuple[int, str]] = {}
    with ExitStack() as stack:
        videos = [FeatureSource(p, cfg.video_key, stack) for p in video_sources]
        texts = FeatureSource(text_source, cfg.text_key, stack)
        cache: dict[str, torch.Tensor | str] = {}  # vid -> features, or why they are missing
        for r in records:
            if r.vid not in cache:
                try:
                    cache[r.vid] = video_features(videos, r.vid, cfg)
                    _check_dim("video", videos[0].where(r.vid), cache[r.vid], dims)
                except MissingFeature as err:
                    cache[r.vid] = err.args[0]
            clip_feats = cache[r.vid]
            if isinstance(clip_feats, str):
                skipped[r.qid] = clip_feats
                continue
            try:
                token_feats = text_features(texts, r.qid, cfg)
            except MissingFeature as err:
                skipped[r.qid] = err.args[0]
                continue
            _check_dim("token", texts.where(cfg.text_name.format(qid=r.qid)), token_feats, dims)
            samples.append(MomentSample(
                qid=r.qid, query=r.query, vid=r.vid, duration=r.duration, clip_len=cfg.clip_len,
                clip_feats=clip_feats, token_feats=token_feats,
                windows=[list(w) for w in r.relevant_windows],
                saliency=saliency_target(clip_feats.shape[0], cfg.clip_len, r.relevant_windows,
                                         r.relevant_clip_ids, r.saliency_scores),
            ))
    if skipped:
        first = next(iter(skipped.items()))
        warnings.warn(f"{moments_jsonl}: skipped {len(skipped)} of {len(records)} queries without features "
                      f"(first: qid {first[0]}: {first[1]})")
    return samples, list(skipped)
