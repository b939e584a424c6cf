"""Training loop for coarse text -> video retrievers (mean-pool, X-Pool, T-MASS, TextDiff, ...).

Works for any model with
    training_loss(text, frames, generator=None, video_ids=None) -> (loss, logs: dict[str, float])
    score(text, frames, chunk_size=..., generator=None, gallery_text=None) -> [T, V]
Two input modes:
* cached features (default): a `CoarseSplit` (text_emb [T, D], frames [V, F, D]); backbone frozen.
* end-to-end: `FrameSplit` (token ids, decoded frames) and an `EndToEndRetriever` wrapping a frame
  encoder, a text encoder and a head; their parameters get `clip_lr` (papers' setting).

Recipe (spec coarse §1.6): AdamW with two learning-rate groups, decoupled weight decay on all
parameters, warmup + cosine per step, grad-norm clip, logit scale clamped to <= ln 100 after
every step. Differences from the reference, on purpose: the checkpoint is selected on the
VALIDATION split (the reference selects on test), several captions of one video in a batch are
not negatives of each other.

Data parallel: under `torchrun`, each global batch (`batch_size`) is split across ranks and the
models gather embeddings (c2f_lib.distributed), so W processes reproduce the
single-process run up to float rounding (dropout masks aside). Every rank evaluates (identical
models => identical selection); rank 0 writes files.

Determinism: the batch order of epoch e, the noise of step s and the global RNG (dropout) at the
start of each epoch are all derived from `seed`, so a run resumed from `last.pt` at an epoch
boundary continues exactly as the uninterrupted run.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from c2f_lib.evaluation.retrieval import PROTOCOLS, retrieval_metrics, score_split, text_inputs
from c2f_lib.features.types import CoarseSplit
from c2f_lib.models.registry import save_model
from c2f_lib.models.xpool import LOGIT_SCALE_MAX, eval_mode
from c2f_lib.progress import progress
from c2f_lib.distributed import is_distributed, local_slice, mean_over_ranks, rank_and_world
from c2f_lib.amp import Precision, check_amp
from c2f_lib.training.schedule import make_optimizer, make_scheduler
from c2f_lib.utils import atomic_path, model_device, provenance, resolve_device


@dataclass
class CoarseTrainConfig:
    epochs: int = 5
    batch_size: int = 32            # global batch (split across ranks under DDP)
    lr: float = 1e-5                # retrieval head (pooling, stochastic / diffusion modules)
    clip_lr: float = 1e-6           # backbone parameters (end-to-end mode only)
    weight_decay: float = 0.2
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    logit_scale_max: float = LOGIT_SCALE_MAX
    eval_every: int = 1             # epochs between validation evaluations (and at the last epoch)
    select_metric: str = "t2v_R@1"  # validation metric that picks the best checkpoint (higher is better)
    eval_chunk_size: int = 16
    eval_protocol: str = "correct"
    seed: int = 24
    device: str = "cpu"
    amp: bool | str = False         # True: fp16 + GradScaler on CUDA only; "auto": also bf16 on CPU (c2f_lib/amp.py)
    show_progress: bool = True

    def __post_init__(self) -> None:
        check_amp(self.amp)


@dataclass
class TrainResult:
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]]
    best_path: Path
    last_path: Path
    resumed_from_epoch: int | None = None


# ------------------------------------------------------------------------------------------------
# End-to-end inputs


@dataclass
class FrameSplit:
    """Raw inputs for end-to-end training: tokenised captions and decoded, normalised frames."""

    video_ids: list[str]
    frames: torch.Tensor            # [V, F, 3, H, W] float, or lazy (training.end_to_end.VideoFrames)
    texts: list[str]
    text_tokens: torch.Tensor       # [T, L] long token ids
    text_to_video: torch.Tensor     # [T] long


Split = Union[CoarseSplit, FrameSplit]


class EndToEndRetriever(nn.Module):
    """A coarse head on top of trainable encoders.

    `backbone` maps frames [B, F, 3, H, W] -> [B, F, D]; `text_encoder` maps token ids [B, L] -> [B, D]
    (e.g. the image / text towers of CLIP); `head` is any coarse model (XPool, TMASS, ...).
    """

    def __init__(self, backbone: nn.Module, text_encoder: nn.Module, head: nn.Module,
                 encode_batch_size: int = 64):
        super().__init__()
        self.backbone, self.text_encoder, self.head = backbone, text_encoder, head
        self.encode_batch_size = encode_batch_size

    def training_loss(self, text_tokens: torch.Tensor, frames: torch.Tensor,
                      generator: torch.Generator | None = None,
                      video_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        return self.head.training_loss(self.text_encoder(text_tokens), self.backbone(frames),
                                       generator=generator, video_ids=video_ids)

    forward = training_loss

    def _encode(self, encoder: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        # chunk by chunk onto the model's device: `inputs` may be lazy frames (training.end_to_end.VideoFrames)
        # that decode each slice on the CPU, never the whole gallery at once
        device = model_device(self)
        return torch.cat([encoder(inputs[i:i + self.encode_batch_size].to(device))
                          for i in range(0, len(inputs), self.encode_batch_size)])

    def score(self, text_tokens: torch.Tensor, frames: torch.Tensor, chunk_size: int = 16,
              generator: torch.Generator | None = None,
              gallery_text: torch.Tensor | None = None) -> torch.Tensor:
        with eval_mode(self):
            text, video = self._encode(self.text_encoder, text_tokens), self._encode(self.backbone, frames)
            gallery = None if gallery_text is None else self._encode(self.text_encoder, gallery_text)
            return self.head.score(text, video, chunk_size=chunk_size, generator=generator,
                                   gallery_text=gallery)


class _LossModule(nn.Module):
    """Routes DistributedDataParallel's forward to `training_loss`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any):
        return self.model.training_loss(*args, **kwargs)


# ------------------------------------------------------------------------------------------------
# The loop


def evaluate_split(model: nn.Module, split: Split, cfg: CoarseTrainConfig,
                   protocol: str | None = None) -> dict[str, float]:
    """Validation / test metrics of `model` on a split, with a seeded scorer."""
    sims = score_split(model, split, protocol or cfg.eval_protocol, cfg.eval_chunk_size,
                       torch.Generator().manual_seed(cfg.seed))
    return retrieval_metrics(sims, split.text_to_video)


def _save_weights(path: Path, model: nn.Module, extra: dict[str, Any]) -> None:
    if getattr(model, "registry_name", None):
        save_model(path, model, extra)
    else:  # e.g. an EndToEndRetriever: plain state dict
        with atomic_path(path) as tmp:
            torch.save({"state_dict": model.state_dict(), "extra": extra}, tmp)


def train_coarse(model: nn.Module, train: Split, val: Split, cfg: CoarseTrainConfig,
                 ckpt_dir: str | Path) -> TrainResult:
    """Train `model` in place; on return it holds the weights of the best validation epoch.

    Writes `<ckpt_dir>/best.pt` (registry format) and `<ckpt_dir>/last.pt` (full training state);
    an existing `last.pt` is resumed (a finished run is not retrained).
    """
    if cfg.eval_protocol not in PROTOCOLS:
        raise ValueError(f"unknown eval_protocol {cfg.eval_protocol!r}")
    ckpt_dir = Path(ckpt_dir)
    best_path, last_path = ckpt_dir / "best.pt", ckpt_dir / "last.pt"
    rank, world = rank_and_world()
    device = torch.device(resolve_device(cfg.device))
    model.to(device)

    texts, frames, text_to_video = text_inputs(train), train.frames, train.text_to_video
    n_pairs = len(text_to_video)
    if n_pairs < max(2, world):
        raise ValueError(f"training split has {n_pairs} captions; need at least {max(2, world)}")
    steps_per_epoch = math.ceil(n_pairs / cfg.batch_size)
    optimizer = make_optimizer(model, cfg.lr, cfg.clip_lr, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, steps_per_epoch * cfg.epochs, cfg.warmup_ratio)
    precision = Precision.of(cfg.amp, device)
    scaler = precision.scaler()

    history: list[dict[str, float]] = []
    best = {"epoch": -1, "metrics": {}, "value": -math.inf}
    start_epoch, resumed = 0, None
    if last_path.exists():
        state = _load_state(last_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history, best = state["history"], state["best"]
        start_epoch = resumed = state["epoch"] + 1

    runner = model
    if is_distributed():
        runner = nn.parallel.DistributedDataParallel(
            _LossModule(model), device_ids=[device.index] if device.type == "cuda" else None)

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        torch.manual_seed(cfg.seed * 1000 + epoch)                  # dropout of this epoch
        order = torch.randperm(n_pairs, generator=torch.Generator().manual_seed(cfg.seed + epoch))
        losses = []
        batches = range(0, n_pairs, cfg.batch_size)
        if cfg.show_progress and rank == 0:
            batches = progress(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
        for b, start in enumerate(batches):
            index = order[start:start + cfg.batch_size]
            step = epoch * steps_per_epoch + b
            if len(index) < max(2, world):                          # a contrastive batch needs negatives
                scheduler.step()
                continue
            local = index[local_slice(len(index))]
            ids = text_to_video[local]
            noise = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            with precision.autocast():
                loss, logs = runner(texts[local].to(device), frames[ids].to(device),
                                    generator=noise, video_ids=ids.to(device))
            optimizer.zero_grad(set_to_none=True)
            precision.step(loss, optimizer, scaler, model.parameters(), cfg.grad_clip)
            scheduler.step()
            _clamp_logit_scale(model, cfg.logit_scale_max)
            losses.append(mean_over_ranks(logs["loss"]))

        record = {"epoch": epoch, "train_loss": sum(losses) / max(1, len(losses)),
                  "lr": scheduler.get_last_lr()[0]}
        if (epoch + 1) % cfg.eval_every == 0 or epoch == cfg.epochs - 1:
            metrics = evaluate_split(model, val, cfg)
            record.update({f"val_{k}": v for k, v in metrics.items()})
            value = metrics[cfg.select_metric]
            if value > best["value"]:
                best = {"epoch": epoch, "metrics": metrics, "value": value}
                if rank == 0:
                    _save_weights(best_path, model, {"epoch": epoch, "val_metrics": metrics,
                                                     "train_config": asdict(cfg),
                                                     "provenance": provenance(asdict(cfg), cfg.seed)})
        history.append(record)
        if rank == 0:
            with atomic_path(last_path) as tmp:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                            "epoch": epoch, "history": history, "best": best,
                            "train_config": asdict(cfg)}, tmp)
    if is_distributed():
        torch.distributed.barrier()
    if best["epoch"] >= 0:
        model.load_state_dict(_load_state(best_path)["state_dict"])
    return TrainResult(best["epoch"], best["metrics"], history, best_path, last_path, resumed)


def _load_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ValueError(f"{path}: unreadable training checkpoint ({err}); delete it to restart") from None


def _clamp_logit_scale(model: nn.Module, maximum: float) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("logit_scale"):
                param.clamp_(max=maximum)


def split_features(split: Split) -> list:
    """The tensors a split trains on (frames, text embeddings or tokens, caption -> video), for checkpoint
    fingerprints; lazily decoded frames stand in by their settings."""
    frames = split.frames if isinstance(split.frames, torch.Tensor) else getattr(split.frames, "settings", dict)()
    text = split.text_emb if isinstance(split, CoarseSplit) else split.text_tokens
    return [frames, text, split.text_to_video]


def train_or_load_coarse(method: str, model_config: Any, train: Split, val: Split,
                         cfg: CoarseTrainConfig, path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load the registered checkpoint at `path` if it exists, else train and write it there.

    Training state (resumable) lives in the folder `path` without its suffix. Returns the model
    (eval mode, on cfg.device) and the checkpoint's `extra` (best epoch, validation metrics, history).
    """
    from c2f_lib.models.registry import (build_model, claim_work_dir, content_digest, fingerprint, load_if_reusable,
                                         load_model)

    path = Path(path)
    made_from = fingerprint(method, asdict(model_config), asdict(cfg), train.video_ids, val.video_ids,
                            train.texts, val.texts,      # other captions (e.g. regenerated) retrain
                            content_digest(split_features(train), split_features(val)))   # so do other features
    loaded = load_if_reusable(path, made_from)
    if loaded is None:
        model = build_model(method, asdict(model_config))
        work_dir = claim_work_dir(path.with_suffix(""), made_from, fresh=path.exists())
        result = train_coarse(model, train, val, cfg, work_dir)
        if rank_and_world()[0] == 0:
            save_model(path, model, {"epoch": result.best_epoch, "val_metrics": result.best_metrics,
                                     "history": result.history, "train_config": asdict(cfg),
                                     "made_from": made_from,
                                     "provenance": provenance(asdict(cfg), cfg.seed)})
        loaded = load_model(path)
    model, extra = loaded
    return model.to(resolve_device(cfg.device)), extra
