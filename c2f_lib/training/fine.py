"""Training loop of the fine grounding models (Moment-DETR, QD-DETR, MESM).

AdamW with gradient clipping, checkpoint selection on the *validation* split (never test), resume
from `last.pt`, deterministic under a seed, mixed precision per `amp` (c2f_lib/amp.py: fp16 + GradScaler
on CUDA, bf16 on CPU when asked), and data-parallel
under torchrun: every rank processes its slice of each global batch and DDP averages gradients.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from c2f_lib.evaluation.moments import evaluate_moments
from c2f_lib.features.types import MomentSample
from c2f_lib.models.fine_batch import MomentBatch, collate_moments
from c2f_lib.models.fine_losses import fine_loss
from c2f_lib.models.fine_presets import loss_preset
from c2f_lib.models.mesm import MESMConfig, build_word_vocab
from c2f_lib.models.registry import load_model, save_model
from c2f_lib.progress import progress
from c2f_lib.amp import Precision, check_amp
from c2f_lib.distributed import init_from_env, local_slice, mean_over_ranks, rank_and_world
from c2f_lib.utils import atomic_path, atomic_write_json, resolve_device, seed_everything

__all__ = ["FineTrainConfig", "FineJob", "train_fine", "train_or_load", "train_or_load_all", "with_word_vocab",
           "collate_moments", "samples_to_ground_truth", "evaluate_model"]

SELECT_METRICS = ("MR-full-mAP", "MR-full-R1@0.5", "mIoU")


@dataclass
class FineTrainConfig:
    epochs: int = 200
    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    loss_preset: str = "qd_detr"                # see c2f_lib.models.fine_presets.PRESETS
    select_metric: str = "MR-full-mAP"          # on the validation split
    eval_every: int = 1
    seed: int = 0
    device: str = "auto"
    amp: bool | str = True                      # True: fp16 + GradScaler on CUDA only; "auto": + bf16 on CPU

    def __post_init__(self) -> None:
        check_amp(self.amp)
        if self.select_metric not in SELECT_METRICS:
            raise ValueError(f"select_metric must be one of {SELECT_METRICS}, got {self.select_metric!r}")


def samples_to_ground_truth(samples: list[MomentSample]) -> list[dict]:
    """MomentQuery-like records the evaluator reads (windows + duration from the samples)."""
    return [{"qid": s.qid, "query": s.query, "vid": s.vid, "duration": s.duration,
             "relevant_windows": s.windows} for s in samples]


def evaluate_model(model: nn.Module, samples: list[MomentSample], top_k: int = 10) -> tuple[dict, list[dict]]:
    """(brief metrics, predictions) of `model` on `samples`."""
    preds = model.predict(samples, top_k=top_k)
    return evaluate_moments(preds, samples_to_ground_truth(samples))["brief"], preds


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled index batches; a trailing batch of one is dropped (negative pairs need two queries)."""
    order = torch.randperm(n, generator=generator)
    return [order[i:i + batch_size] for i in range(0, n, batch_size) if len(order[i:i + batch_size]) > 1]


def _state(model: nn.Module, optimizer, scaler, epoch: int, best: dict, history: list) -> dict:
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "epoch": epoch, "best": best, "history": history, "torch_rng": torch.get_rng_state()}


def train_fine(model: nn.Module, train_samples: list[MomentSample], val_samples: list[MomentSample],
               cfg: FineTrainConfig, ckpt_dir: str | Path) -> tuple[nn.Module, dict]:
    """Train, keep the best validation checkpoint as `<ckpt_dir>/best.pt` and return (best model, summary).

    A `last.pt` in `ckpt_dir` is resumed from. The summary holds the best epoch and its validation metrics.
    """
    ckpt_dir = Path(ckpt_dir)
    distributed = init_from_env()
    rank, _ = rank_and_world()
    device = resolve_device(cfg.device)
    if distributed and device.startswith("cuda"):
        device = f"cuda:{rank % torch.cuda.device_count()}"
    seed_everything(cfg.seed)
    weights = loss_preset(cfg.loss_preset)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    precision = Precision.of(cfg.amp, device)
    scaler = precision.scaler()
    start, best, history = 0, {"epoch": -1, "metrics": {}, "score": float("-inf")}, []
    last = ckpt_dir / "last.pt"
    if last.exists():
        state = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        start, best, history = state["epoch"] + 1, state["best"], state["history"]
        torch.set_rng_state(state["torch_rng"])
    # find_unused_parameters: the negative-pair and MESM branches are skipped on some batches.
    net = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) if distributed else model

    for epoch in progress(range(start, cfg.epochs), desc=f"train {type(model).__name__}", initial=start,
                          total=cfg.epochs):
        model.train()
        generator = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        losses = []
        for index in _batches(len(train_samples), cfg.batch_size, generator):
            local = index[local_slice(len(index))]
            batch: MomentBatch = collate_moments([train_samples[i] for i in local]).to(device)
            with precision.autocast():
                terms = fine_loss(net(batch), batch, weights)
            optimizer.zero_grad(set_to_none=True)
            precision.step(terms["total"], optimizer, scaler, model.parameters(), cfg.grad_clip)
            losses.append(float(terms["total"].detach()))
        record = {"epoch": epoch, "loss": mean_over_ranks(sum(losses) / max(len(losses), 1))}
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            metrics, _ = evaluate_model(model, val_samples)
            record["val"] = metrics
            if rank == 0 and metrics[cfg.select_metric] > best["score"]:
                best = {"epoch": epoch, "metrics": metrics, "score": metrics[cfg.select_metric]}
                save_model(ckpt_dir / "best.pt", model, extra={"train_config": dataclasses.asdict(cfg),
                                                               "epoch": epoch, "val": metrics})
        history.append(record)
        if rank == 0:
            with atomic_path(last) as tmp:
                torch.save(_state(model, optimizer, scaler, epoch, best, history), tmp)
    if distributed:
        torch.distributed.barrier()
    best_model, _ = load_model(ckpt_dir / "best.pt", map_location=device)
    summary = {"best_epoch": best["epoch"], "best_val": best["metrics"], "history": history,
               "select_metric": cfg.select_metric}
    if rank == 0:
        atomic_write_json(ckpt_dir / "summary.json", summary)
    return best_model, summary


def with_word_vocab(name: str, model_config: dict, train_samples: list[MomentSample]) -> dict:
    """`model_config` plus MESM's compact word classes, the `mlm_words` most frequent token ids of the
    training captions, when MESM classifies words over a vocabulary and the config names none (built
    before the fingerprint, so a checkpoint is reused only with the same classes)."""
    if name != "mesm" or model_config.get("word_vocab") is not None:
        return model_config
    cfg = MESMConfig(**model_config)
    if not (cfg.use_fw and cfg.mlm_over_vocab and cfg.mlm_words > 0):
        return model_config
    vocab = build_word_vocab(train_samples, cfg.mlm_words)
    return {**model_config, "word_vocab": vocab} if vocab else model_config   # no ids: feature targets


def samples_digest(samples: list[MomentSample]) -> str:
    """Content hash of what training reads from the samples: annotations, text features, and each video's
    clip features once (queries of one video share them)."""
    from c2f_lib.models.registry import content_digest

    clips = {s.vid: s.clip_feats for s in samples}
    return content_digest([(s.qid, s.vid, s.duration, s.clip_len, s.windows, s.token_feats, s.saliency, s.token_ids)
                           for s in samples], sorted(clips), [clips[v] for v in sorted(clips)])


def _made_from(name: str, model_config: dict, train_samples: list[MomentSample], val_samples: list[MomentSample],
               cfg: FineTrainConfig) -> tuple[dict, str]:
    """(the full model config, the fingerprint a reusable checkpoint of it carries: config, training config and
    the content of the train and val samples)."""
    from c2f_lib.models.registry import fingerprint

    model_config = with_word_vocab(name, model_config, train_samples)
    return model_config, fingerprint(name, model_config, dataclasses.asdict(cfg),
                                     samples_digest(train_samples), samples_digest(val_samples))


def train_or_load(name: str, model_config: dict, train_samples: list[MomentSample],
                  val_samples: list[MomentSample], cfg: FineTrainConfig, ckpt_path: str | Path
                  ) -> tuple[nn.Module, dict]:
    """Load `ckpt_path` if it exists, else build `name` from `model_config`, train and save it there.

    Returns (model in eval mode, extra) where extra holds the training summary.
    """
    import c2f_lib.models.moment_detr  # noqa: F401  (registers moment_detr; mesm is imported above)
    from c2f_lib.models.registry import build_model, claim_work_dir, load_if_reusable

    ckpt_path = Path(ckpt_path)
    model_config, made_from = _made_from(name, model_config, train_samples, val_samples, cfg)
    loaded = load_if_reusable(ckpt_path, made_from)
    if loaded is not None:
        return loaded
    seed_everything(cfg.seed)
    model = build_model(name, model_config)
    work_dir = claim_work_dir(ckpt_path.with_suffix(".work"), made_from, fresh=ckpt_path.exists())
    best, summary = train_fine(model, train_samples, val_samples, cfg, work_dir)
    extra = {"train_config": dataclasses.asdict(cfg), "summary": summary, "made_from": made_from}
    save_model(ckpt_path, best, extra=extra)
    return best.eval(), extra


@dataclass
class FineJob:
    """One model to train (or load) by `train_or_load_all`."""

    name: str                 # registry name: moment_detr | qd_detr | mesm
    model_config: dict
    cfg: FineTrainConfig
    ckpt_path: Path


def _train_job(job: FineJob, samples: bytes) -> str:
    import pickle

    torch.set_num_threads(1)   # one core per job: these small models gain little from a second thread
    train_samples, val_samples = pickle.loads(samples)
    train_or_load(job.name, job.model_config, train_samples, val_samples, job.cfg, job.ckpt_path)
    return str(job.ckpt_path)


def train_or_load_all(jobs: list[FineJob], train_samples: list[MomentSample], val_samples: list[MomentSample],
                      workers: int = 1) -> list[tuple[nn.Module, dict]]:
    """`train_or_load` every job; with `workers` > 1 on CPU the jobs that need training run side by side in
    that many processes (one thread each), longest-first as given, then every model is loaded here.
    Results equal a run in this process, up to float summation order."""
    from c2f_lib.models.registry import load_if_reusable

    pending = [job for job in jobs if load_if_reusable(
        job.ckpt_path, _made_from(job.name, job.model_config, train_samples, val_samples, job.cfg)[1]) is None]
    if workers > 1 and len(pending) > 1 and not any(resolve_device(j.cfg.device).startswith("cuda") for j in pending):
        import multiprocessing
        import pickle
        from concurrent.futures import ProcessPoolExecutor

        # Plain pickle bytes: multiprocessing would share each of the thousands of small tensors through a
        # file descriptor of its own and run out of them.
        samples = pickle.dumps((train_samples, val_samples))
        with ProcessPoolExecutor(min(workers, len(pending)), mp_context=multiprocessing.get_context("spawn")) as pool:
            for done in pool.map(_train_job, pending, [samples] * len(pending)):
                print(f"trained {Path(done).name}", flush=True)
    return [train_or_load(j.name, j.model_config, train_samples, val_samples, j.cfg, j.ckpt_path) for j in jobs]
