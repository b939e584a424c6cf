"""Colour-motion histogram: a training-free motion descriptor per clip (the CPU default's SlowFast stand-in).

Released QVHighlights / Charades-STA features put a motion stream (SlowFast) beside CLIP, because one
image embedding per 2-s clip cannot tell "moves left" from "moves right" or see something appear. No
pretrained motion network is available offline, so the CPU default describes motion directly: between
consecutive frames of a clip, the pixels that changed are binned by colour (hue bins plus one bin for
grey/white/black); per bin the descriptor keeps

* the share of the frame that *gained* that colour and the share that *lost* it (appear / disappear,
  grow / shrink, change colour), square-rooted so small actors still register, and
* the shift (x, y) from the lost to the gained pixels' centroid (the direction of motion).

It is position-invariant and needs no training, so it carries the same meaning on unseen videos.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class MotionConfig:
    hue_bins: int = 8
    min_saturation: float = 0.25   # below this a pixel counts as achromatic (its own bin)
    change_threshold: float = 0.08  # summed |ΔRGB| (in [0, 3]) above which a pixel changed
    max_side: int = 64             # frames are strided down to at most this long side first

    @property
    def dim(self) -> int:
        return 4 * (self.hue_bins + 1)

    def bin_names(self) -> list[str]:
        step = 360 // self.hue_bins
        return [f"hue {i * step}-{(i + 1) * step}°" for i in range(self.hue_bins)] + ["grey/white/black"]

    def tag(self) -> str:
        """What the store records, so that two descriptor settings never mix."""
        return "colour-motion-v1:" + ",".join(f"{k}={v}" for k, v in asdict(self).items())


def append_motion(clips: torch.Tensor, motion: np.ndarray | None) -> torch.Tensor:
    """The fine stage's per-clip input: [L, D] embedding ++ [L, M] descriptor (when there is one), float32."""
    clips = clips.float()
    return clips if motion is None else torch.cat([clips, torch.from_numpy(np.asarray(motion)).float()], 1)


def colour_bins(rgb: np.ndarray, cfg: MotionConfig) -> np.ndarray:
    """[..., 3] RGB in [0, 1] -> [...] bin index: hue bins 0..hue_bins-1, achromatic = hue_bins."""
    high, low = rgb.max(-1), rgb.min(-1)
    saturation = (high - low) / (high + 1e-6)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hue = (np.arctan2(np.sqrt(3) * (g - b), 2 * r - g - b) / (2 * np.pi)) % 1.0   # [0, 1)
    bins = np.minimum((hue * cfg.hue_bins).astype(np.int64), cfg.hue_bins - 1)
    return np.where(saturation < cfg.min_saturation, cfg.hue_bins, bins)


def _per_bin(bins: np.ndarray, changed: np.ndarray, xs: np.ndarray, ys: np.ndarray, n_bins: int) -> np.ndarray:
    """Changed-pixel count and x / y sums per (clip, bin): bins, changed [L, h, w] -> [L, n_bins, 3]."""
    L = bins.shape[0]
    clip, row, col = np.nonzero(changed)                                        # [P] each
    index = clip * n_bins + bins[clip, row, col]                                # flat (clip, bin)
    size = L * n_bins
    return np.stack([np.bincount(index, minlength=size), np.bincount(index, xs[row, col], minlength=size),
                     np.bincount(index, ys[row, col], minlength=size)], -1).reshape(L, n_bins, 3)


def motion_features(clip_frames: np.ndarray, cfg: MotionConfig = MotionConfig()) -> np.ndarray:
    """[L, K, H, W, 3] uint8 frames of each clip (K >= 2) -> [L, cfg.dim] float32 descriptor.

    Layout per bin b (hue_bins + 1 bins): [sqrt(gained_b) | sqrt(lost_b) | 4·dx_b | 4·dy_b], each averaged
    over the K - 1 frame pairs of the clip.
    """
    L, K, H, W, _ = clip_frames.shape
    if K < 2:
        raise ValueError(f"motion features need >= 2 frames per clip, got {K}")
    stride = max(1, -(-max(H, W) // cfg.max_side))
    frames = clip_frames[:, :, ::stride, ::stride].astype(np.float32) / 255.0   # [L, K, h, w, 3]
    h, w = frames.shape[2:4]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    xs, ys = xs / max(w - 1, 1) - 0.5, ys / max(h - 1, 1) - 0.5                # [h, w] in [-0.5, 0.5]
    n_bins = cfg.hue_bins + 1
    gained, lost = np.zeros((L, n_bins, 3)), np.zeros((L, n_bins, 3))
    bins = colour_bins(frames, cfg)                                             # [L, K, h, w]
    for k in range(K - 1):
        changed = np.abs(frames[:, k + 1] - frames[:, k]).sum(-1) > cfg.change_threshold   # [L, h, w]
        gained += _per_bin(bins[:, k + 1], changed, xs, ys, n_bins)
        lost += _per_bin(bins[:, k], changed, xs, ys, n_bins)
    area, pairs = float(h * w), K - 1
    mass_gained, mass_lost = gained[..., 0] / (area * pairs), lost[..., 0] / (area * pairs)    # [L, n_bins]
    shift = gained[..., 1:] / (gained[..., :1] + 1e-6) - lost[..., 1:] / (lost[..., :1] + 1e-6)  # [L, n_bins, 2]
    # A centroid shift means something only where the colour both appeared and vanished (it moved).
    moved = (np.minimum(gained[..., 0], lost[..., 0]) > 0)[..., None]
    shift = np.where(moved, shift, 0.0)
    return np.concatenate([np.sqrt(mass_gained), np.sqrt(mass_lost), 4 * shift[..., 0], 4 * shift[..., 1]],
                          -1).astype(np.float32)
