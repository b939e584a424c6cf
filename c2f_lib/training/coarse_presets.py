"""Per-dataset hyperparameters of the coarse retrievers as named presets (spec coarse §1.6, §2.7).

msrvtt / lsmdc / didemo are the T-MASS README settings (batch 32, 5 epochs, 20 trials, seed 24,
clip_lr 1e-6, weight decay 0.2, warmup 0.1, 12 frames, ViT-B/32 -> 512-d). synthmoments is ours:
frozen tiny-CLIP features on the embedded synthetic data, so a larger head learning rate.

    p = preset("lsmdc")
    model = TMASS(p.tmass_config())
    train_coarse(model, train, val, p.train_config(device="cuda"), ckpt_dir)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from c2f_lib.models.meanpool import MeanPoolConfig
from c2f_lib.models.tmass import TMASSConfig
from c2f_lib.models.xpool import XPoolConfig
from c2f_lib.training.coarse import CoarseTrainConfig


@dataclass(frozen=True)
class CoarsePreset:
    name: str
    lr: float                      # "noclip_lr": pooling / stochastic modules
    dropout: float                 # X-Pool's transformer_dropout
    prior: str = "uniform01"
    prior_std: float = 1.0
    support_weight: float = 0.0
    clip_lr: float = 1e-6
    epochs: int = 5
    batch_size: int = 32
    weight_decay: float = 0.2
    warmup_ratio: float = 0.1
    num_trials: int = 20
    num_frames: int = 12
    dim: int = 512
    seed: int = 24
    note: str = ""

    def meanpool_config(self, **overrides: Any) -> MeanPoolConfig:
        return dataclasses.replace(MeanPoolConfig(dim=self.dim), **overrides)

    def xpool_config(self, **overrides: Any) -> XPoolConfig:
        return dataclasses.replace(XPoolConfig(dim=self.dim, dropout=self.dropout), **overrides)

    def tmass_config(self, **overrides: Any) -> TMASSConfig:
        return dataclasses.replace(
            TMASSConfig(dim=self.dim, num_frames=self.num_frames, dropout=self.dropout,
                        prior=self.prior, prior_std=self.prior_std,
                        support_weight=self.support_weight, num_trials=self.num_trials), **overrides)

    def model_config(self, method: str, **overrides: Any):
        makers = {"meanpool": self.meanpool_config, "xpool": self.xpool_config, "tmass": self.tmass_config}
        if method not in makers:
            raise KeyError(f"unknown coarse method {method!r}; use one of {sorted(makers)}")
        return makers[method](**overrides)

    def train_config(self, **overrides: Any) -> CoarseTrainConfig:
        return dataclasses.replace(
            CoarseTrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                              clip_lr=self.clip_lr, weight_decay=self.weight_decay,
                              warmup_ratio=self.warmup_ratio, seed=self.seed), **overrides)


PRESETS: dict[str, CoarsePreset] = {
    "msrvtt": CoarsePreset("msrvtt", lr=3e-5, dropout=0.3, support_weight=0.8,
                           note="MSR-VTT-9k train, 1k-A test"),
    "lsmdc": CoarsePreset("lsmdc", lr=1e-5, dropout=0.3, prior="normal", prior_std=3e-3),
    "didemo": CoarsePreset("didemo", lr=1e-5, dropout=0.4,
                           note="paragraph retrieval (all sentences of a video concatenated)"),
    "tacos_cg": CoarsePreset("tacos_cg", lr=1e-4, dropout=0.3, epochs=20, batch_size=25, support_weight=0.8,
                             note="ours (no published setting): 75 train videos x 5 LLM captions, so more epochs "
                                  "and the lr T-MASS uses on small data; 12 frames of ViT-B/32"),
    "synthmoments": CoarsePreset("synthmoments", lr=1e-3, dropout=0.1, epochs=5, weight_decay=0.2,
                                 note="frozen tiny-CLIP features; dim / num_frames come from the store"),
}


def preset(name: str) -> CoarsePreset:
    if name not in PRESETS:
        raise KeyError(f"unknown coarse preset {name!r}; available: {sorted(PRESETS)}")
    return PRESETS[name]
