"""End-to-end (CLIP fine-tuned) coarse retrieval on raw videos: what the papers' X-Pool / T-MASS runs need.

The trainer's end-to-end mode (`training.coarse.FrameSplit` + `EndToEndRetriever`) takes frames and token
ids instead of cached features. On a real benchmark the frames cannot sit in memory (MSR-VTT: 10k videos x
12 x 3 x 224 x 224 floats = 72 GB), so this module gives it

* `VideoFrames`: a split's videos as a lazy [V, F, 3, S, S] tensor: indexing decodes only the videos asked
  for (decode.sample_video: the N uniform "middle" frames the feature store samples too) and preprocesses
  them exactly as the frozen extractor does (`Backbone.preprocess`: bicubic short-side resize, centre crop,
  CLIP mean/std). Decoding stays on the CPU; callers move each chunk to the model's device.
* `ClipFrameEncoder` / `ClipTextEncoder`: the image and text towers of one open_clip model, trainable.
* `load_clip`: the pretrained model by backbone spec ("ViT-B-32:openai" downloads once, as `c2f features`;
  `TEST_BACKBONE` is a random tiny model for tests, never downloaded).
* `load_frame_split`: captions file + video folder -> FrameSplit.
* `train_or_load_end_to_end`: train, or reuse the checkpoint made with the same settings and data.

Differences from the papers, on purpose: training frames are the same uniform middle frames as evaluation
(X-Pool samples one random frame per segment in training), and no augmentation.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from c2f_lib.data.schema import read_captions
from c2f_lib.errors import MissingFileError, UserError
from c2f_lib.features.backbones import Backbone, BackboneError
from c2f_lib.features.decode import sample_video
from c2f_lib.features.extract import VIDEO_EXTENSIONS, find_video
from c2f_lib.training.coarse import CoarseTrainConfig, EndToEndRetriever, FrameSplit
from c2f_lib.utils import atomic_path, provenance, resolve_device

TEST_BACKBONE = "test:tiny"          # features/testing.py tiny_open_clip(): random weights, no download
CHECKPOINT_KIND = "end_to_end"       # the "model" entry of our checkpoints (not a registry name)
_ONE_CLIP = 1e9                      # clip_len for sample_video: one clip window, so it decodes ~1 extra frame


class VideoFolderError(MissingFileError):
    """The recipe's video folder is not there."""


class MissingVideoError(MissingFileError):
    """Videos of a split have no file in the video folder."""


# ------------------------------------------------------------------------------------------------
# Lazy frames


class _FrameCache:
    """LRU of decoded uint8 frames by path (shared by a split and its subsets). The decoder's output is
    cached, not the normalised floats: ~4x smaller, and preprocessing it again is exact and cheap."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, key: str) -> np.ndarray | None:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        return None

    def put(self, key: str, frames: np.ndarray) -> None:
        if self.capacity <= 0:
            return
        self._items[key] = frames
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)


class VideoFrames:
    """[V, F, 3, S, S] float frames of V video files, decoded on demand.

    Indexing is a tensor's: `frames[i]` -> [F, 3, S, S]; `frames[a:b]`, `frames[LongTensor]` -> [B, F, 3, S, S]
    (each distinct video decoded once, `decode_threads` at a time). `.to(device)` returns the object itself,
    so code written for tensors keeps working without decoding everything.
    """

    device = "cpu"               # what Backbone.preprocess works on: decoding stays on the CPU
    dtype = torch.float32
    preprocess = Backbone.preprocess   # the frozen extractor's resize / crop / normalise, the same code

    def __init__(self, paths: Sequence[str | Path], num_frames: int, image_size: int,
                 mean: Sequence[float], std: Sequence[float], backend: str = "auto",
                 decode_threads: int = 1, cache_videos: int = 0, cache: _FrameCache | None = None):
        self.paths = [Path(p) for p in paths]
        self.num_frames, self.image_size = int(num_frames), int(image_size)
        self.mean, self.std = tuple(float(x) for x in mean), tuple(float(x) for x in std)
        self.backend, self.decode_threads = backend, max(1, int(decode_threads))
        self.cache = cache if cache is not None else _FrameCache(cache_videos)
        self.decoded = 0         # videos decoded by this object (cache hits excluded)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), self.num_frames, 3, self.image_size, self.image_size))

    def to(self, *args: Any, **kwargs: Any) -> "VideoFrames":
        return self

    def settings(self) -> dict[str, Any]:
        """What the frames depend on besides the files (part of a checkpoint's fingerprint)."""
        return {"num_frames": self.num_frames, "image_size": self.image_size, "mean": self.mean, "std": self.std}

    def subset(self, index: torch.Tensor | Sequence[int]) -> "VideoFrames":
        """The lazy frames of the videos at `index` (sharing this object's cache); nothing is decoded."""
        rows = torch.as_tensor(index, dtype=torch.long).tolist()
        return VideoFrames([self.paths[i] for i in rows], self.num_frames, self.image_size, self.mean, self.std,
                           self.backend, self.decode_threads, cache=self.cache)

    def __getitem__(self, index: int | slice | torch.Tensor | Sequence[int]) -> torch.Tensor:
        if isinstance(index, (int, np.integer)) or (torch.is_tensor(index) and index.ndim == 0):
            return self._videos([int(index)])[0]
        if torch.is_tensor(index) and index.dtype == torch.bool:     # would read as rows 0 / 1 below
            raise TypeError("VideoFrames takes integer indices or slices, not a boolean mask")
        rows = list(range(len(self)))[index] if isinstance(index, slice) else \
            torch.as_tensor(index, dtype=torch.long).flatten().tolist()
        return self._videos(rows)

    def _videos(self, rows: list[int]) -> torch.Tensor:
        paths = [self.paths[r] for r in rows]                      # IndexError past the end, as a tensor
        todo = [p for p in dict.fromkeys(paths) if self.cache.get(str(p)) is None]
        decoded = dict(zip(todo, self._decode_all(todo)))
        for path, frames in decoded.items():
            self.cache.put(str(path), frames)
        if not paths:
            return torch.zeros(0, *self.shape[1:])
        ready = {p: decoded[p] if p in decoded else self.cache.get(str(p)) for p in dict.fromkeys(paths)}
        pixels = {p: self.preprocess(frames) for p, frames in ready.items()}     # [F, 3, S, S] each
        return torch.stack([pixels[p] for p in paths])                          # [B, F, 3, S, S]

    def _decode_all(self, paths: list[Path]) -> list[np.ndarray]:
        self.decoded += len(paths)
        if self.decode_threads == 1 or len(paths) < 2:
            return [self._decode(p) for p in paths]
        with ThreadPoolExecutor(min(self.decode_threads, len(paths))) as pool:   # decoders release the GIL
            return list(pool.map(self._decode, paths))

    def _decode(self, path: Path) -> np.ndarray:
        """uint8 [F, H, W, 3], short side already at the image size (as the extractor decodes)."""
        return sample_video(path, self.num_frames, clip_len=_ONE_CLIP, backend=self.backend,
                            short_side=self.image_size).frames


# ------------------------------------------------------------------------------------------------
# CLIP towers


class ClipFrameEncoder(nn.Module):
    """frames [B, F, 3, S, S] -> [B, F, D]: open_clip's `encode_image` on every frame. Holds the image tower
    only (`encode_image` is `visual(x)`), so the text weights are not saved twice in a checkpoint."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.visual = clip_model.visual

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        B, F = frames.shape[:2]
        return self.visual(frames.flatten(0, 1)).reshape(B, F, -1)


class ClipTextEncoder(nn.Module):
    """token ids [B, L] -> [B, D]: open_clip's `encode_text` (EOT feature, projected). Holds the text tower's
    modules only and runs the model class's own `encode_text` on them, so pooling and casting stay open_clip's."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        if not hasattr(clip_model, "token_embedding"):
            raise BackboneError(f"{type(clip_model).__name__}: end-to-end training needs open_clip's standard "
                                "CLIP class (token_embedding, transformer, ln_final)")
        for name in ("token_embedding", "transformer", "ln_final", "positional_embedding", "text_projection"):
            setattr(self, name, getattr(clip_model, name))
        self.register_buffer("attn_mask", clip_model.attn_mask, persistent=False)
        self.text_pool_type = getattr(clip_model, "text_pool_type", "argmax")
        self.text_eos_id = getattr(clip_model, "text_eos_id", None)
        self._encode_text = type(clip_model).encode_text

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._encode_text(self, tokens)


@dataclass
class ClipSource:
    """A pretrained open_clip model, kept pristine: every model trained from it gets its own copy."""

    spec: str
    model: nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]     # texts -> [T, context_length] long
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    embed_dim: int

    def towers(self) -> tuple[ClipFrameEncoder, ClipTextEncoder]:
        model = copy.deepcopy(self.model).requires_grad_(True).train()
        return ClipFrameEncoder(model), ClipTextEncoder(model)


def load_clip(spec: str) -> ClipSource:
    """The open_clip model of a backbone spec, on the CPU (the trainer moves it). Real specs go through
    `c2f features`' loader (downloads once, clear error offline); TEST_BACKBONE is a random tiny model."""
    from c2f_lib.features.backbones import OpenClipBackbone

    if spec == TEST_BACKBONE:
        from c2f_lib.features.testing import tiny_open_clip

        backbone = tiny_open_clip()
    else:
        from c2f_lib.features.backbone_specs import load_backbone

        backbone = load_backbone(spec)
    if not isinstance(backbone, OpenClipBackbone):
        raise BackboneError(f"end-to-end training needs an open_clip backbone (e.g. ViT-B-32:openai), not {spec!r}")
    return ClipSource(spec, backbone.model, backbone.tokenizer, backbone.image_size, tuple(backbone.mean),
                      tuple(backbone.std), backbone.embed_dim)


# ------------------------------------------------------------------------------------------------
# Splits


def load_frame_split(captions_jsonl: str | Path, video_dir: str | Path, tokenizer: Callable[[list[str]], torch.Tensor],
                     num_frames: int, image_size: int, mean: Sequence[float], std: Sequence[float],
                     **video_options: Any) -> FrameSplit:
    """Every video of a captions file (lazy frames from `video_dir/<vid>.<ext>`) and its tokenised captions.
    `video_options`: VideoFrames' backend, decode_threads, cache_videos. Every file is checked up front."""
    video_dir = Path(video_dir)
    if not video_dir.is_dir():
        raise VideoFolderError("video folder not found (features.video_dir, relative to --features-root)",
                               str(video_dir))
    records = read_captions(captions_jsonl)
    paths, missing = [], []
    for record in records:
        try:
            paths.append(find_video(video_dir, record.vid))
        except UserError:
            missing.append(record.vid)
    if missing:
        raise MissingVideoError(f"{len(missing)} of {len(records)} videos of {Path(captions_jsonl).name} have no "
                                f"file here (first: {missing[0]}{'|'.join(VIDEO_EXTENSIONS)})", str(video_dir))
    texts = [caption for record in records for caption in record.captions]
    text_to_video = [i for i, record in enumerate(records) for _ in record.captions]
    tokens = tokenizer(texts).long() if texts else torch.zeros(0, 1, dtype=torch.long)   # [T, L]
    frames = VideoFrames(paths, num_frames, image_size, mean, std, **video_options)
    return FrameSplit([r.vid for r in records], frames, texts, tokens, torch.tensor(text_to_video, dtype=torch.long))


# ------------------------------------------------------------------------------------------------
# Models and checkpoints


def build_end_to_end(method: str, head_config: Any, clip: ClipSource, encode_batch_size: int = 64
                     ) -> EndToEndRetriever:
    """A registered coarse head (xpool, tmass, ...) on fresh trainable copies of the CLIP towers."""
    from c2f_lib.models.registry import build_model

    frames, text = clip.towers()
    return EndToEndRetriever(frames, text, build_model(method, asdict(head_config)), encode_batch_size)


def save_end_to_end(path: str | Path, model: EndToEndRetriever, method: str, head_config: Any, spec: str,
                    extra: dict[str, Any]) -> None:
    payload = {"model": CHECKPOINT_KIND, "head": method, "config": asdict(head_config), "backbone": spec,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "extra": extra}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def train_or_load_end_to_end(method: str, head_config: Any, clip: ClipSource, train: FrameSplit, val: FrameSplit,
                             cfg: CoarseTrainConfig, path: str | Path, encode_batch_size: int = 64
                             ) -> tuple[EndToEndRetriever, dict[str, Any]]:
    """`train_or_load_coarse` for an EndToEndRetriever: reuse `path` if made with these settings and data,
    else train (resumable state in `path` without its suffix) and write it. Returns (model in eval mode on
    cfg.device, the checkpoint's extra)."""
    from c2f_lib.distributed import rank_and_world
    from c2f_lib.models.registry import claim_work_dir, content_digest, fingerprint, load_if_reusable
    from c2f_lib.training.coarse import split_features, train_coarse

    path = Path(path)
    made_from = fingerprint(CHECKPOINT_KIND, method, asdict(head_config), clip.spec, asdict(cfg),
                            train.video_ids, val.video_ids, train.texts, val.texts,
                            content_digest(split_features(train), split_features(val)))  # lazy frames: their settings
    model = build_end_to_end(method, head_config, clip, encode_batch_size)
    loaded = load_if_reusable(path, made_from, into=model)
    extra = None if loaded is None else loaded[1]
    if extra is None:
        work_dir = claim_work_dir(path.with_suffix(""), made_from, fresh=path.exists())
        result = train_coarse(model, train, val, cfg, work_dir)
        extra = {"epoch": result.best_epoch, "val_metrics": result.best_metrics, "history": result.history,
                 "train_config": asdict(cfg), "made_from": made_from, "backbone": clip.spec,
                 "provenance": provenance(asdict(cfg), cfg.seed)}
        if rank_and_world()[0] == 0:
            save_end_to_end(path, model, method, head_config, clip.spec, extra)
    return model.to(resolve_device(cfg.device)).eval(), extra
