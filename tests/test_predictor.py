"""MomentPredictor on a generated video longer than 150 s, with a tiny fake backbone."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from c2f_lib.features.testing import write_numbered_video
from c2f_lib.models.registry import build_model
from c2f_lib.pipeline.predictor import MomentPredictor
from test_fine_models import SMALL

import c2f_lib.models.qd_detr  # noqa: F401


class FakeBackbone:
    """Frame embedding = mean colour per channel tiled to 16 dims; tokens = one 12-d vector per word."""

    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(frames).float().mean(dim=(1, 2)) / 255.0          # [N, 3]
        return x.repeat(1, 6)[:, :16]                                          # [N, 16]

    def encode_tokens(self, texts: list[str]):
        words = texts[0].split()
        g = torch.Generator().manual_seed(len(words))
        return torch.randn(1, len(words) + 2, 12, generator=g), torch.tensor([[True] * len(words) + [False] * 2])


def test_predictor_long_video(tmp_path):
    path = write_numbered_video(tmp_path / "long.mp4", num_frames=170, fps=1.0, size=32)   # 170 s
    torch.manual_seed(0)
    predictor = MomentPredictor(build_model("qd_detr", SMALL), FakeBackbone(), clip_len=2.0)
    feats = predictor.encode_video(path)
    assert feats.clip_feats.shape == (85, 16) and feats.duration == pytest.approx(170, abs=1.5)
    out = predictor.predict("a person opens the door", feats, top_k=4)
    assert len(out["windows"]) == 4 and len(out["saliency"]) == 85
    assert all(0 <= s < e <= feats.duration + 1e-6 for s, e, _ in out["windows"])
    with pytest.raises(ValueError, match="empty query"):
        predictor.predict("  ", feats)
