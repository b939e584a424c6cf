"""Rendering SynthMoments videos: actor states over time -> RGB frames -> mp4.

An actor's state (position, scale, angle, opacity, colour) changes only during its events; each
action is a small function `effect(start_state, progress, params) -> state` in `EFFECTS`. The
planner (synth.py) uses the same functions at progress 1 to know where an event leaves the actor,
so what is rendered is exactly what the annotations say. Coordinates are fractions of the frame
side, so any frame size renders the same scene.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np

from c2f_lib.data.synth_grammar import BACKGROUNDS, COLOURS
from c2f_lib.utils import atomic_path

BASE_RADIUS = {"small": 0.085, "large": 0.13}  # fraction of the frame side
MOVE_DISTANCE = 0.3        # how far one move event travels (fraction of the frame side)
GROW_FACTOR = 1.6
SHRINK_FACTOR = 0.6
BLINK_PERIOD_S = 1.0       # one off/on cycle; at 4 fps: 2 frames on, 2 off


@dataclass(frozen=True)
class ActorState:
    x: float                      # centre, fraction of width (0 = left)
    y: float                      # centre, fraction of height (0 = top)
    scale: float                  # multiplies the base radius of the actor's size
    angle: float                  # radians
    alpha: float                  # opacity in [0, 1]
    rgb: tuple[float, float, float]


def _lerp(a: float, b: float, p: float) -> float:
    return a + (b - a) * p


def _move(dx: float, dy: float) -> Callable[[ActorState, float, dict], ActorState]:
    return lambda s, p, _: replace(s, x=s.x + dx * p, y=s.y + dy * p)


def _scale(factor: float) -> Callable[[ActorState, float, dict], ActorState]:
    return lambda s, p, _: replace(s, scale=s.scale * _lerp(1.0, factor, p))


def _blink(s: ActorState, p: float, params: dict) -> ActorState:
    # params["cycles"] off/on cycles over the event; ends visible.
    phase = (p * params["cycles"]) % 1.0
    return replace(s, alpha=0.0 if (0.0 < phase < 0.5 and p < 1.0) else 1.0)


def _change_colour(s: ActorState, p: float, params: dict) -> ActorState:
    target = COLOURS[params["to"]].rgb
    return replace(s, rgb=tuple(_lerp(a, b, p) for a, b in zip(s.rgb, target)))


EFFECTS: dict[str, Callable[[ActorState, float, dict], ActorState]] = {
    "move_left": _move(-MOVE_DISTANCE, 0.0),
    "move_right": _move(MOVE_DISTANCE, 0.0),
    "move_up": _move(0.0, -MOVE_DISTANCE),
    "move_down": _move(0.0, MOVE_DISTANCE),
    "grow": _scale(GROW_FACTOR),
    "shrink": _scale(SHRINK_FACTOR),
    "spin": lambda s, p, _: replace(s, angle=s.angle + 2 * math.pi * p),
    "blink": _blink,
    "appear": lambda s, p, _: replace(s, alpha=p),
    "disappear": lambda s, p, _: replace(s, alpha=1.0 - p),
    "change_colour": _change_colour,
}


def state_at(initial: ActorState, events: list[dict], t: float) -> ActorState:
    """State of one actor at time t; `events` are that actor's events, sorted, non-overlapping."""
    state = initial
    for event in events:
        if t < event["start"]:
            break
        progress = min(1.0, (t - event["start"]) / (event["end"] - event["start"]))
        state = EFFECTS[event["action"]](state, progress, event.get("params", {}))
    return state


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of a shape of circumradius r in rotated, centred coordinates (u right, v down)."""
    if shape == "circle":
        return u * u + v * v <= r * r
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * r
    if shape == "triangle":  # pointing up; inradius r/2
        inside = v <= 0.5 * r
        for normal_angle in (math.radians(-30), math.radians(210)):
            inside &= u * math.cos(normal_angle) + v * math.sin(normal_angle) <= 0.5 * r
        return inside
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3 * r) & (av <= r)) | ((av <= 0.3 * r) & (au <= r))
    if shape == "bar":
        return (np.abs(u) <= 1.1 * r) & (np.abs(v) <= 0.3 * r)
    raise ValueError(f"unknown shape {shape!r}")


def background_image(background: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A flat background with faint static texture (fixed per video). [H, W, 3] float32."""
    base = np.array(BACKGROUNDS[background][0], dtype=np.float32)
    texture = rng.normal(0.0, 4.0, size=(size, size, 1)).astype(np.float32)
    return np.clip(base + texture, 0, 255)


def render_frames(video: dict, frame_size: int, fps: float) -> np.ndarray:
    """All frames of one planned video. -> [T, H, W, 3] uint8."""
    n_frames = video["n_frames"]
    rng = np.random.default_rng(video["render_seed"])
    background = background_image(video["background"], frame_size, rng)
    coords = (np.arange(frame_size, dtype=np.float32) + 0.5)
    ys, xs = np.meshgrid(coords, coords, indexing="ij")  # [H, W] pixel centres
    by_actor = {a["id"]: [e for e in video["events"] if e["actor"]["id"] == a["id"]] for a in video["actors"]}
    frames = np.empty((n_frames, frame_size, frame_size, 3), dtype=np.uint8)
    for k in range(n_frames):
        t = k / fps
        image = background.copy()
        for actor in video["actors"]:
            state = state_at(ActorState(**actor["initial"]), by_actor[actor["id"]], t)
            if state.alpha <= 0.0:
                continue
            radius = BASE_RADIUS[actor["size"]] * state.scale * frame_size
            cx, cy = state.x * frame_size, state.y * frame_size
            # Only the box that can hold the shape (every shape lies within 1.2 radius of its centre).
            box = (slice(max(0, int(cy - 1.2 * radius)), min(frame_size, int(cy + 1.2 * radius) + 2)),
                   slice(max(0, int(cx - 1.2 * radius)), min(frame_size, int(cx + 1.2 * radius) + 2)))
            du, dv = xs[box] - cx, ys[box] - cy
            cos, sin = math.cos(state.angle), math.sin(state.angle)
            u, v = du * cos + dv * sin, -du * sin + dv * cos
            weight = (shape_mask(actor["shape"], u, v, radius) * np.float32(state.alpha))[..., None]  # [h, w, 1]
            image[box] = image[box] * (1.0 - weight) + np.asarray(state.rgb, np.float32) * weight
        frames[k] = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    return frames


def encode_mp4(frames: np.ndarray, path: str | Path, fps: float, codec: str = "mpeg4") -> None:
    """Write [T, H, W, 3] uint8 frames as an mp4 (yuv420p), atomically; single-threaded so that the
    bytes depend only on the frames."""
    import av

    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.codec_context.thread_count = 1
            if codec == "mpeg4":
                stream.bit_rate = 2_000_000  # ample for 64 px: near-lossless colours
            else:
                stream.codec_context.options = {"crf": "18", "preset": "veryfast"}
            for image in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


def decode_mp4(path: str | Path) -> np.ndarray:
    """Every frame of a video with PyAV. -> [T, H, W, 3] uint8."""
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
