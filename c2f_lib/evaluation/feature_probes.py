"""Do frozen features carry the signal a stage needs? Training-free probes of a feature store.

* `zero_shot_metrics`: text -> video retrieval by the cosine of a caption and the video's mean frame.
* `grounding_auc`: inside one video, does a sentence's cosine to each clip rank the clips inside its
  window above those outside (AUC, 50 = chance)? The fine models can only ground what this sees.
* `moment_video_recall`: over a whole corpus, is the video holding a moment the one with the clip
  closest to its sentence (R@K)? What the coarse stage of coarse-to-fine search has to work with.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from c2f_lib.evaluation.retrieval import retrieval_metrics
from c2f_lib.features.types import CoarseSplit, MomentSample


def zero_shot_metrics(split: CoarseSplit) -> dict[str, float]:
    """t2v / v2t R@K of mean-pooled frame features, plus the chance level of t2v R@1 (%)."""
    videos = F.normalize(split.frames.mean(1), dim=-1)  # [V, D]
    texts = F.normalize(split.text_emb, dim=-1)         # [T, D]
    metrics = retrieval_metrics(texts @ videos.T, split.text_to_video)
    metrics["t2v_R@1_chance"] = 100.0 / len(split.video_ids)
    return metrics


def _auc(inside: torch.Tensor, outside: torch.Tensor) -> float:
    """P(a random inside score > a random outside score), ties counting half."""
    diff = inside[:, None] - outside[None]
    return float((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean())


def grounding_auc(samples: list[MomentSample], sentences: torch.Tensor, clips: Mapping[str, torch.Tensor]) -> float:
    """Mean per-query AUC (%) of cos(sentence, clip) for clips inside vs outside the query's windows.

    sentences [Q, D] (one per sample), clips: vid -> [L, D] clip embeddings. A clip is inside when its
    centre lies in a window; queries whose video is all inside (or all outside) are skipped."""
    aucs = []
    for sample, sentence in zip(samples, F.normalize(sentences.float(), dim=-1)):
        sims = F.normalize(clips[sample.vid].float(), dim=-1) @ sentence                    # [L]
        centres = (torch.arange(len(sims)) + 0.5) * sample.clip_len
        inside = torch.zeros(len(sims), dtype=torch.bool)
        for start, end in sample.windows:
            inside |= (centres >= start) & (centres < end)
        if inside.any() and not inside.all():
            aucs.append(_auc(sims[inside], sims[~inside]))
    if not aucs:
        raise ValueError("grounding_auc needs queries whose windows cover part of their video")
    return 100.0 * float(np.mean(aucs))


def moment_video_recall(samples: list[MomentSample], sentences: torch.Tensor, clips: Mapping[str, torch.Tensor],
                        ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """R@K (%) of each query's video when every video of `clips` is scored by its best clip's cosine."""
    vids = sorted(clips)
    bank = torch.cat([F.normalize(clips[v].float(), dim=-1) for v in vids])                 # [sum L, D]
    owner = torch.cat([torch.full((len(clips[v]),), i) for i, v in enumerate(vids)])         # [sum L]
    sims = F.normalize(sentences.float(), dim=-1) @ bank.T                                  # [Q, sum L]
    best = torch.full((len(samples), len(vids)), -2.0).scatter_reduce(1, owner.expand_as(sims), sims, "amax")
    truth = torch.tensor([vids.index(s.vid) for s in samples])
    rank = (best > best[torch.arange(len(samples)), truth][:, None]).sum(1)                 # [Q] 0 = first
    return {f"R@{k}": 100.0 * float((rank < k).float().mean()) for k in ks} | {"videos": float(len(vids))}
