"""Ground a text query in one video of your own: decode -> clip features -> fine model -> windows.

    predictor = MomentPredictor(model, backbone)          # model: any registered fine model
    feats = predictor.encode_video("my_video.mp4")        # any length (no 150-s cap)
    predictor.predict("a man opens the fridge", feats, top_k=5)
    # {"windows": [[start_s, end_s, score], ...], "saliency": [one score per clip]}
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from c2f_lib.features.motion import MotionConfig, append_motion
from c2f_lib.features.types import MomentSample


@dataclass
class VideoFeatures:
    path: str
    duration: float              # seconds
    clip_len: float              # seconds per clip
    clip_feats: torch.Tensor     # [L, D (+ M)] per clip: mean frame embedding (++ motion descriptor)


class MomentPredictor:
    """`backbone` is a c2f_lib.features.backbones.Backbone (or anything with encode_frames/encode_tokens).

    `clip_len`, `frames_per_clip` and `motion` must be those the training features were extracted with
    (the ExtractConfig; the store's StoreMeta records them).
    """

    def __init__(self, model: nn.Module, backbone, clip_len: float = 2.0, frames_per_clip: int = 1,
                 motion: MotionConfig | None = None):
        self.model = model.eval()
        self.backbone = backbone
        self.clip_len = clip_len
        self.frames_per_clip = frames_per_clip
        self.motion = motion

    def encode_video(self, path: str | Path) -> VideoFeatures:
        from c2f_lib.features.decode import sample_video
        from c2f_lib.features.extract import encode_clips

        video = sample_video(path, num_frames=1, clip_len=self.clip_len, frames_per_clip=self.frames_per_clip,
                             short_side=getattr(self.backbone, "image_size", None))
        clips, motion = encode_clips(self.backbone, video.clip_frames, self.motion)   # [L, D], [L, M] | None
        return VideoFeatures(str(path), float(video.duration), self.clip_len, append_motion(clips, motion))

    @torch.no_grad()
    def predict(self, query: str, features: VideoFeatures, top_k: int = 10) -> dict:
        if not query.strip():
            raise ValueError("predict: empty query")
        hidden, mask = self.backbone.encode_tokens([query])                 # [1, Lq, Dt], [1, Lq]
        sample = MomentSample(qid=0, query=query, vid=Path(features.path).stem, duration=features.duration,
                              clip_len=features.clip_len, clip_feats=features.clip_feats,
                              token_feats=hidden[0][mask[0]], windows=[[0.0, features.duration]])
        out = self.model.predict([sample], top_k=top_k)[0]
        return {"windows": out["pred_relevant_windows"], "saliency": out["pred_saliency_scores"]}
