"""Optimiser and learning-rate schedule shared by the training loops (model-agnostic).

The papers' recipe (spec coarse §1.6): AdamW (betas 0.9/0.999, eps 1e-6) with decoupled weight
decay on every parameter, two learning-rate groups (pretrained backbone vs. new modules),
linear warmup then half-cosine to zero, stepped once per optimiser step.
"""
from __future__ import annotations

import math

import torch
from torch import nn

# Parameters whose name starts with one of these prefixes belong to a pretrained backbone.
BACKBONE_PREFIXES = ("backbone.", "text_encoder.", "clip.")


def param_groups(model: nn.Module, lr: float, backbone_lr: float) -> list[dict]:
    """Two groups: pretrained backbone parameters at `backbone_lr`, everything else at `lr`."""
    backbone, head = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (backbone if name.startswith(BACKBONE_PREFIXES) else head).append(param)
    groups = [{"params": head, "lr": lr, "name": "head"}]
    if backbone:
        groups.append({"params": backbone, "lr": backbone_lr, "name": "backbone"})
    return groups


def make_optimizer(model: nn.Module, lr: float, backbone_lr: float,
                   weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, lr, backbone_lr), betas=(0.9, 0.999),
                             eps=1e-6, weight_decay=weight_decay)


def warmup_cosine(step: int, total_steps: int, warmup_ratio: float) -> float:
    """Multiplier of the base learning rate at `step` (0-based): linear warmup, then half-cosine to 0."""
    warmup = int(round(warmup_ratio * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                   warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total_steps, warmup_ratio))
