"""The colour-motion descriptor: direction, appear / disappear, colour binning, and its way through the store."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from c2f_lib.features.extract import ExtractConfig, encode_clips, store_meta
from c2f_lib.features.motion import MotionConfig, colour_bins, motion_features
from c2f_lib.features.store import FeatureStore, StoreError
from c2f_lib.features.store_writer import FeatureStoreWriter

CFG = MotionConfig()
RED = (220, 45, 45)
N_BINS = CFG.hue_bins + 1


def clip_of(positions: list[tuple[int, int] | None], size: int = 64, side: int = 10) -> np.ndarray:
    """[K, size, size, 3] grey frames with a red square at each (x, y) top-left (None: no square)."""
    frames = np.full((len(positions), size, size, 3), 128, np.uint8)
    for frame, pos in zip(frames, positions):
        if pos is not None:
            x, y = pos
            frame[y:y + side, x:x + side] = RED
    return frames


def parts(feature: np.ndarray) -> dict[str, np.ndarray]:
    """One clip's descriptor split into its four [N_BINS] parts."""
    return dict(zip(["gained", "lost", "dx", "dy"], feature.reshape(4, N_BINS)))


RED_BIN = int(colour_bins(np.array(RED, np.float32) / 255, CFG))
GREY_BIN = CFG.hue_bins


def test_colour_bins_separate_hues_and_greys():
    colours = np.array([RED, (60, 190, 75), (60, 110, 235), (128, 128, 128), (250, 250, 250)], np.float32) / 255
    bins = colour_bins(colours, CFG)
    assert len(set(bins[:3].tolist())) == 3 and bins[3] == bins[4] == GREY_BIN


@pytest.mark.parametrize("step, axis", [(-4, "dx"), (4, "dx"), (-4, "dy"), (4, "dy")])
def test_direction_of_motion(step, axis):
    start = 30
    path = [(start + step * k, 30) if axis == "dx" else (30, start + step * k) for k in range(4)]
    feature = parts(motion_features(clip_of(path)[None], CFG)[0])
    assert np.sign(feature[axis][RED_BIN]) == np.sign(step)
    other = "dy" if axis == "dx" else "dx"
    assert abs(feature[other][RED_BIN]) < 0.1 * abs(feature[axis][RED_BIN])
    assert feature["gained"][RED_BIN] > 0 and feature["lost"][RED_BIN] > 0


def test_appear_and_disappear_are_mirror_images():
    appear = parts(motion_features(clip_of([None, None, (20, 20), (20, 20)])[None], CFG)[0])
    vanish = parts(motion_features(clip_of([(20, 20), (20, 20), None, None])[None], CFG)[0])
    assert appear["gained"][RED_BIN] > 0 and appear["lost"][RED_BIN] == 0
    assert vanish["lost"][RED_BIN] > 0 and vanish["gained"][RED_BIN] == 0
    assert appear["gained"][RED_BIN] == pytest.approx(vanish["lost"][RED_BIN])
    assert appear["dx"][RED_BIN] == 0      # nothing moved: no direction


def test_static_clip_has_no_motion_and_clips_are_independent():
    still = clip_of([(20, 20)] * 4)
    moving = clip_of([(10 + 4 * k, 20) for k in range(4)])
    features = motion_features(np.stack([still, moving]), CFG)          # [2, dim]
    assert features.shape == (2, CFG.dim) and features.dtype == np.float32
    assert not features[0].any() and features[1].any()
    assert np.array_equal(features[1], motion_features(moving[None], CFG)[0])


def test_large_frames_are_strided_and_one_frame_is_refused():
    big = np.repeat(np.repeat(clip_of([(10 + 4 * k, 20) for k in range(4)]), 4, 1), 4, 2)   # 256 px
    small = motion_features(clip_of([(10 + 4 * k, 20) for k in range(4)])[None], CFG)[0]
    assert np.allclose(motion_features(big[None], CFG)[0], small, atol=0.05)
    with pytest.raises(ValueError, match=">= 2 frames"):
        motion_features(clip_of([(0, 0)])[None], CFG)
    with pytest.raises(ValueError, match="frames_per_clip >= 2"):
        ExtractConfig(frames_per_clip=1, motion=CFG)


class ColourBackbone:
    """Frame embedding = mean colour tiled to 6 dims (a stand-in with the Backbone attributes the store needs)."""
    name, weights, image_size, embed_dim, token_dim, vocab_size = "colour", "", 64, 6, 4, 0

    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(frames).float().mean(dim=(1, 2)).repeat(1, 2) / 255.0


def test_store_keeps_motion_beside_the_clips(tmp_path):
    backbone, cfg = ColourBackbone(), ExtractConfig(frames_per_clip=4, motion=CFG)
    clip_frames = np.stack([clip_of([(10 + 4 * k, 20) for k in range(4)]), clip_of([(20, 20)] * 4)])
    clips, motion = encode_clips(backbone, clip_frames, CFG)                       # [2, 6], [2, dim]
    path = tmp_path / "store.h5"
    with FeatureStoreWriter(path, store_meta(backbone, cfg)) as writer:
        with pytest.raises(ValueError, match="motion features were not given"):
            writer.put_video("v0", clips=clips)
        writer.put_video("v0", clips=clips, motion=motion, clip_len=2.0, duration=4.0)
    with FeatureStore(path) as store:
        grounding = store.grounding_clips("v0")
        assert grounding.shape == (2, 6 + CFG.dim) and store.meta.motion_dim == CFG.dim
        assert torch.allclose(grounding[:, 6:], torch.from_numpy(motion), atol=1e-3)   # fp16 storage
    with pytest.raises(StoreError, match="motion"):
        FeatureStore(path, expect=store_meta(backbone, ExtractConfig(frames_per_clip=4,
                                                                     motion=MotionConfig(hue_bins=6))))
    plain = tmp_path / "plain.h5"
    with FeatureStoreWriter(plain, store_meta(backbone, ExtractConfig())) as writer:
        with pytest.raises(ValueError, match="motion features were given"):
            writer.put_video("v0", clips=clips, motion=motion)
        writer.put_video("v0", clips=clips)
    with FeatureStore(plain) as store:
        assert store.grounding_clips("v0").shape == (2, 6)
