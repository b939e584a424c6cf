"""Feature bundles from a store: the CoarseSplit and MomentSample lists models and training take."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch

from c2f_lib.data.schema import read_captions, read_moments
from c2f_lib.features.store import FeatureStore, StoreError, failures_path, read_failures
from c2f_lib.features.types import CoarseSplit, MomentSample

# QVHighlights saliency_scores are 0..4 per annotator; targets are scaled to [0, 1].
SALIENCY_SCALE = 4.0


def _usable_videos(store: FeatureStore, vids: list[str], annotation: Path) -> set[str]:
    """Videos present in the store; ones the extractor reported as broken are skipped with a warning."""
    missing = [v for v in dict.fromkeys(vids) if not store.has_video(v)]
    if not missing:
        return set(vids)
    failed = read_failures(store.path)
    unexplained = [v for v in missing if v not in failed]
    if unexplained:
        raise StoreError(f"{len(unexplained)} video(s) of {annotation} are not in the store "
                         f"(first: {unexplained[:3]}); extract features for this split first", store.path)
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
            raise StoreError(f"videos hold different numbers of frames {sorted(counts)}", store.path)
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


def add_moment_queries(split: CoarseSplit, store_path: str | Path, moments_jsonl: str | Path) -> CoarseSplit:
    """The split with every moment sentence of its videos added as one more text of its video.

    Coarse-to-fine search hands the coarse retriever moment sentences, which name one event of a video;
    training on them beside the whole-video captions teaches the retriever the query it will be given
    (the train split only; evaluation keeps the captions)."""
    index = {vid: i for i, vid in enumerate(split.video_ids)}
    moments = [m for m in read_moments(moments_jsonl, labelled=False) if m.vid in index]
    if not moments:
        return split
    with FeatureStore(store_path) as store:
        emb = [store.sentence(m.query) for m in moments]
    return CoarseSplit(
        video_ids=split.video_ids, frames=split.frames, texts=split.texts + [m.query for m in moments],
        text_emb=torch.cat([split.text_emb, torch.from_numpy(np.stack(emb)).float()]),
        text_to_video=torch.cat([split.text_to_video, torch.tensor([index[m.vid] for m in moments])]))


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
