"""TextDiff training: X-Pool base -> teacher (plain denoising) -> student (retrieval + distillation).

Phases (spec coarse §3.7), each resumable from its checkpoint in `ckpt_dir`:
  0. base   the X-Pool block: given (e.g. notebook 03's checkpoint) or trained with `train_coarse`.
  1. teacher  plain diffusion training of the teacher denoiser on all in-batch pairs (pool frozen);
              the epoch with the lowest validation denoising loss is kept.
  2. student  initialised from the teacher (or random), trained by the generic coarse trainer on
              TextDiff.training_loss = InfoNCE over sampled scores + distill_weight x teacher-student
              loss; checkpoint selection on validation retrieval.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from c2f_lib.evaluation.retrieval import evaluate_retrieval
from c2f_lib.features.types import CoarseSplit
from c2f_lib.models.registry import (claim_work_dir, content_digest, fingerprint, load_if_reusable, load_model,
                                     save_model)
from c2f_lib.models.textdiff import TextDiff, TextDiffConfig
from c2f_lib.models.xpool import XPool, eval_mode
from c2f_lib.progress import progress
from c2f_lib.amp import Precision
from c2f_lib.training.coarse import CoarseTrainConfig, split_features, train_coarse
from c2f_lib.training.schedule import make_optimizer, make_scheduler
from c2f_lib.utils import provenance, resolve_device

STUDENT_INITS = ("teacher", "random")


@dataclass
class TeacherTrainConfig:
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "cpu"


@dataclass
class TextDiffTrainConfig:
    model: TextDiffConfig = field(default_factory=TextDiffConfig)
    teacher: TeacherTrainConfig = field(default_factory=TeacherTrainConfig)
    student: CoarseTrainConfig = field(default_factory=CoarseTrainConfig)
    base: CoarseTrainConfig = field(default_factory=CoarseTrainConfig)  # X-Pool, when none is given
    student_init: str = "teacher"

    def __post_init__(self) -> None:
        if self.student_init not in STUDENT_INITS:
            raise ValueError(f"student_init must be one of {STUDENT_INITS}, got {self.student_init!r}")


def pair_batches(split: CoarseSplit, batch_size: int,
                 generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled caption indices cut into batches (the last, smaller one kept if it has >= 2 pairs)."""
    order = torch.randperm(len(split.texts), generator=generator)
    return [b for b in order.split(batch_size) if len(b) >= 2]


@torch.no_grad()
def denoising_loss_on(model: TextDiff, split: CoarseSplit, batch_size: int, seed: int = 0) -> float:
    """Mean teacher denoising loss over fixed (seeded) in-batch pairs of a split (model selection)."""
    gen = torch.Generator().manual_seed(seed)
    losses = []
    device = next(model.parameters()).device
    with eval_mode(model):
        for idx in pair_batches(split, batch_size, gen):
            pairs = model.pairs(split.text_emb[idx].to(device),
                                split.frames[split.text_to_video[idx]].to(device))
            losses.append(model.denoising_loss(pairs, gen).item())
    return sum(losses) / max(1, len(losses))


def train_teacher(model: TextDiff, train: CoarseSplit, val: CoarseSplit,
                  cfg: TeacherTrainConfig, amp: bool | str = False) -> list[dict[str, float]]:
    """Phase 1 in place: plain denoising of the teacher; keeps the best validation epoch.

    `amp` as in CoarseTrainConfig (train_textdiff passes the student's: one switch covers both phases)."""
    device = torch.device(resolve_device(cfg.device))
    precision = Precision.of(amp, device)
    scaler = precision.scaler()
    model.to(device).set_phase("teacher")
    gen = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = len(pair_batches(train, cfg.batch_size, torch.Generator().manual_seed(0)))
    optimizer = make_optimizer(model, cfg.lr, cfg.lr, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.epochs * steps_per_epoch, cfg.warmup_ratio)
    history, best = [], (float("inf"), copy.deepcopy(model.teacher.state_dict()))
    for epoch in progress(range(cfg.epochs), desc="teacher", unit="epoch"):
        model.train()
        total = 0.0
        for idx in pair_batches(train, cfg.batch_size, gen):
            ids = train.text_to_video[idx]
            with precision.autocast():
                loss, _ = model.training_loss(train.text_emb[idx].to(device), train.frames[ids].to(device),
                                              gen, video_ids=ids.to(device))
            optimizer.zero_grad(set_to_none=True)
            precision.step(loss, optimizer, scaler, model.teacher.parameters(), cfg.grad_clip)
            scheduler.step()
            total += loss.item()
        val_loss = denoising_loss_on(model, val, cfg.batch_size, cfg.seed)
        history.append({"epoch": epoch + 1, "train_denoise": total / steps_per_epoch,
                        "val_denoise": val_loss})
        if val_loss < best[0]:
            best = (val_loss, copy.deepcopy(model.teacher.state_dict()))
    model.teacher.load_state_dict(best[1])
    return history


def train_textdiff(train: CoarseSplit, val: CoarseSplit, cfg: TextDiffTrainConfig,
                   ckpt_dir: str | Path, base: XPool | None = None) -> tuple[TextDiff, dict[str, Any]]:
    """All phases; returns the trained model (eval mode) and the per-phase history.

    `base`: a trained X-Pool to build on (frozen unless cfg.model.train_pool); trained here when
    None. Phases whose checkpoint exists in `ckpt_dir` are loaded instead of recomputed:
    base.pt, teacher.pt, then the student's (final) checkpoint textdiff.pt.
    """
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / "textdiff.pt"
    made_from = fingerprint(asdict(cfg), train.video_ids, val.video_ids, base_fingerprint(base),
                            content_digest(split_features(train), split_features(val)))
    loaded = load_if_reusable(final, made_from)
    if loaded is not None:
        return loaded[0], loaded[1].get("history", {})
    claim_work_dir(ckpt_dir, made_from, fresh=final.exists())
    history: dict[str, Any] = {}
    model = TextDiff(cfg.model)
    model.xpool.load_state_dict(_base_pool(train, val, cfg, ckpt_dir, base).state_dict())
    model.fit_basis(train.text_emb, train.frames[train.text_to_video])

    teacher_path = ckpt_dir / "teacher.pt"
    reused_teacher = load_if_reusable(teacher_path, made_from)
    if reused_teacher is not None:
        teacher, extra = reused_teacher
        model.load_state_dict(teacher.state_dict())
        history["teacher"] = extra.get("history", [])
    else:
        history["teacher"] = train_teacher(model, train, val, cfg.teacher, cfg.student.amp)
        save_model(teacher_path, model, {"phase": "teacher", "history": history["teacher"],
                                         "made_from": made_from, "provenance": provenance(asdict(cfg), cfg.teacher.seed)})

    if cfg.student_init == "teacher":
        model.init_student_from_teacher()
    model.set_phase("student")
    result = train_coarse(model, train, val, cfg.student, ckpt_dir / "student")
    history["student"] = {"best_epoch": result.best_epoch, "best_val": result.best_metrics,
                          "epochs": result.history}
    save_model(final, model, {"phase": "student", "history": history, "train_config": asdict(cfg),
                              "made_from": made_from,
                              "provenance": provenance(asdict(cfg), cfg.student.seed)})
    return model.eval(), history


def base_fingerprint(base: XPool | None) -> str | None:
    """Identity of a given X-Pool: its config and weights (None when TextDiff trains its own)."""
    if base is None:
        return None
    return fingerprint(asdict(base.cfg), content_digest(sorted(base.state_dict().items())))


def _base_pool(train: CoarseSplit, val: CoarseSplit, cfg: TextDiffTrainConfig, ckpt_dir: Path,
               base: XPool | None) -> XPool:
    """Phase 0: the given X-Pool, or one trained here (resumable under ckpt_dir/base)."""
    if base is not None:
        if base.cfg != cfg.model.pool:
            raise ValueError(f"the given X-Pool's config {base.cfg} differs from cfg.model.pool "
                             f"{cfg.model.pool}")
        return base
    pool = XPool(cfg.model.pool)
    train_coarse(pool, train, val, cfg.base, ckpt_dir / "base")
    return pool


def load_seed_checkpoints(directory: str | Path, method: str, n_seeds: int) -> list[nn.Module]:
    """`<directory>/<method>_seed<k>.pt` for k < n_seeds (notebook 03's layout); [] unless all exist."""
    paths = [Path(directory) / f"{method}_seed{k}.pt" for k in range(n_seeds)]
    return [load_model(p)[0] for p in paths] if all(p.exists() for p in paths) else []


def compare_methods(models: dict[str, list[nn.Module]], splits: dict[str, CoarseSplit],
                    protocols: dict[str, tuple[str, ...]] | None = None, chunk_size: int = 64,
                    seed: int = 0) -> list[dict[str, Any]]:
    """One row per (method, seed, split, protocol) with t2v / v2t metrics (scorer seeded by `seed`).

    `protocols` per split name, default ("correct",); "reference" is the published evaluation.
    """
    rows = []
    for method, seeded in models.items():
        for k, model in enumerate(seeded):
            for split_name, split in splits.items():
                for protocol in (protocols or {}).get(split_name, ("correct",)):
                    metrics = evaluate_retrieval(model, split, protocol, chunk_size, seed)
                    rows.append({"method": method, "seed": k, "split": split_name,
                                 "protocol": protocol, **metrics})
    return rows
