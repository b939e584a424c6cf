"""Tiny CLIP: the embedded default backbone ("tinyclip"), trained in seconds on SynthMoments.

An open_clip model config (model_configs/c2f-tinyclip.json: 64-px ViT, small text transformer,
open_clip's bundled BPE tokenizer, so it works offline) trained contrastively (CLIP's symmetric
InfoNCE) on frame-caption pairs from the train split only:
* a frame inside an event window paired with that event's query ("the red ball bounces"), and
* any frame of a video paired with one of its whole-video captions (a `coarse_fraction` of pairs).
Each batch holds distinct texts, so no positive pair is counted as a negative.

The trained weights are cached in DEFAULT_CACHE_DIR under a hash of (training data, config) and
reused by every later run; the hash is the backbone's `weights`, so a feature store made with
one tiny CLIP is never mixed with another's.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from c2f_lib.data.schema import read_captions, read_moments
from c2f_lib.features.backbones import BackboneError, OpenClipBackbone, quiet_open_clip
from c2f_lib.features.decode import open_video, uniform_indices
from c2f_lib.paths import DEFAULT_CACHE_DIR
from c2f_lib.progress import progress
from c2f_lib.utils import atomic_path, provenance

MODEL_NAME = "c2f-tinyclip"
CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"


def register_config() -> None:
    """Make 'c2f-tinyclip' known to open_clip (create_model / get_tokenizer)."""
    import open_clip

    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


@dataclass
class TinyClipConfig:
    """Architecture (overrides of c2f-tinyclip.json) and training of the tiny CLIP."""

    embed_dim: int = 64
    image_size: int = 64
    patch_size: int = 8            # objects are a few pixels wide: 16-px patches blur them away
    vision_width: int = 64
    vision_layers: int = 2
    text_width: int = 64
    text_layers: int = 2
    context_length: int = 32       # the longest SynthMoments captions run to ~30 tokens
    steps: int = 800
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 20
    frames_per_video: int = 16     # frames decoded per training video (uniform over its length)
    coarse_fraction: float = 0.25  # share of whole-video captions among the training pairs
    seed: int = 0
    extra: dict = field(default_factory=dict)  # free-form notes that should change the cache key

    def model_cfg(self) -> dict:
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {"image_size": self.image_size, "patch_size": self.patch_size,
                           "width": self.vision_width, "head_width": 32, "layers": self.vision_layers},
            "text_cfg": {"context_length": self.context_length, "vocab_size": 49408,
                         "width": self.text_width, "heads": max(1, self.text_width // 32),
                         "layers": self.text_layers},
        }


def build_model(cfg: TinyClipConfig) -> torch.nn.Module:
    import open_clip

    register_config()
    model_cfg = cfg.model_cfg()
    with quiet_open_clip():  # the weights are loaded or trained next
        return open_clip.create_model(MODEL_NAME, pretrained=None, embed_dim=model_cfg["embed_dim"],
                                      vision_cfg=model_cfg["vision_cfg"], text_cfg=model_cfg["text_cfg"])


def training_data_hash(dataset_dir: str | Path) -> str:
    """Hash of the train annotations: the generated videos are a function of them and the generator."""
    dataset_dir = Path(dataset_dir)
    digest = hashlib.sha256()
    for name in ("moments_train.jsonl", "captions_train.jsonl"):
        path = dataset_dir / name
        if not path.exists():
            raise FileNotFoundError(f"{path}: tiny CLIP trains on the train split; generate the dataset first")
        digest.update(path.read_bytes())
    meta = dataset_dir / "meta.json"
    if meta.exists():  # SynthMoments records its generator fingerprint here
        digest.update(str(json.loads(meta.read_text()).get("fingerprint", "")).encode())
    return digest.hexdigest()


def cache_key(dataset_dir: str | Path, cfg: TinyClipConfig) -> str:
    payload = json.dumps({"data": training_data_hash(dataset_dir), "cfg": asdict(cfg)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class PairPool:
    """Decoded training frames and the texts that describe them."""

    frames: np.ndarray              # [P, S, S, 3] uint8, all decoded frames
    texts: list[str]                # distinct texts
    text_frames: list[np.ndarray]   # per text: indices into `frames` it may be paired with
    is_coarse: np.ndarray           # [len(texts)] bool, whole-video caption


def build_pair_pool(dataset_dir: str | Path, cfg: TinyClipConfig) -> PairPool:
    dataset_dir = Path(dataset_dir)
    moments = read_moments(dataset_dir / "moments_train.jsonl")
    captions = read_captions(dataset_dir / "captions_train.jsonl")
    by_text: dict[str, set[int]] = {}
    coarse: set[str] = set()
    frames, times, owner = [], [], []
    vids = sorted({r.vid for r in moments} | {r.vid for r in captions})
    first_row: dict[str, int] = {}
    for vid in progress(vids, desc="tiny CLIP: decoding train frames", unit="video"):
        reader = open_video(dataset_dir / "videos" / f"{vid}.mp4", short_side=cfg.image_size)
        picks = uniform_indices(len(reader.timestamps), cfg.frames_per_video)
        decoded, actual = reader.get(np.unique(picks))
        first_row[vid] = len(owner)
        frames.append(decoded)
        times.extend(reader.timestamps[actual])
        owner.extend([vid] * len(actual))
    times_arr, owner_arr = np.asarray(times), np.asarray(owner)
    for r in moments:
        rows = set()
        for start, end in r.relevant_windows:
            inside = np.flatnonzero((owner_arr == r.vid) & (times_arr >= start) & (times_arr < end))
            rows.update(inside.tolist())
        if rows:
            by_text.setdefault(r.query, set()).update(rows)
    for r in captions:
        rows = set(np.flatnonzero(owner_arr == r.vid).tolist())
        for caption in r.captions:
            by_text.setdefault(caption, set()).update(rows)
            coarse.add(caption)
    texts = sorted(by_text)
    return PairPool(frames=np.concatenate(frames), texts=texts,
                    text_frames=[np.fromiter(sorted(by_text[t]), dtype=np.int64) for t in texts],
                    is_coarse=np.array([t in coarse for t in texts]))


def _sample_batch(pool: PairPool, cfg: TinyClipConfig, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Distinct texts (a coarse_fraction of them whole-video captions), one random frame each."""
    coarse_ids, fine_ids = np.flatnonzero(pool.is_coarse), np.flatnonzero(~pool.is_coarse)
    n_coarse = min(len(coarse_ids), round(cfg.batch_size * cfg.coarse_fraction)) if len(fine_ids) else \
        min(len(coarse_ids), cfg.batch_size)
    n_fine = min(len(fine_ids), cfg.batch_size - n_coarse)
    ids = np.concatenate([rng.choice(coarse_ids, n_coarse, replace=False),
                          rng.choice(fine_ids, n_fine, replace=False)])
    rows = np.array([rng.choice(pool.text_frames[i]) for i in ids])
    return pool.frames[rows], [pool.texts[i] for i in ids]


def train_tiny_clip(dataset_dir: str | Path, cfg: TinyClipConfig, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Train from scratch; returns the model and a log {'loss': [...], 'seconds', 'pairs'}."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    pool = build_pair_pool(dataset_dir, cfg)
    model = build_model(cfg).to(device)
    wrapper = OpenClipBackbone(MODEL_NAME, None, device=device, model=model, name="tinyclip")  # sets eval
    # The 49408-row token table is most of the parameters but a batch touches a few hundred rows:
    # sparse gradients and SparseAdam make a step several times cheaper than dense AdamW.
    model.token_embedding.sparse = True
    named = [(n, p) for n, p in model.named_parameters() if n != "token_embedding.weight"]
    decay = [p for n, p in named if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and "embedding" not in n)]
    optims = [torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr),
              torch.optim.SparseAdam([model.token_embedding.weight], lr=cfg.lr)]
    warmup_cosine = lambda s: (min(1.0, (s + 1) / max(1, cfg.warmup_steps))  # noqa: E731
                               * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps))))
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, warmup_cosine) for o in optims]
    model.train().requires_grad_(True)
    losses, start = [], time.perf_counter()
    for _ in progress(range(cfg.steps), desc="tiny CLIP: training", unit="step"):
        images, texts = _sample_batch(pool, cfg, rng)
        pixels = wrapper.preprocess(images)                             # [B, 3, S, S]
        img = F.normalize(model.encode_image(pixels), dim=-1)           # [B, D]
        txt = F.normalize(model.encode_text(wrapper.tokenizer(texts).to(device)), dim=-1)  # [B, D]
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T   # [B, B]
        target = torch.arange(len(texts), device=device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        for optim in optims:
            optim.zero_grad(set_to_none=True)
        loss.backward()
        for optim, schedule in zip(optims, schedules):
            optim.step()
            schedule.step()
        losses.append(loss.item())
    model.token_embedding.sparse = False
    model.eval().requires_grad_(False)
    return model, {"loss": losses, "seconds": time.perf_counter() - start,
                   "pairs": int(sum(len(f) for f in pool.text_frames)), "texts": len(pool.texts)}


def checkpoint_path(dataset_dir: str | Path, cfg: TinyClipConfig, cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or DEFAULT_CACHE_DIR) / f"tinyclip-{cache_key(dataset_dir, cfg)}.pt"


def load_tiny_clip(dataset_dir: str | Path | None = None, cfg: TinyClipConfig | None = None,
                   device: str = "cpu", cache_dir: str | Path | None = None,
                   checkpoint: str | Path | None = None) -> OpenClipBackbone:
    """The tiny CLIP for `dataset_dir`: loaded from the cache, else trained and cached (atomic save).

    `checkpoint` loads a given file instead (e.g. one copied from another machine).
    """
    if checkpoint is None:
        if dataset_dir is None:
            raise ValueError("tinyclip needs the dataset it is trained on (dataset_dir) or a checkpoint file")
        cfg = cfg or TinyClipConfig()
        checkpoint = checkpoint_path(dataset_dir, cfg, cache_dir)
        if not checkpoint.exists():
            model, log = train_tiny_clip(dataset_dir, cfg, device)
            with atomic_path(checkpoint) as tmp:
                torch.save({"state_dict": model.state_dict(), "config": asdict(cfg), "log": log,
                            "provenance": provenance(asdict(cfg), cfg.seed)}, tmp)
    checkpoint = Path(checkpoint)
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        cfg = TinyClipConfig(**saved["config"])
        model = build_model(cfg)
        model.load_state_dict(saved["state_dict"])
    except Exception as err:
        raise BackboneError(f"{checkpoint}: not a usable tiny CLIP checkpoint ({err}); delete it to retrain") from None
    backbone = OpenClipBackbone(MODEL_NAME, None, device=device, model=model, name="tinyclip")
    backbone.weights = checkpoint.stem
    backbone.training_log = saved.get("log", {})
    return backbone
