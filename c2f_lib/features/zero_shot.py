"""Zero-shot text -> video retrieval with frozen features: cosine of the caption and the mean frame."""
from __future__ import annotations

import torch.nn.functional as F

from c2f_lib.evaluation.retrieval import retrieval_metrics
from c2f_lib.features.types import CoarseSplit


def zero_shot_metrics(split: CoarseSplit) -> dict[str, float]:
    """t2v / v2t R@K of mean-pooled frame features, plus the chance level of t2v R@1 (%)."""
    videos = F.normalize(split.frames.mean(1), dim=-1)  # [V, D]
    texts = F.normalize(split.text_emb, dim=-1)         # [T, D]
    metrics = retrieval_metrics(texts @ videos.T, split.text_to_video)
    metrics["t2v_R@1_chance"] = 100.0 / len(split.video_ids)
    return metrics
