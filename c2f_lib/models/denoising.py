"""Denoising anchor queries for the anchor decoder (DN-DETR, Li et al., CVPR'22) — our addition.

Not part of QD-DETR or MESM: off by default (`QDDETRConfig.dn_groups=0` trains exactly as the papers);
notebook 05 turns it on (`dn_groups=3, dn_negatives=True`). Measured on the synthetic signal task of
tests/test_fine_learning.py (hidden 32, batch 32, lr 2e-3, 200 steps; window prior R1@0.5 17.2),
val R1@0.5 over seeds 0/1/2: off 10.9 / 23.4 / 10.9, positives only 34.4 / 20.3 / 18.8, with negatives
40.6 / 34.4 / 25.0; MESM seed 0: off 18.8, with negatives 64.1. ~8% more time per QD-DETR step.
While training, `dn_groups` copies of every GT span are jittered and appended to the learned anchors as
extra decoder queries. Each copy must reconstruct its GT span (L1 + GIoU) and be classified foreground
(`fine_losses.denoising_losses`). Bipartite matching is unstable early in training (a query's target
can change from step to step); the denoising queries get a fixed target, which gives the decoder and the
heads a direct, stable signal. An attention mask keeps the matching queries from seeing the denoising
ones and the groups from seeing each other, so inference (no extra queries) is unchanged. Optional
negatives (DINO, Zhang et al., ICLR'23) teach the class head that an anchor off the event is background.
"""
from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence


def noised_anchors(gt_spans: list[torch.Tensor], groups: int, noise: float, negatives: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """GT spans B x [n_b, 2] (c, w) -> anchors, targets [B, G*K, 2], valid, positive [B, G*K] bool.

    Positives: centres move by up to `noise` * w / 2 and widths scale by 1 ± `noise` (uniform), as
    DN-DETR's box noise. With `negatives` (DINO's contrastive denoising) each group also holds one
    negative per GT span, its centre moved by 0.5-1.5 widths (IoU with the GT mostly below 0.5), to be
    classified background. K = N (x2 with negatives), N the batch's largest GT count; padded slots are invalid.
    """
    gt = pad_sequence(gt_spans, batch_first=True).float()                                  # [B, N, 2]
    valid = pad_sequence([torch.ones(len(g), dtype=torch.bool) for g in gt_spans], batch_first=True).to(gt.device)
    copies = 2 if negatives else 1
    targets, valid = gt.repeat(1, groups * copies, 1), valid.repeat(1, groups * copies)    # [B, G*K, *]
    N = gt.shape[1]
    positive = (torch.arange(groups * copies * N, device=gt.device) // N % copies == 0).expand_as(valid)
    c, w = targets.unbind(-1)
    jitter = torch.rand(targets.shape, device=gt.device) * 2 - 1                          # [B, G*K, 2] in [-1, 1]
    shift = torch.where(positive, jitter[..., 0] * noise / 2,
                        jitter[..., 0].sign() * (0.5 + jitter[..., 0].abs()))              # in widths
    anchors = torch.stack([c + shift * w, w * (1 + jitter[..., 1] * noise)], -1)
    return anchors.clamp(1e-3, 1 - 1e-3), targets, valid, positive


def denoising_attention_mask(num_queries: int, groups: int, group_size: int, valid: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] bool (True = may attend), T = num_queries + groups * group_size.

    Matching queries see only each other; a denoising query sees the matching queries and the valid
    members of its own group (and itself, so a padded row is never empty).
    """
    B, T = valid.shape[0], num_queries + groups * group_size
    group = torch.cat([torch.full((num_queries,), -1), torch.arange(groups).repeat_interleave(group_size)])
    group = group.to(valid.device)
    key_ok = torch.cat([valid.new_ones(B, num_queries), valid], 1)                         # [B, T]
    same = (group[:, None] == group[None, :]) & (group[:, None] >= 0)                      # [T, T]
    allowed = (same[None] & key_ok[:, None, :]) | (group[None, :] < 0)[None] & (group[:, None] >= 0)[None]
    allowed[:, :num_queries, :num_queries] = True
    allowed |= torch.eye(T, dtype=torch.bool, device=valid.device)[None]
    return allowed[:, None]
