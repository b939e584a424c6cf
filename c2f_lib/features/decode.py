"""Frame sampling from video files: decord when it works, PyAV otherwise, one interface.

Two samplings share one decode pass:
* "frames": N uniform frames. Split the decodable frames [0, T) into N segments with integer
  boundaries b = int(linspace(0, T, N+1)) (X-Pool / T-MASS); evaluation takes the middle frame
  (b_k + b_{k+1} - 1) // 2, training one random frame per segment (the last frame of a segment
  included, unlike X-Pool, which also crashes on one-frame segments). With T < N frames repeat.
* "clips": one window per clip_len seconds, [i*c, (i+1)*c); the frames whose presentation time
  falls inside a window are split the same way into `frames_per_clip` uniform picks. Times come
  from each frame's timestamp, so variable-frame-rate files are sampled by time, not by index.

Indices are always computed from frames that exist, never from a container's nominal count
(decord hangs or fails on indices past what decodes, decord#373). Both backends count demuxed
packets; when a damaged packet stops decoding early, PyAV records how many frames did decode
(`num_decodable`) and the sampling is recomputed over those frames, and a decord failure in
"auto" mode falls back to PyAV for that file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from c2f_lib.errors import UserError

Backend = Literal["auto", "decord", "pyav"]


class VideoDecodeError(UserError, RuntimeError):
    """A video that cannot be opened or decoded (the extractor records it and moves on)."""


def uniform_indices(num_available: int, num_frames: int, mode: str = "middle",
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """[num_frames] frame indices in [0, num_available): one per equal segment."""
    if num_available <= 0:
        raise ValueError("no frame to sample from")
    bounds = np.linspace(0, num_available, num_frames + 1).astype(np.int64)  # [N+1]
    first, last = bounds[:-1], np.maximum(bounds[1:] - 1, bounds[:-1])     # segment k = [first, last]
    if mode == "middle":
        picks = (first + last) // 2
    elif mode == "random":
        rng = rng or np.random.default_rng()
        picks = rng.integers(first, last + 1)
    else:
        raise ValueError(f"unknown sampling mode {mode!r}: use 'middle' or 'random'")
    return np.minimum(picks, num_available - 1)


def clip_windows(duration: float, clip_len: float) -> int:
    """Number of clips covering [0, duration): the last one may be partial."""
    return max(1, math.ceil(duration / clip_len - 1e-6))


def clip_indices(timestamps: np.ndarray, duration: float, clip_len: float,
                 frames_per_clip: int = 1) -> np.ndarray:
    """[L, frames_per_clip] frame indices for clip windows [i*c, (i+1)*c), by presentation time."""
    num_clips = clip_windows(duration, clip_len)
    out = np.empty((num_clips, frames_per_clip), dtype=np.int64)
    for i in range(num_clips):
        inside = np.flatnonzero((timestamps >= i * clip_len) & (timestamps < (i + 1) * clip_len))
        if len(inside):
            out[i] = inside[uniform_indices(len(inside), frames_per_clip)]
        else:  # frame rate below one frame per clip: take the frame nearest the window centre
            centre = (i + 0.5) * clip_len
            out[i] = int(np.abs(timestamps - centre).argmin())
    return out


@dataclass
class SampledVideo:
    """What one decode pass returns for one video."""

    frames: np.ndarray          # [N, H, W, 3] uint8, the "frames" sampling
    frame_indices: np.ndarray   # [N] decoded index of each frame
    clip_frames: np.ndarray     # [L, K, H, W, 3] uint8, K = frames_per_clip
    clip_indices: np.ndarray    # [L, K]
    fps: float                  # average frame rate (frames / duration)
    duration: float             # seconds, from the timestamps of the decodable frames
    num_decodable: int          # frames the video holds


class _DecordReader:
    def __init__(self, path: Path, short_side: int | None):
        import decord

        width = height = -1
        if short_side:
            probe = decord.VideoReader(str(path))
            h, w = probe[0].shape[:2]
            scale = short_side / min(h, w)
            width, height = _even(w * scale), _even(h * scale)
            del probe
        self._vr = decord.VideoReader(str(path), width=width, height=height, num_threads=1)
        if len(self._vr) == 0:
            raise VideoDecodeError("no video frames", path)
        stamps = self._vr.get_frame_timestamp(np.arange(len(self._vr)))  # [T, 2] start, end seconds
        self.timestamps = stamps[:, 0] - stamps[0, 0]
        self.duration = float(stamps[-1, 1] - stamps[0, 0])
        self.num_decodable = len(self.timestamps)

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames = self._vr.get_batch(list(map(int, indices))).asnumpy()  # [N, H, W, 3]
        self._vr.seek(0)  # releases decoder buffers (decord#197)
        return frames, indices


class _PyAVReader:
    def __init__(self, path: Path, short_side: int | None):
        import av

        self._path, self._short_side = path, short_side
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError("no video stream", path)
            stream = container.streams.video[0]
            pts = [p.pts for p in container.demux(stream) if p.pts is not None and p.size > 0]
            if not pts:
                raise VideoDecodeError("no video packets", path)
            base = float(stream.time_base)
            rate = float(stream.average_rate or stream.guessed_rate or 25)
        pts = np.sort(np.asarray(pts, dtype=np.float64))  # presentation order
        self.timestamps = (pts - pts[0]) * base
        self.duration = float(self.timestamps[-1] + 1.0 / rate)
        self.num_decodable = len(self.timestamps)  # lowered by get() when decoding stops early

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import av

        wanted = set(int(i) for i in indices)
        last_wanted = max(wanted)
        kept: dict[int, np.ndarray] = {}
        with av.open(str(self._path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            index = -1
            try:
                for index, frame in enumerate(container.decode(stream)):
                    if index in wanted:
                        kept[index] = self._to_array(frame)
                    if index >= last_wanted:
                        break
            except av.error.FFmpegError:  # a damaged packet: the frames after it do not decode
                self.num_decodable = index + 1
        if not kept:
            raise VideoDecodeError("no frame decodes", self._path)
        # Fewer frames decoded than the container listed: use the last frame that exists.
        last_ok = max(kept)
        actual = np.array([i if i in kept else last_ok for i in map(int, indices)], dtype=np.int64)
        return np.stack([kept[i] for i in actual]), actual

    def _to_array(self, frame) -> np.ndarray:
        if self._short_side:
            scale = self._short_side / min(frame.width, frame.height)
            frame = frame.reformat(width=_even(frame.width * scale), height=_even(frame.height * scale))
        return frame.to_ndarray(format="rgb24")


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def open_video(path: str | Path, backend: Backend = "auto", short_side: int | None = None):
    """A reader with `.timestamps` [T], `.duration` and `.get(indices) -> (frames, indices)`."""
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError("file not found", path)
    errors = []
    for name in (["decord", "pyav"] if backend == "auto" else [backend]):
        reader_cls = {"decord": _DecordReader, "pyav": _PyAVReader}.get(name)
        if reader_cls is None:
            raise ValueError(f"unknown decoding backend {name!r}: use auto, decord or pyav")
        try:
            return reader_cls(path, short_side)
        except ImportError as err:
            errors.append(f"{name}: not installed ({err})")
        except VideoDecodeError as err:
            errors.append(f"{name}: {err}")
        except Exception as err:  # decord raises DECORDError, PyAV its own error tree
            errors.append(f"{name}: {type(err).__name__}: {err}")
    raise VideoDecodeError(f"cannot decode ({'; '.join(errors)})", path)


def sample_video(path: str | Path, num_frames: int = 12, clip_len: float = 2.0, frames_per_clip: int = 1,
                 mode: str = "middle", rng: np.random.Generator | None = None, backend: Backend = "auto",
                 short_side: int | None = None) -> SampledVideo:
    """Decode the N uniform frames and the clip frames of one video in one pass."""
    reader = open_video(path, backend, short_side)
    try:
        return _sample(reader, path, num_frames, clip_len, frames_per_clip, mode, rng)
    except VideoDecodeError:
        if backend != "auto" or isinstance(reader, _PyAVReader):
            raise
    # decord opened the file but failed on a frame (e.g. one past a damaged packet): PyAV finds
    # how many frames really decode.
    return _sample(_PyAVReader(Path(path), short_side), path, num_frames, clip_len, frames_per_clip, mode, rng)


def _sample(reader, path, num_frames: int, clip_len: float, frames_per_clip: int, mode: str,
            rng: np.random.Generator | None) -> SampledVideo:
    rng_state = rng.bit_generator.state if rng is not None else None
    for _ in range(2):  # a second pass only when fewer frames decoded than the container lists
        total = reader.num_decodable
        stamps = reader.timestamps[:total]
        duration = reader.duration if total == len(reader.timestamps) else \
            float(stamps[-1] + reader.duration / len(reader.timestamps))
        if rng_state is not None:  # the same random draws on the second pass
            rng.bit_generator.state = rng_state
        picks = uniform_indices(total, num_frames, mode, rng)                    # [N]
        per_clip = clip_indices(stamps, duration, clip_len, frames_per_clip)     # [L, K]
        union = np.unique(np.concatenate([picks, per_clip.ravel()]))  # sorted: rows via searchsorted
        try:
            frames, actual = reader.get(union)
        except VideoDecodeError:
            raise
        except Exception as err:  # a file that opens but breaks mid-stream
            raise VideoDecodeError(f"decoding failed ({type(err).__name__}: {err})", path) from None
        if reader.num_decodable == total:
            break
    pick_rows, clip_rows = np.searchsorted(union, picks), np.searchsorted(union, per_clip)
    return SampledVideo(
        frames=frames[pick_rows], frame_indices=actual[pick_rows],
        clip_frames=frames[clip_rows], clip_indices=actual[clip_rows],
        fps=total / duration if duration > 0 else float("nan"),
        duration=duration, num_decodable=total,
    )
