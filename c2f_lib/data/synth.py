"""SynthMoments: a procedurally generated video-moment benchmark with exact ground truth.

Each video shows 2-4 actors (colour x shape x size) on a textured background; each actor does a
few timed actions (moves left/right/up/down, grows, shrinks, spins, blinks, appears, disappears,
changes colour). Actions of different actors overlap in time. Every event gets one fine caption
(a moment query with its exact window) and every video several coarse captions.

What makes it a benchmark rather than a toy:
* motion words need time: a single frame cannot tell "moves left" from "moves right";
* captions are compositional and hard negatives are built in: a "same actors" twin of a video has
  the same cast doing other things, a "recoloured" twin repeats the script with other colours;
* the `test_cg` split holds out (colour, action) pairs that never occur in train/val/test
  (Charades-CG style novel compositions); its moment queries are exactly those novel events;
* events are placed uniformly over the video (novel ones too), so where a moment sits says little
  about it: the text- and video-blind window prior finds ~15 % of moments, where a planner that starts
  every actor early hands position-only answers a third to a half of them (the bias Charades-CD
  removes from Charades-STA).

Generation is deterministic (same seed -> byte-identical jsonl, identical frames), sized by
`SynthConfig`, atomic and resumable: a rerun with the same config reuses valid videos, a changed
config regenerates everything.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from c2f_lib.data import synth_grammar as grammar
from c2f_lib.data import synth_render as render
from c2f_lib.data.schema import MomentQuery, VideoCaptions, write_captions, write_moments
from c2f_lib.data.synth_render import EFFECTS, ActorState, encode_mp4, render_frames
from c2f_lib.errors import MissingFileError
from c2f_lib.progress import progress
from c2f_lib.utils import atomic_write_json, provenance, read_json

SPLITS = ("train", "val", "test", "test_cg")
DATASET = "synthmoments"
GENERATOR_VERSION = 2  # recorded in meta.json; the fingerprint also hashes the generator's source

MARGIN = 0.12                   # actors stay this far (fraction of the side) from the border
SCALE_RANGE = (0.55, 1.65)
TIME_STEP = 0.5                 # event boundaries are multiples of this (seconds)
MIN_GAP_S = 0.5                 # pause between two events of one actor (seconds)
HIDDEN_START_PROB = 0.15        # an actor starts invisible and later appears
HELDOUT_ACTIONS = ("move_left", "move_right", "move_up", "move_down", "grow", "shrink", "spin", "blink")


@dataclass
class SynthConfig:
    """All generation knobs. Defaults are the notebook's interactive size (a few seconds)."""
    seed: int = 0
    n_train_videos: int = 40
    n_val_videos: int = 10
    n_test_videos: int = 10
    n_test_cg_videos: int = 10
    min_duration: float = 16.0      # seconds; rounded to whole clips of `clip_len`
    max_duration: float = 30.0
    fps: float = 4.0
    frame_size: int = 64
    n_coarse_captions: int = 5
    min_actors: int = 2
    max_actors: int = 4
    max_events_per_actor: int = 3
    min_event_s: float = 2.0        # >= 2 s so that every motion spans several frames
    max_event_s: float = 8.0
    n_heldout_pairs: int = 4        # (colour, action) pairs reserved for test_cg
    twin_prob: float = 0.35         # chance that a video is a hard-negative twin of the previous one
    clip_len: float = 2.0           # saliency clip length (seconds), QVHighlights style
    codec: str = "mpeg4"            # or "libx264"

    def __post_init__(self) -> None:
        if not 0 < self.min_duration <= self.max_duration:
            raise ValueError(f"need 0 < min_duration <= max_duration, got {self.min_duration}, {self.max_duration}")
        if self.min_duration < 2 * self.min_event_s:
            raise ValueError(f"min_duration {self.min_duration} too short for events of >= {self.min_event_s} s")
        if not 1 <= self.min_actors <= self.max_actors <= len(grammar.COLOURS):
            raise ValueError(f"bad actor range [{self.min_actors}, {self.max_actors}]")
        if self.n_heldout_pairs < 1 and self.n_test_cg_videos > 0:
            raise ValueError("test_cg needs n_heldout_pairs >= 1")
        if self.fps <= 0 or self.frame_size < 16:
            raise ValueError(f"need fps > 0 and frame_size >= 16, got {self.fps}, {self.frame_size}")

    def split_sizes(self) -> dict[str, int]:
        return dict(zip(SPLITS, (self.n_train_videos, self.n_val_videos, self.n_test_videos,
                                 self.n_test_cg_videos)))

    def fingerprint(self) -> str:
        """Identifies the output: the config plus the generator's own source (a code change that
        alters the videos must not reuse old ones)."""
        digest = hashlib.sha256(json.dumps({"config": asdict(self), "version": GENERATOR_VERSION},
                                           sort_keys=True).encode())
        for module in (grammar, render):
            digest.update(Path(module.__file__).read_bytes())
        digest.update(Path(__file__).read_bytes())
        return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- planning
def heldout_pairs(cfg: SynthConfig) -> list[tuple[str, str]]:
    """(colour, action) pairs reserved for test_cg: distinct colours and distinct actions, so every
    held-out colour and action still occurs in training with other partners."""
    rng = np.random.default_rng([cfg.seed, 7])
    colours = rng.permutation(list(grammar.COLOURS))
    actions = rng.permutation(list(HELDOUT_ACTIONS))
    n = min(cfg.n_heldout_pairs, len(colours), len(actions))
    return sorted((str(c), str(a)) for c, a in zip(colours[:n], actions[:n]))


def _snap(t: float) -> float:
    return round(t / TIME_STEP) * TIME_STEP


def _state_ok(state: ActorState) -> bool:
    return (MARGIN <= state.x <= 1 - MARGIN and MARGIN <= state.y <= 1 - MARGIN
            and SCALE_RANGE[0] <= state.scale <= SCALE_RANGE[1])


def _sample_actors(rng: np.random.Generator, cfg: SynthConfig) -> list[dict]:
    n = int(rng.integers(cfg.min_actors, cfg.max_actors + 1))
    identities = [(c, s) for c in grammar.COLOURS for s in grammar.SHAPES]
    chosen = rng.choice(len(identities), size=n, replace=False)
    actors, positions = [], []
    for i, idx in enumerate(chosen):
        colour, shape = identities[idx]
        for _ in range(50):  # spread actors out; accept the last draw if the scene is crowded
            x, y = (round(float(v), 3) for v in rng.uniform(0.22, 0.78, size=2))
            if all(math.hypot(x - px, y - py) > 0.25 for px, py in positions):
                break
        positions.append((x, y))
        actors.append({
            "id": i, "colour": colour, "shape": shape,
            "size": str(rng.choice(list(grammar.SIZES))),
            "initial": asdict(ActorState(x=x, y=y, scale=1.0, angle=0.0,
                                         alpha=0.0 if rng.random() < HIDDEN_START_PROB else 1.0,
                                         rgb=grammar.COLOURS[colour].rgb)),
        })
    return actors


def _colour_targets(actor: dict, colour: str, actors: list[dict], events: list[dict]) -> list[str]:
    """Colours `actor` may turn into without looking like another actor of its shape."""
    taken = {colour}
    for other in actors:
        if other["id"] != actor["id"] and other["shape"] == actor["shape"]:
            taken.add(other["colour"])
            taken.update(e["params"]["to"] for e in events
                         if e["actor"]["id"] == other["id"] and e["action"] == "change_colour")
    return [c for c in grammar.COLOURS if c not in taken]


def _feasible(actor: dict, state: ActorState, colour: str, used: set[str], actors: list[dict],
              events: list[dict], rng: np.random.Generator) -> list[tuple[str, dict]]:
    """(action, params) the actor can do next from `state` and still be a valid, visible scene."""
    options = []
    for action in grammar.ACTIONS:
        if action in used or (state.alpha == 0.0) != (action == "appear"):
            continue
        if action == "spin" and not grammar.SHAPES[actor["shape"]].rotation_visible:
            continue
        params: dict[str, Any] = {}
        if action == "change_colour":
            targets = _colour_targets(actor, colour, actors, events)
            if not targets:
                continue
            params = {"to": str(rng.choice(targets))}
        if action == "blink":
            params = {"cycles": 0}  # set once the duration is known
        if _state_ok(EFFECTS[action](state, 1.0, params)):
            options.append((action, params))
    return options


def _event_starts(rng: np.random.Generator, lengths: list[float], duration: float) -> list[float] | None:
    """Starts of sequential events of these lengths placed uniformly at random in [0, duration], at
    least MIN_GAP_S apart (None when they do not fit). Uniform placement keeps position from giving the
    moment away: the window prior (evaluation/window_prior.py) is then a weak, honest reference."""
    slack = duration - sum(lengths) - MIN_GAP_S * (len(lengths) - 1)
    if slack < 0:
        return None
    cuts = np.sort(rng.uniform(0.0, slack, size=len(lengths)))   # free time before each event
    starts, earliest = [], 0.0
    for k, cut in enumerate(cuts):
        start = max(earliest, _snap(cut + sum(lengths[:k]) + MIN_GAP_S * k))
        starts.append(start)
        earliest = start + lengths[k] + MIN_GAP_S
    return starts


def _plan_events(rng: np.random.Generator, cfg: SynthConfig, actors: list[dict], duration: float,
                 heldout: set[tuple[str, str]], novel: bool) -> list[dict]:
    """Sequential events per actor (non-overlapping for one actor, overlapping across actors), placed
    uniformly over the video. In a `novel` (test_cg) video one event slot per actor, drawn uniformly,
    takes a held-out (colour, action) pair when one is feasible, so novel moments sit where any moment
    may; no other event uses a held-out pair."""
    events: list[dict] = []
    for actor in actors:
        state, colour, used = ActorState(**actor["initial"]), actor["colour"], set()
        lengths = [_snap(rng.uniform(cfg.min_event_s, cfg.max_event_s))
                   for _ in range(int(rng.integers(1, cfg.max_events_per_actor + 1)))]
        while (starts := _event_starts(rng, lengths, duration)) is None:
            lengths.pop()
        novel_slot = int(rng.integers(len(lengths))) if novel else -1
        for slot, (t, length) in enumerate(zip(starts, lengths)):
            end = min(t + length, duration)
            if end - t < cfg.min_event_s:
                break
            options = _feasible(actor, state, colour, used, actors, events, rng)
            unseen = [o for o in options if (colour, o[0]) in heldout]
            options = unseen if slot == novel_slot and unseen else [o for o in options if o not in unseen]
            if not options:
                break
            action, params = options[int(rng.integers(len(options)))]
            if action == "blink":
                params = {"cycles": max(2, int((end - t) / 1.0))}
            events.append({"start": t, "end": end, "action": action, "params": params,
                           "actor": {"id": actor["id"], "colour": colour, "shape": actor["shape"],
                                     "size": actor["size"]},
                           "scale_at_start": state.scale})
            used.add(action)
            state = EFFECTS[action](state, 1.0, params)
            colour = params.get("to", colour)
    return sorted(events, key=lambda e: (e["start"], e["actor"]["id"]))


def _recolour(rng: np.random.Generator, base: dict) -> tuple[list[dict], list[dict]] | None:
    """Same shapes, sizes, positions and script as `base`, other colours (a hard negative for
    'same action, different colour'). None when no valid recolouring was drawn."""
    mapping: dict[int, str] = {}
    for actor in base["actors"]:
        choices = [c for c in grammar.COLOURS if c != actor["colour"]
                   and all(not (o["shape"] == actor["shape"] and mapping.get(o["id"]) == c) for o in base["actors"])]
        mapping[actor["id"]] = str(rng.choice(choices))
    actors = [dict(a, colour=mapping[a["id"]],
                   initial=dict(a["initial"], rgb=grammar.COLOURS[mapping[a["id"]]].rgb)) for a in base["actors"]]
    colours = {a["id"]: a["colour"] for a in actors}
    events = []
    for event in base["events"]:
        actor_id = event["actor"]["id"]
        params = dict(event["params"])
        if event["action"] == "change_colour":
            targets = [c for c in grammar.COLOURS if c != colours[actor_id]
                       and all(o["colour"] != c for o in actors if o["id"] != actor_id
                               and o["shape"] == event["actor"]["shape"])]
            if not targets:
                return None
            params["to"] = str(rng.choice(targets))
        events.append(dict(event, params=params, actor=dict(event["actor"], colour=colours[actor_id])))
        colours[actor_id] = params.get("to", colours[actor_id])
    return actors, events


def _pairs(events: list[dict]) -> set[tuple[str, str]]:
    return {(e["actor"]["colour"], e["action"]) for e in events}


def _ambiguous(actors: list[dict], events: list[dict]) -> bool:
    """True when two actors of one shape ever share a colour (captions would not pick one out)."""
    seen: dict[tuple[str, str], int] = {}
    for actor in actors:
        names = {actor["colour"]} | {e["params"]["to"] for e in events
                                     if e["actor"]["id"] == actor["id"] and e["action"] == "change_colour"}
        for colour in names:
            if seen.setdefault((colour, actor["shape"]), actor["id"]) != actor["id"]:
                return True
    return False


def _captions(rng: np.random.Generator, cfg: SynthConfig, video: dict) -> tuple[list[str], list[list[int]]]:
    """Fine captions go into each event; returns the coarse captions of the video and, per caption, the
    indices of the events it names (none for the scene caption, which names who is there)."""
    for event in video["events"]:
        a = event["actor"]
        size = a["size"] if event["scale_at_start"] == 1.0 and rng.random() < 0.4 else None
        event["caption"] = grammar.fine_caption(rng, a["colour"], a["shape"], size, event["action"],
                                                event["params"].get("to"))
    coarse = [grammar.scene_caption(rng, [(a["colour"], a["shape"], a["size"]) for a in video["actors"]],
                                    video["background"])]
    named: list[list[int]] = [[]]
    events = video["events"]
    while len(coarse) < cfg.n_coarse_captions:
        k = int(rng.integers(1, min(3, len(events)) + 1))
        chosen = sorted(rng.choice(len(events), size=k, replace=False))
        clauses = [(grammar.event_clause(rng, events[i]["actor"]["colour"], events[i]["actor"]["shape"],
                                         events[i]["action"], events[i]["params"].get("to")),
                    events[i]["start"], events[i]["end"]) for i in chosen]
        prefix = grammar.COARSE_EVENT_PREFIXES[int(rng.integers(len(grammar.COARSE_EVENT_PREFIXES)))]
        coarse.append(prefix + grammar.join_clauses(rng, clauses))
        named.append([int(i) for i in chosen])
    return coarse[:cfg.n_coarse_captions], named[:cfg.n_coarse_captions]


def _plan_video(cfg: SynthConfig, split: str, index: int, previous: dict | None,
                heldout: set[tuple[str, str]]) -> dict:
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), index])
    novel = split == "test_cg"
    n_clips = int(rng.integers(math.ceil(cfg.min_duration / cfg.clip_len),
                               math.floor(cfg.max_duration / cfg.clip_len) + 1))
    duration = max(n_clips, 1) * cfg.clip_len
    twin_kind = None
    if previous is not None and previous["twin_of"] is None and rng.random() < cfg.twin_prob:
        twin_kind = str(rng.choice(["same_actors", "recoloured"]))
        duration = previous["duration"]
    for _ in range(100):  # rejection sampling; deterministic because rng is
        if twin_kind == "recoloured":
            drawn = _recolour(rng, previous)
            if drawn is None:
                twin_kind = "same_actors"
                continue
            actors, events = drawn
        else:
            actors = previous["actors"] if twin_kind == "same_actors" else _sample_actors(rng, cfg)
            events = _plan_events(rng, cfg, actors, duration, heldout, novel)
        pairs = _pairs(events)
        if len(events) >= 2 and not _ambiguous(actors, events) and bool(pairs & heldout) == novel:
            break
        if twin_kind == "recoloured":
            twin_kind = "same_actors"
    else:
        raise RuntimeError(f"could not plan {split} video {index} in 100 draws; loosen the config")
    video = {
        "vid": f"synth_{split}_{index:04d}", "split": split, "duration": duration,
        "n_frames": int(round(duration * cfg.fps)), "fps": cfg.fps,
        "background": str(rng.choice(list(grammar.BACKGROUNDS))),
        "render_seed": int(rng.integers(2**31)), "actors": [dict(a) for a in actors],
        "events": [dict(e) for e in events],
        "twin_of": previous["vid"] if twin_kind else None, "twin_kind": twin_kind,
    }
    for j, event in enumerate(video["events"]):
        event["qid"] = f"{video['vid']}_e{j:02d}"
        event["novel"] = (event["actor"]["colour"], event["action"]) in heldout
    video["coarse_captions"], video["caption_events"] = _captions(rng, cfg, video)
    return video


def plan_dataset(cfg: SynthConfig) -> list[dict]:
    """Every video's actors, events and captions (no pixels): cheap and deterministic."""
    heldout = set(heldout_pairs(cfg))
    videos = []
    for split, n in cfg.split_sizes().items():
        previous = None
        for i in range(n):
            previous = _plan_video(cfg, split, i, previous, heldout)
            videos.append(previous)
    return videos


# ----------------------------------------------------------------------------- records
def saliency(window: tuple[float, float], clip_len: float) -> tuple[list[int], list[list[int]]]:
    """Clips overlapping the window and a 1..4 score each (the share of the clip the event covers)."""
    start, end = window
    ids, scores = [], []
    for c in range(int(start // clip_len), math.ceil(end / clip_len)):
        overlap = min(end, (c + 1) * clip_len) - max(start, c * clip_len)
        if overlap > 0:
            ids.append(c)
            scores.append([max(1, round(4 * overlap / clip_len))])
    return ids, scores


def moment_records(video: dict, clip_len: float) -> list[MomentQuery]:
    """One query per event; test_cg keeps only the novel-composition events."""
    records = []
    for event in video["events"]:
        if video["split"] == "test_cg" and not event["novel"]:
            continue
        ids, scores = saliency((event["start"], event["end"]), clip_len)
        records.append(MomentQuery(
            qid=event["qid"], query=event["caption"], vid=video["vid"], duration=video["duration"],
            relevant_windows=[[event["start"], event["end"]]], relevant_clip_ids=ids, saliency_scores=scores,
            meta={"action": event["action"], "colour": event["actor"]["colour"],
                  "shape": event["actor"]["shape"], "novel": event["novel"]}))
    return records


def caption_record(video: dict) -> VideoCaptions:
    return VideoCaptions(vid=video["vid"], captions=video["coarse_captions"], duration=video["duration"],
                         meta={"twin_of": video["twin_of"], "twin_kind": video["twin_kind"],
                               "caption_events": video["caption_events"]})


# ----------------------------------------------------------------------------- writing
def _video_ok(path: Path, n_frames: int) -> bool:
    """A finished video: present and with the planned number of frames (writes are atomic)."""
    import av

    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        with av.open(str(path)) as container:
            return container.streams.video[0].frames == n_frames
    except (av.error.FFmpegError, IndexError):
        return False


def _annotation_files(out_dir: Path) -> list[Path]:
    return ([out_dir / f"moments_{s}.jsonl" for s in SPLITS] + [out_dir / f"captions_{s}.jsonl" for s in SPLITS]
            + [out_dir / "meta.json"])


def is_complete(out_dir: str | Path, cfg: SynthConfig) -> bool:
    """True when `out_dir` holds a finished generation of exactly this config."""
    out_dir = Path(out_dir)
    meta_path = out_dir / "meta.json"
    if not all(p.exists() for p in _annotation_files(out_dir)):
        return False
    meta = read_json(meta_path)
    return (meta.get("fingerprint") == cfg.fingerprint()
            and all(_video_ok(out_dir / "videos" / f"{v['vid']}.mp4", v["n_frames"]) for v in meta["videos"]))


def generate_synthmoments(out_dir: str | Path, cfg: SynthConfig) -> dict:
    """Write SynthMoments to `out_dir` (RunPaths(run_dir).dataset_dir("synthmoments")):
    moments_<split>.jsonl, captions_<split>.jsonl, videos/<vid>.mp4, meta.json (written last).
    Returns a summary: counts per split, videos rendered/reused, seconds spent rendering/encoding."""
    out_dir = Path(out_dir)
    start = time.perf_counter()
    videos = plan_dataset(cfg)
    summary: dict[str, Any] = {"dataset_dir": str(out_dir), "fingerprint": cfg.fingerprint(),
                               "splits": {s: {"videos": 0, "queries": 0} for s in SPLITS},
                               "rendered": 0, "reused": 0, "render_s": 0.0, "encode_s": 0.0}
    for video in videos:
        summary["splits"][video["split"]]["videos"] += 1
        summary["splits"][video["split"]]["queries"] += len(moment_records(video, cfg.clip_len))
    if is_complete(out_dir, cfg):
        summary["reused"] = len(videos)
        summary["seconds"] = time.perf_counter() - start
        return summary

    video_dir = out_dir / "videos"
    video_dir.mkdir(parents=True, exist_ok=True)
    stamp = video_dir / ".fingerprint"
    if not stamp.exists() or stamp.read_text().strip() != cfg.fingerprint():
        for path in _annotation_files(out_dir) + sorted(video_dir.glob("*.mp4")):
            path.unlink(missing_ok=True)  # a different config: nothing old is valid
        stamp.write_text(cfg.fingerprint() + "\n")

    for video in progress(videos, desc="SynthMoments videos", unit="video"):
        path = video_dir / f"{video['vid']}.mp4"
        if _video_ok(path, video["n_frames"]):
            summary["reused"] += 1
            continue
        t0 = time.perf_counter()
        frames = render_frames(video, cfg.frame_size, cfg.fps)  # [T, H, W, 3]
        t1 = time.perf_counter()
        encode_mp4(frames, path, cfg.fps, cfg.codec)
        summary["render_s"] += t1 - t0
        summary["encode_s"] += time.perf_counter() - t1
        summary["rendered"] += 1

    for split in SPLITS:
        in_split = [v for v in videos if v["split"] == split]
        write_moments(out_dir / f"moments_{split}.jsonl",
                      [r for v in in_split for r in moment_records(v, cfg.clip_len)])
        write_captions(out_dir / f"captions_{split}.jsonl", [caption_record(v) for v in in_split])
    atomic_write_json(out_dir / "meta.json", {
        "dataset": DATASET, "fingerprint": cfg.fingerprint(), "generator_version": GENERATOR_VERSION,
        "config": asdict(cfg), "heldout_pairs": [list(p) for p in heldout_pairs(cfg)],
        "vocabulary": grammar.vocabulary(), "provenance": provenance(asdict(cfg), cfg.seed),
        "videos": videos,
    })
    summary["seconds"] = time.perf_counter() - start
    return summary


def load_meta(out_dir: str | Path) -> dict:
    """meta.json of a generated SynthMoments folder."""
    path = Path(out_dir) / "meta.json"
    if not path.exists():
        raise MissingFileError("no SynthMoments here; run generate_synthmoments first", path)
    return read_json(path)
