"""Tiny CLIP: the embedded default backbone ("tinyclip"), a tiny *video*-text CLIP trained in a minute.

Released QVHighlights / Charades features pair a motion network (SlowFast, trained on action labels)
with CLIP, whose text and image embeddings meet in one space. Offline we train both halves at once:

* a **clip encoder**, a small CNN over the K frames of a 2-s clip and their differences (motion is in
  its input, so "moves left" and "moves right" differ), -> [D];
* a **text encoder**, open_clip's text transformer over CLIP's bundled BPE tokens, -> [D] sentence
  embedding (projected EOT state) and per-token states (what QD-DETR / MESM attend over).

Training uses the train split only, three signals:
1. multi-positive InfoNCE between each event sentence and a clip inside its window, against clips of
   other videos *and* a clip of the same video outside the window (in-video negatives: only what
   happens tells them apart, not who is there);
2. attribute heads on the clip side: which values of the annotated fields (SynthMoments: the action;
   the actor's colour and shape) the events covering the clip have, multi-label; the stand-in for SlowFast's
   action-label pretraining, which is what lets the features generalise to unseen videos and to the
   held-out compositions of test_cg (sentence-only training memorises 300 videos);
3. the same fields predicted from the sentence embedding, so that the text side keeps colour and shape
   and not only the action words the in-video negatives reward.
(Whole-video captions against their video's clips, MIL-NCE style, were tried and not kept: grounding AUC
fell from 78 to 65 on val for +2 points of zero-shot caption retrieval.)
Fields a dataset's annotations lack are skipped (then only 1 is trained).

The trained weights are cached in DEFAULT_CACHE_DIR under a hash of (training data, config, this
file), which is the backbone's `weights`, so a store made with one tiny CLIP never mixes with another's.
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
from torch import nn

from c2f_lib.data.schema import read_moments
from c2f_lib.errors import MissingFileError
from c2f_lib.features.backbones import Backbone, BackboneError
from c2f_lib.features.decode import sample_video
from c2f_lib.paths import DEFAULT_CACHE_DIR
from c2f_lib.progress import progress
from c2f_lib.utils import atomic_path, provenance

# MomentQuery.meta fields the attribute heads predict, in groups: one clip head per group (what happens;
# who does it), weighted alike, so the appearance fields together weigh as much as the action.
LABEL_GROUPS = (("action",), ("colour", "shape"))
LABEL_FIELDS = tuple(f for group in LABEL_GROUPS for f in group)


@dataclass
class TinyClipConfig:
    """Architecture and training of the tiny video-text CLIP."""

    embed_dim: int = 128           # D, the joint space (64 -> 128: val grounding AUC 78 -> 82, moment -> video R@1 10 -> 12)
    image_size: int = 64
    frames_per_clip: int = 4       # K frames per clip seen by the clip encoder (4 are as good as 8)
    clip_len: float = 2.0          # seconds per training clip (the fine stage's clip)
    width: int = 96                # clip-encoder channels (64 -> 96 doubled corpus R@1 of moment queries)
    text_width: int = 64
    text_layers: int = 2
    context_length: int = 32       # the longest SynthMoments captions run to ~30 tokens
    steps: int = 300
    batch_size: int = 48           # sentences per step, each with one inside and one in-video outside clip
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 30
    logit_scale: float = 20.0      # fixed InfoNCE temperature (1/0.05)
    attribute_weight: float = 1.0  # weight of the attribute heads (signals 2 and 3)
    seed: int = 0
    labels: dict = field(default_factory=dict)  # field -> its values in train; filled by training

    def __post_init__(self) -> None:
        if self.frames_per_clip < 2:
            raise ValueError(f"the tiny video CLIP needs frames_per_clip >= 2 to see motion, got {self.frames_per_clip}")


class ClipEncoder(nn.Module):
    """K normalised frames of a clip -> [D]: a 4-layer CNN over frames ++ frame differences."""

    def __init__(self, cfg: TinyClipConfig):
        super().__init__()
        k, w = cfg.frames_per_clip, cfg.width
        self.net = nn.Sequential(                                   # 64 px -> 8 x 8
            nn.Conv2d(3 * k + 3 * (k - 1), w // 2, 3, 2, 1), nn.GELU(),
            nn.Conv2d(w // 2, w, 3, 2, 1), nn.GroupNorm(8, w), nn.GELU(),
            nn.Conv2d(w, w, 3, 2, 1), nn.GroupNorm(8, w), nn.GELU(),
            nn.Conv2d(w, w, 3, 1, 1), nn.GroupNorm(8, w), nn.GELU())
        self.proj = nn.Linear(2 * w, cfg.embed_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, K, 3, S, S] -> [B, D]."""
        motion = (pixels[:, 1:] - pixels[:, :-1]) * 2                   # [B, K-1, 3, S, S]: changes are small
        h = self.net(torch.cat([pixels.flatten(1, 2), motion.flatten(1, 2)], 1))   # [B, w, s, s]
        return self.proj(torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1))          # mean and max over space


class TinyVideoClip(nn.Module):
    def __init__(self, cfg: TinyClipConfig):
        super().__init__()
        from open_clip.transformer import TextTransformer

        self.cfg = cfg
        self.clip_encoder = ClipEncoder(cfg)
        self.text = TextTransformer(context_length=cfg.context_length, vocab_size=49408, width=cfg.text_width,
                                    heads=max(1, cfg.text_width // 32), layers=cfg.text_layers,
                                    output_dim=cfg.embed_dim, output_tokens=True)
        groups = [[f for f in group if f in cfg.labels] for group in LABEL_GROUPS]
        self.groups = [group for group in groups if group]
        self.clip_heads = nn.ModuleList(nn.Linear(cfg.embed_dim, sum(len(cfg.labels[f]) for f in group))
                                        for group in self.groups)
        self.text_heads = nn.ModuleDict({f: nn.Linear(cfg.embed_dim, len(values)) for f, values in cfg.labels.items()})

    def encode_text(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [T, C] -> (sentence [T, D], token states [T, C, Dt])."""
        return self.text(tokens)


def tokenizer(cfg: TinyClipConfig):
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=cfg.context_length)


# ----------------------------------------------------------------------------- training data
@dataclass
class TrainingClips:
    """Every clip of the train videos and which train queries cover it."""

    clips: np.ndarray               # [N, K, S, S, 3] uint8, all clips of all train videos
    video_of_clip: np.ndarray       # [N] video index
    queries: list[str]              # Q sentences
    inside: list[np.ndarray]        # per query: rows of `clips` inside its window
    outside: list[np.ndarray]       # per query: rows of its video's clips outside its window
    covering: list[list[int]]       # per clip: the queries whose window covers it
    labels: dict[str, list[int]]    # field -> per query, the index of its value (-1: not annotated)


def _covered_clips(window: list[float], n_clips: int, clip_len: float) -> list[int]:
    """Clips overlapping the window by at least half a clip (or by the whole window, when shorter)."""
    start, end = window
    need = min(clip_len / 2, end - start) - 1e-6
    return [c for c in range(n_clips) if min(end, (c + 1) * clip_len) - max(start, c * clip_len) >= need]


def build_training_clips(dataset_dir: str | Path, cfg: TinyClipConfig) -> tuple[TrainingClips, dict]:
    """Decode the train split's clips; -> (clips, {field: values}) with the label vocabulary."""
    dataset_dir = Path(dataset_dir)
    moments = [m for m in read_moments(dataset_dir / "moments_train.jsonl") if m.relevant_windows]
    vocab = {f: sorted({str(m.meta[f]) for m in moments if f in (m.meta or {})}) for f in LABEL_FIELDS}
    vocab = {f: values for f, values in vocab.items() if len(values) > 1}
    by_vid: dict[str, list[int]] = {}
    for q, m in enumerate(moments):
        by_vid.setdefault(m.vid, []).append(q)
    clips, owner, first_row, n_clips = [], [], {}, {}
    for v, vid in enumerate(progress(sorted(by_vid), desc="tiny CLIP: decoding train clips", unit="video")):
        video = sample_video(dataset_dir / "videos" / f"{vid}.mp4", num_frames=1, clip_len=cfg.clip_len,
                             frames_per_clip=cfg.frames_per_clip, short_side=cfg.image_size)
        first_row[vid], n_clips[vid] = len(owner), len(video.clip_frames)
        clips.append(video.clip_frames)                             # [L, K, H, W, 3]
        owner.extend([v] * len(video.clip_frames))
    covering: list[list[int]] = [[] for _ in owner]
    inside, outside = [], []
    for q, m in enumerate(moments):
        first, count = first_row[m.vid], n_clips[m.vid]
        rows = sorted({first + c for w in m.relevant_windows for c in _covered_clips(w, count, cfg.clip_len)})
        for row in rows:
            covering[row].append(q)
        inside.append(np.asarray(rows, dtype=np.int64))
        outside.append(np.asarray([first + c for c in range(count) if first + c not in rows], dtype=np.int64))
    labels = {f: [values.index(str(m.meta[f])) if f in (m.meta or {}) else -1 for m in moments]
              for f, values in vocab.items()}
    data = TrainingClips(clips=np.concatenate(clips), video_of_clip=np.asarray(owner), queries=[m.query for m in moments],
                         inside=inside, outside=outside, covering=covering, labels=labels)
    return data, vocab


def _sample_batch(data: TrainingClips, cfg: TinyClipConfig, rng: np.random.Generator
                  ) -> tuple[list[int], np.ndarray, torch.Tensor]:
    """(queries, clip rows, positives [B, C]): distinct sentences, each with one clip inside its window
    and one clip of its video outside it; a clip is a positive of every sentence that covers it."""
    usable = [q for q in range(len(data.queries)) if len(data.inside[q])]
    queries, seen = [], set()
    for q in rng.permutation(usable):
        if data.queries[q] not in seen:
            queries.append(int(q))
            seen.add(data.queries[q])
        if len(queries) == cfg.batch_size:
            break
    rows = []
    for q in queries:
        rows.append(int(rng.choice(data.inside[q])))
        if len(data.outside[q]):
            rows.append(int(rng.choice(data.outside[q])))
    texts = [data.queries[q] for q in queries]
    positive = torch.tensor([[any(data.queries[c] == text for c in data.covering[r]) for r in rows] for text in texts])
    return queries, np.asarray(rows), positive


def _multi_positive_nce(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where a row may have several positives: -log sum_pos softmax, both directions."""
    def one_way(scores: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        keep = pos.any(1)
        nll = torch.logsumexp(scores, 1) - torch.logsumexp(scores.masked_fill(~pos, float("-inf")), 1)
        return nll[keep].mean()
    return (one_way(logits, positive) + one_way(logits.T, positive.T)) / 2


def _attribute_loss(model: TinyVideoClip, clip_emb: torch.Tensor, text_emb: torch.Tensor, data: TrainingClips,
                    queries: list[int], rows: np.ndarray) -> torch.Tensor:
    """Multi-label BCE of the clip heads (per group: the values of every query covering the clip) plus
    the mean CE of the text heads (per field: the sentence's value)."""
    loss = clip_emb.new_zeros(())
    for head, group in zip(model.clip_heads, model.groups):
        target = torch.zeros(len(rows), head.out_features)                    # [C, values of the group]
        offset = 0
        for name in group:
            for i, row in enumerate(rows):
                for q in data.covering[row]:
                    if data.labels[name][q] >= 0:
                        target[i, offset + data.labels[name][q]] = 1.0
            offset += len(model.cfg.labels[name])
        loss = loss + F.binary_cross_entropy_with_logits(head(clip_emb), target.to(clip_emb.device))
    for name, head in model.text_heads.items():
        wanted = torch.tensor([data.labels[name][q] for q in queries], device=text_emb.device)
        loss = loss + F.cross_entropy(head(text_emb), wanted, ignore_index=-1) / len(model.text_heads)
    return loss


def train_tiny_clip(dataset_dir: str | Path, cfg: TinyClipConfig, device: str = "cpu"
                    ) -> tuple[TinyVideoClip, dict]:
    """Train from scratch on the train split; returns the model and a log {'loss': [...], 'seconds', ...}."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    data, vocab = build_training_clips(dataset_dir, cfg)
    cfg = TinyClipConfig(**{**asdict(cfg), "labels": vocab})
    model = TinyVideoClip(cfg).to(device).train()
    backbone = TinyClipBackbone(model, device=device)
    tokenize = tokenizer(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup_cosine = lambda s: min(1.0, (s + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * s / cfg.steps))  # noqa: E731
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)
    losses, nces, start = [], [], time.perf_counter()
    for _ in progress(range(cfg.steps), desc="tiny CLIP: training", unit="step"):
        queries, rows, positive = _sample_batch(data, cfg, rng)
        clip_emb = model.clip_encoder(backbone.preprocess_clips(data.clips[rows]))            # [C, D]
        text_emb, _ = model.encode_text(tokenize([data.queries[q] for q in queries]).to(device))  # [B, D]
        logits = cfg.logit_scale * F.normalize(text_emb, dim=-1) @ F.normalize(clip_emb, dim=-1).T  # [B, C]
        loss = nce = _multi_positive_nce(logits, positive.to(device))
        if data.labels and cfg.attribute_weight > 0:
            loss = loss + cfg.attribute_weight * _attribute_loss(model, clip_emb, text_emb, data, queries, rows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        nces.append(nce.item())
    model.eval().requires_grad_(False)
    return model, {"loss": losses, "nce": nces, "seconds": time.perf_counter() - start, "queries": len(data.queries),
                   "clips": int(len(data.clips)), "labels": {f: len(v) for f, v in vocab.items()}}


# ----------------------------------------------------------------------------- the backbone
class TinyClipBackbone(Backbone):
    """The Backbone interface over a TinyVideoClip. It encodes clips natively (`encode_clips`); a single
    frame is encoded as a clip that does not move. Its coarse "frames" are clip embeddings
    (`clip_level`): the coarse stage then sees motion too."""

    clip_level = True

    def __init__(self, model: TinyVideoClip, device: str = "cpu", weights: str = "untrained"):
        cfg = model.cfg
        self.model, self.cfg = model.to(device), cfg
        self.name, self.weights = "tinyclip", weights
        self.image_size, self.embed_dim, self.token_dim = cfg.image_size, cfg.embed_dim, cfg.text_width
        self.vocab_size, self.device, self.dtype = 49408, device, torch.float32
        self.mean, self.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)   # pixels in [-1, 1]
        self.tokenizer = tokenizer(cfg)
        self.frames_per_clip = cfg.frames_per_clip
        self.training_log: dict = {}

    def preprocess_clips(self, clip_frames: np.ndarray) -> torch.Tensor:
        """uint8 [L, K, H, W, 3] -> normalised [L, K, 3, S, S]."""
        L, K = clip_frames.shape[:2]
        return self.preprocess(clip_frames.reshape(L * K, *clip_frames.shape[2:])).view(L, K, 3, *([self.image_size] * 2))

    @torch.no_grad()
    def encode_clips(self, clip_frames: np.ndarray, batch_size: int = 64) -> torch.Tensor:
        if clip_frames.shape[1] != self.frames_per_clip:
            raise BackboneError(f"tinyclip was trained on clips of {self.frames_per_clip} frames, "
                                f"got {clip_frames.shape[1]}: extract with --frames-per-clip {self.frames_per_clip}")
        out = [self.model.clip_encoder(self.preprocess_clips(clip_frames[i:i + batch_size]))
               for i in range(0, len(clip_frames), batch_size)]
        return torch.cat(out).float().cpu() if out else torch.zeros(0, self.embed_dim)   # [L, D]

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        still = pixels[:, None].expand(-1, self.frames_per_clip, -1, -1, -1)              # [N, K, 3, S, S]
        return self.model.clip_encoder(still)

    def _text_features(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(texts).to(self.device)                                      # [T, C], 0 = padding
        sentence, hidden = self.model.encode_text(tokens)                                   # [T, D], [T, C, Dt]
        mask = tokens != 0
        longest = int(mask.sum(1).max())
        return hidden[:, :longest], sentence, mask[:, :longest], tokens[:, :longest]


# ----------------------------------------------------------------------------- cache
def training_data_hash(dataset_dir: str | Path) -> str:
    """Hash of the train annotations: the generated videos are a function of them and the generator."""
    dataset_dir = Path(dataset_dir)
    path = dataset_dir / "moments_train.jsonl"
    if not path.exists():
        raise MissingFileError("tiny CLIP trains on the train split; generate the dataset first", path)
    digest = hashlib.sha256(path.read_bytes())
    meta = dataset_dir / "meta.json"
    if meta.exists():  # SynthMoments records its generator fingerprint here
        digest.update(str(json.loads(meta.read_text()).get("fingerprint", "")).encode())
    return digest.hexdigest()


def cache_key(dataset_dir: str | Path, cfg: TinyClipConfig) -> str:
    payload = json.dumps({"data": training_data_hash(dataset_dir), "cfg": asdict(cfg),
                          "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def checkpoint_path(dataset_dir: str | Path, cfg: TinyClipConfig, cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or DEFAULT_CACHE_DIR) / f"tinyclip-{cache_key(dataset_dir, cfg)}.pt"


def save_tiny_clip(path: str | Path, model: TinyVideoClip, log: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "config": asdict(model.cfg), "log": log,
                    "provenance": provenance(asdict(model.cfg), model.cfg.seed)}, tmp)


def load_tiny_clip(dataset_dir: str | Path | None = None, cfg: TinyClipConfig | None = None,
                   device: str = "cpu", cache_dir: str | Path | None = None,
                   checkpoint: str | Path | None = None) -> TinyClipBackbone:
    """The tiny CLIP for `dataset_dir`: loaded from the cache, else trained and cached (atomic save).

    `checkpoint` loads a given file instead (e.g. the copy a run keeps in its features/ folder).
    """
    if checkpoint is None:
        if dataset_dir is None:
            raise ValueError("tinyclip needs the dataset it is trained on (dataset_dir) or a checkpoint file")
        checkpoint = checkpoint_path(dataset_dir, cfg or TinyClipConfig(), cache_dir)
        if not checkpoint.exists():
            model, log = train_tiny_clip(dataset_dir, cfg or TinyClipConfig(), device)
            save_tiny_clip(checkpoint, model, log)
    checkpoint = Path(checkpoint)
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model = TinyVideoClip(TinyClipConfig(**saved["config"]))
        model.load_state_dict(saved["state_dict"])
    except Exception as err:
        raise BackboneError(f"not a usable tiny CLIP checkpoint ({err}); delete it to retrain", checkpoint) from None
    backbone = TinyClipBackbone(model.eval().requires_grad_(False), device=device, weights=checkpoint.stem)
    backbone.training_log = saved.get("log", {})
    return backbone
