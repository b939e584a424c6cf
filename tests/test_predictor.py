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


def test_predictor_adds_the_motion_descriptor(tmp_path):
    from c2f_lib.features.decode import sample_video
    from c2f_lib.features.extract import encode_clips
    from c2f_lib.features.motion import MotionConfig

    path = write_numbered_video(tmp_path / "short.mp4", num_frames=24, fps=4.0, size=32)    # 6 s, frames change
    motion = MotionConfig()
    model = build_model("qd_detr", {**SMALL, "video_dim": 16 + motion.dim})
    predictor = MomentPredictor(model, FakeBackbone(), clip_len=2.0, frames_per_clip=4, motion=motion)
    feats = predictor.encode_video(path)
    video = sample_video(path, num_frames=1, clip_len=2.0, frames_per_clip=4)
    clips, descriptor = encode_clips(FakeBackbone(), video.clip_frames, motion)
    assert feats.clip_feats.shape == (3, 16 + motion.dim)
    assert torch.equal(feats.clip_feats, torch.cat([clips, torch.from_numpy(descriptor)], 1))
    assert descriptor.any()                    # the numbered frames change inside every clip
    assert len(predictor.predict("a person opens the door", feats, top_k=2)["windows"]) == 2
