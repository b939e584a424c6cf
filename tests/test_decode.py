"""Frame sampling: index rules, and decord / PyAV agreement on a video whose frame k shows k."""
from __future__ import annotations

import numpy as np
import pytest

from c2f_lib.features.decode import (VideoDecodeError, clip_indices, open_video, sample_video,
                                     uniform_indices)
from c2f_lib.features.testing import read_frame_number, write_numbered_video, zero_tail_of_frame_data


@pytest.fixture(scope="module")
def numbered_video(tmp_path_factory):
    return write_numbered_video(tmp_path_factory.mktemp("vid") / "numbered.mp4", num_frames=53, fps=10)


def test_uniform_indices_follow_xpool_segments():
    # T=10, N=3: boundaries [0, 3, 6, 10] -> middles 1, 4, 7 (X-Pool's integer boundaries).
    assert uniform_indices(10, 3).tolist() == [1, 4, 7]
    assert uniform_indices(2, 4).tolist() == [0, 0, 1, 1]          # short video: frames repeat
    rng = np.random.default_rng(0)
    draws = np.stack([uniform_indices(10, 3, "random", rng) for _ in range(300)])
    assert draws[:, 0].min() == 0 and draws[:, 0].max() == 2      # whole segment, last frame included
    assert draws[:, 2].min() == 6 and draws[:, 2].max() == 9
    assert uniform_indices(1, 3, "random", rng).tolist() == [0, 0, 0]  # one-frame segments do not crash


def test_clip_indices_by_time_handle_variable_frame_rate():
    # 4 fps for 2 s then 1 fps: frames at 0, .25, ..., 1.75, 2, 3, 4, 5
    times = np.concatenate([np.arange(8) * 0.25, [2.0, 3.0, 4.0, 5.0]])
    idx = clip_indices(times, duration=6.0, clip_len=2.0, frames_per_clip=2)
    assert idx.shape == (3, 2)
    assert all(1.0 * i * 2 <= times[j] < (i + 1) * 2 for i, row in enumerate(idx) for j in row)
    sparse = clip_indices(np.array([0.0, 5.0]), duration=6.0, clip_len=2.0)  # empty window -> nearest
    assert sparse[:, 0].tolist() == [0, 1, 1]  # centre 3 s is nearer 5 s than 0 s


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_backend_returns_the_frames_it_reports(numbered_video, backend):
    video = sample_video(numbered_video, num_frames=6, clip_len=2.0, frames_per_clip=2, backend=backend)
    assert video.num_decodable == 53 and abs(video.duration - 5.3) < 0.05
    assert video.frame_indices.tolist() == uniform_indices(53, 6).tolist()
    assert [read_frame_number(f) for f in video.frames] == video.frame_indices.tolist()
    assert video.clip_frames.shape[:2] == (3, 2)
    shown = [[read_frame_number(f) for f in row] for row in video.clip_frames]
    assert shown == video.clip_indices.tolist()
    for i, row in enumerate(video.clip_indices):  # at 10 fps clip i holds frames [20i, 20i+20)
        assert all(20 * i <= k < 20 * (i + 1) for k in row)


def test_backends_agree_and_resize(numbered_video):
    a = sample_video(numbered_video, num_frames=5, backend="pyav", short_side=32)
    b = sample_video(numbered_video, num_frames=5, backend="decord", short_side=32)
    assert a.frames.shape == b.frames.shape == (5, 32, 32, 3)
    assert a.frame_indices.tolist() == b.frame_indices.tolist()
    assert [read_frame_number(f) for f in a.frames] == [read_frame_number(f) for f in b.frames]
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).mean() < 12


def test_very_short_video(tmp_path):
    path = write_numbered_video(tmp_path / "short.mp4", num_frames=3, fps=10)
    video = sample_video(path, num_frames=8, clip_len=2.0, backend="pyav")
    assert video.frames.shape[0] == 8 and set(video.frame_indices.tolist()) <= {0, 1, 2}
    assert video.clip_frames.shape[0] == 1


def test_corrupt_and_truncated_videos(tmp_path, numbered_video):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    with pytest.raises(VideoDecodeError, match="junk.mp4"):
        open_video(junk)
    with pytest.raises(VideoDecodeError, match="not found"):
        open_video(tmp_path / "missing.mp4")
    # A file cut short: whatever is returned must be the frames it says it is.
    cut = tmp_path / "cut.mp4"
    data = numbered_video.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    try:
        video = sample_video(cut, num_frames=6, backend="pyav")
    except VideoDecodeError as err:
        assert "cut.mp4" in str(err)
    else:
        assert [read_frame_number(f) for f in video.frames] == video.frame_indices.tolist()


def test_over_reported_frame_count_never_indexes_past_what_decodes(tmp_path, numbered_video):
    # 53 packets listed, the last third damaged: only the frames before the damage decode.
    damaged = zero_tail_of_frame_data(numbered_video, tmp_path / "damaged.mp4")
    assert len(open_video(damaged, backend="pyav").timestamps) == 53
    for backend in ("pyav", "auto"):  # auto: decord fails on the damaged frames, PyAV takes over
        video = sample_video(damaged, num_frames=6, clip_len=2.0, backend=backend)
        assert 0 < video.num_decodable < 53
        assert video.frame_indices.tolist() == uniform_indices(video.num_decodable, 6).tolist()
        assert [read_frame_number(f) for f in video.frames] == video.frame_indices.tolist()
        assert video.clip_indices.max() < video.num_decodable
        assert [[read_frame_number(f) for f in row] for row in video.clip_frames] == video.clip_indices.tolist()
    with pytest.raises(VideoDecodeError, match="damaged.mp4"):  # decord alone: a clear error, no hang
        sample_video(damaged, num_frames=6, backend="decord")
