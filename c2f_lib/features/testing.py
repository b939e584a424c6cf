"""Tiny feature stores built from random tensors, for tests of the stages after features/.

The features carry a learnable signal, so a test can check that a model learns something:
a video's frames and its captions share a random "video vector"; clips inside a query's window
and that query's tokens share a random "query vector".
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from c2f_lib.data.schema import MomentQuery, VideoCaptions, parse_captions, parse_moment
from c2f_lib.features.store import StoreMeta
from c2f_lib.features.store_writer import FeatureStoreWriter


def random_records(num_videos: int = 6, queries_per_video: int = 2, duration: float = 20.0,
                   seed: int = 0) -> tuple[list[MomentQuery], list[VideoCaptions]]:
    """Annotations for `num_videos` videos: moment queries with one window each, one caption per video."""
    rng = np.random.default_rng(seed)
    moments, captions = [], []
    for v in range(num_videos):
        vid = f"vid{v:03d}"
        captions.append(VideoCaptions(vid=vid, captions=[f"caption of video {v}"], duration=duration))
        for q in range(queries_per_video):
            start = float(rng.uniform(0, duration - 4))
            end = float(min(duration, start + rng.uniform(2, 8)))
            moments.append(MomentQuery(qid=v * queries_per_video + q, query=f"query {q} in video {v}",
                                       vid=vid, duration=duration,
                                       relevant_windows=[[round(start, 1), round(end, 1)]]))
    return moments, captions


def make_random_store(path: str | Path, moments_records: Iterable[Any] = (),
                      captions_records: Iterable[Any] = (), dim: int = 32, token_dim: int | None = None,
                      num_frames: int = 4, clip_len: float = 2.0, noise: float = 0.5,
                      seed: int = 0) -> Path:
    """Write a store holding every video and text the records mention. Records: schema objects or dicts."""
    moments = [r if isinstance(r, MomentQuery) else parse_moment(r) for r in moments_records]
    captions = [r if isinstance(r, VideoCaptions) else parse_captions(r) for r in captions_records]
    token_dim = token_dim or dim
    rng = np.random.default_rng(seed)
    durations: dict[str, float] = {}
    for r in captions:
        durations.setdefault(r.vid, r.duration or 30.0)
    for r in moments:
        durations[r.vid] = max(durations.get(r.vid, 0.0), r.duration)
    video_vec = {vid: rng.standard_normal(dim) for vid in durations}
    meta = StoreMeta(backbone="random", weights=f"seed{seed}", num_frames=num_frames, clip_len=clip_len,
                     video_dim=dim, text_dim=dim, token_dim=token_dim)
    with FeatureStoreWriter(path, meta) as writer:
        clips = {}
        for vid, duration in durations.items():
            num_clips = max(1, math.ceil(duration / clip_len))
            clips[vid] = video_vec[vid] + noise * rng.standard_normal((num_clips, dim))  # [L, D]
        for r in moments:
            query_vec = rng.standard_normal(max(dim, token_dim))
            for start, end in r.relevant_windows:
                first, last = int(start // clip_len), math.ceil(end / clip_len)
                clips[r.vid][first:last] += query_vec[:dim]
            num_tokens = int(rng.integers(3, 9))
            tokens = query_vec[:token_dim] + noise * rng.standard_normal((num_tokens, token_dim))
            sentence = query_vec[:dim] + noise * rng.standard_normal(dim)
            writer.put_text(r.query, sentence=sentence, tokens=tokens)
        for vid, duration in durations.items():
            frames = video_vec[vid] + noise * rng.standard_normal((num_frames, dim))  # [N, D]
            writer.put_video(vid, frames=frames, frame_indices=np.arange(num_frames) * 5,
                             clips=clips[vid], duration=duration, fps=5.0, source="random")
        for r in captions:
            for caption in r.captions:
                writer.put_text(caption, sentence=video_vec[r.vid] + noise * rng.standard_normal(dim))
    return Path(path)


def write_numbered_video(path: str | Path, num_frames: int, fps: float = 10.0, size: int = 64,
                         codec: str = "mpeg4") -> Path:
    """An mp4 whose frame k shows k in binary: 8 large black/white blocks survive compression."""
    import av
    from fractions import Fraction

    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for k in range(num_frames):
            frame = av.VideoFrame.from_ndarray(numbered_frame(k, size), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def zero_tail_of_frame_data(src: str | Path, dst: str | Path, keep: float = 2 / 3) -> Path:
    """Copy of an mp4 whose frame data after the first `keep` share is zeroed, sizes unchanged.

    The container still lists every packet, but the damaged ones no longer decode: a file that
    over-reports its frame count, as real downloads cut or corrupted in transit do.
    """
    data = bytearray(Path(src).read_bytes())
    start, moov = data.find(b"mdat") + 4, data.find(b"moov")
    end = moov - 4 if moov > start else len(data)
    cut = start + int((end - start) * keep)
    data[cut:end] = bytes(end - cut)
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def numbered_frame(k: int, size: int = 64) -> np.ndarray:
    """[size, size, 3] uint8 image of the 8 bits of k (2 rows x 4 columns of blocks)."""
    image = np.zeros((size, size, 3), dtype=np.uint8)
    bh, bw = size // 2, size // 4
    for bit in range(8):
        if (k >> bit) & 1:
            r, c = divmod(bit, 4)
            image[r * bh:(r + 1) * bh, c * bw:(c + 1) * bw] = 255
    return image


def read_frame_number(image: np.ndarray) -> int:
    """Inverse of numbered_frame for a decoded (possibly resized, lossy) frame."""
    h, w = image.shape[:2]
    bh, bw = h // 2, w // 4
    value = 0
    for bit in range(8):
        r, c = divmod(bit, 4)
        block = image[r * bh + bh // 4:(r + 1) * bh - bh // 4, c * bw + bw // 4:(c + 1) * bw - bw // 4]
        value |= int(block.mean() > 127) << bit
    return value


TINY_OPEN_CLIP = "c2f-tiny-openclip"   # features/model_configs/c2f-tiny-openclip.json: a 64-px ViT, offline


def tiny_open_clip(device: str = "cpu", **overrides: Any):
    """A randomly initialised open_clip CLIP small enough for tests, behind OpenClipBackbone (no download).
    `overrides` go to open_clip.create_model (e.g. embed_dim, vision_cfg, text_cfg)."""
    import open_clip

    from c2f_lib.features.backbones import OpenClipBackbone, quiet_open_clip

    if TINY_OPEN_CLIP not in open_clip.list_models():
        open_clip.add_model_config(Path(__file__).resolve().parent / "model_configs")
    with quiet_open_clip():
        model = open_clip.create_model(TINY_OPEN_CLIP, pretrained=None, **overrides)
    return OpenClipBackbone(TINY_OPEN_CLIP, None, device=device, model=model, name=TINY_OPEN_CLIP)


# ----------------------------------------------------------------------------- miniature released trees
def write_released_tree(root: str | Path, moments: Iterable[Any], video_dims: dict[str, int] | None = None,
                        text_dir: str = "clip_text_features", text_dim: int = 16, clip_len: float = 2.0,
                        layout: str = "npz", seed: int = 0) -> Path:
    """A miniature copy of a released fine-stage feature tree for `moments` (MomentQuery or dicts):

    * layout "npz" (Moment-DETR / QD-DETR): `<root>/<source>/<vid>.npz` {"features": [L, D]} per video
      source and `<root>/<text_dir>/qid<qid>.npz` {"last_hidden_state": [Lq, Dt]};
    * layout "h5" (MESM, data/npy2hdf5.py): `<root>/<source>.hdf5` with one dataset per vid, and
      `<root>/<text_dir>.hdf5` with one per `qid<qid>`.

    Clips inside a query's windows share a direction with its tokens, so a model can learn from it. The
    sources' lengths differ by one clip, as CLIP and SlowFast do in the real release."""
    import h5py

    root = Path(root)
    video_dims = video_dims or {"slowfast_features": 24, "clip_features": 16}
    records = [r if isinstance(r, MomentQuery) else parse_moment(r) for r in moments]
    rng = np.random.default_rng(seed)
    durations: dict[str, float] = {}
    for r in records:
        durations[r.vid] = max(durations.get(r.vid, 0.0), r.duration)
    videos = {name: {} for name in video_dims}
    for k, (vid, duration) in enumerate(sorted(durations.items())):
        clips = max(2, math.ceil(duration / clip_len))
        for j, (name, dim) in enumerate(video_dims.items()):
            videos[name][vid] = rng.standard_normal((clips + (j % 2), dim)).astype(np.float32)
    texts = {}
    for r in records:
        direction = rng.standard_normal(max([text_dim, *video_dims.values()]))
        for name, dim in video_dims.items():
            for start, end in r.relevant_windows:
                videos[name][r.vid][int(start // clip_len):math.ceil(end / clip_len)] += 2 * direction[:dim]
        tokens = direction[:text_dim] + 0.5 * rng.standard_normal((int(rng.integers(3, 8)), text_dim))
        texts[f"qid{r.qid}"] = tokens.astype(np.float32)
    if layout == "npz":
        for name, by_vid in videos.items():
            (root / name).mkdir(parents=True, exist_ok=True)
            for vid, feats in by_vid.items():
                np.savez(root / name / f"{vid}.npz", features=feats)
        (root / text_dir).mkdir(parents=True, exist_ok=True)
        for stem, tokens in texts.items():
            np.savez(root / text_dir / f"{stem}.npz", last_hidden_state=tokens)
    elif layout == "h5":
        root.mkdir(parents=True, exist_ok=True)
        for name, by_vid in [*videos.items(), (text_dir, texts)]:
            with h5py.File(root / f"{name}.hdf5", "w") as f:
                for key, array in by_vid.items():
                    f.create_dataset(key, data=array)
    else:
        raise ValueError(f"layout must be npz or h5, got {layout!r}")
    return root


def write_qvhighlights_release(folder: str | Path, splits: dict[str, int], queries_per_video: int = 2,
                               duration: float = 30.0, seed: int = 0) -> dict[str, list[dict]]:
    """`<folder>/highlight_<split>_release.jsonl` in the QVHighlights format (windows on the 2-s grid,
    clip ids, three saliency raters) for `splits` = {split: number of videos}; returns the rows."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out, qid = {}, 0
    for split, n_videos in splits.items():
        rows = []
        for v in range(n_videos):
            vid = f"{split}vid{v:03d}_60.0_90.0"
            for _ in range(queries_per_video):
                start = 2 * int(rng.integers(0, int(duration // 2) - 4))
                end = start + 2 * int(rng.integers(2, 5))
                clip_ids = list(range(start // 2, end // 2))
                rows.append({"qid": qid, "query": f"query {qid} about video {v}", "duration": duration, "vid": vid,
                             "relevant_windows": [[start, end]], "relevant_clip_ids": clip_ids,
                             "saliency_scores": [[int(x) for x in rng.integers(1, 5, 3)] for _ in clip_ids]})
                qid += 1
        (folder / f"highlight_{split}_release.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[split] = rows
    return out


def write_msrvtt_release(folder: str | Path, n_train: int = 16, n_test: int = 6, captions_per_video: int = 3
                         ) -> list[VideoCaptions]:
    """MSR-VTT annotation files in their release layout (MSRVTT_train.9k.csv, MSRVTT_JSFUSION_test.csv,
    MSRVTT_data.json) for `n_train` + `n_test` videos; returns every video's captions."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train = [f"video{i}" for i in range(n_train)]
    test = [f"video{n_train + i}" for i in range(n_test)]
    (folder / "MSRVTT_train.9k.csv").write_text("video_id\n" + "".join(f"{v}\n" for v in train))
    (folder / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\n" + "".join(f"ret{i},msr{v[5:]},{v},a test clip of {v}\n"
                                                    for i, v in enumerate(test)))
    sentences = [{"video_id": v, "caption": f"caption {c} of {v}", "sen_id": i * captions_per_video + c}
                 for i, v in enumerate(train) for c in range(captions_per_video)]
    data = {"videos": [{"video_id": v, "start time": 0.0, "end time": 10.0} for v in train + test],
            "sentences": sentences}
    (folder / "MSRVTT_data.json").write_text(json.dumps(data))
    return ([VideoCaptions(vid=v, captions=[f"caption {c} of {v}" for c in range(captions_per_video)], duration=10.0)
             for v in train]
            + [VideoCaptions(vid=v, captions=[f"a test clip of {v}"], duration=10.0) for v in test])


def write_didemo_release(folder: str | Path, splits: dict[str, int]) -> dict[str, list[VideoCaptions]]:
    """DiDeMo paragraph csvs in the T-MASS release layout (`didemo_<split>_label.csv`) for `splits` =
    {split: number of videos}; video files named as released (mixed extensions). Returns each split's captions."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    extensions, out, n = (".mp4", ".mpg", ".MOV", ".m4v"), {}, 0
    for split, count in splits.items():
        rows, out[split] = [], []
        for _ in range(count):
            vid = f"{1000 + n}@N0{n % 3}_{n}"
            text = f"a person walks in video {n}. then the camera turns"
            rows.append(f"True,/data/didemo/all_videos/{vid}{extensions[n % 4]},tensor([[0]]),tensor([[31]]),"
                        f"{text},/data/formatted/{split}_{n}.pth\n")
            out[split].append(VideoCaptions(vid=vid, captions=[text]))
            n += 1
        (folder / f"didemo_{split}_label.csv").write_text(
            "success,video_path,starts,ends,text,formatted_data\n" + "".join(rows))
    return out


def write_tacos_cg_release(folder: str | Path, splits: dict[str, int], sentences_per_video: int = 3,
                           captions_per_video: int = 2, fps: float = 29.4, seconds: float = 40.0,
                           seed: int = 0) -> None:
    """TACoS-CG annotation files in their release layout for `splits` = {split: number of videos}:
    `cg_<split>.json` (whole-video captions, one row each) and `tacos.json` (all videos' step sentences,
    timestamps in frames)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    num_frames = int(seconds * fps)
    fine = {}
    for split, n_videos in splits.items():
        rows = []
        for v in range(n_videos):
            video = f"s{split}-d{v:02d}.avi"
            starts = sorted(int(x) for x in rng.integers(0, num_frames - 300, sentences_per_video))
            fine[video] = {"timestamps": [[s, s + int(rng.integers(120, 300))] for s in starts],
                           "sentences": [f"step {k} of {video}" for k in range(sentences_per_video)],
                           "fps": fps, "num_frames": num_frames}
            rows += [{"video_id": video, "summarized_sentence": f"summary {c} of {video}", "fps": fps,
                      "num_frames": num_frames} for c in range(captions_per_video)]
        (folder / f"cg_{split}.json").write_text(json.dumps(rows))
    (folder / "tacos.json").write_text(json.dumps(fine))


def write_video_folder(folder: str | Path, vids: Iterable[str], num_frames: int = 6, fps: float = 10.0,
                       size: int = 64, extensions: Iterable[str] = (".mp4",)) -> Path:
    """`<folder>/<vid><ext>` numbered videos (write_numbered_video; the i-th takes the (i mod n)-th of
    `extensions`, the container stays mp4), one more frame per video so their uniformly sampled frames
    differ: a raw-video tree for end-to-end tests (e.g. with write_msrvtt_release)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    extensions = list(extensions)
    for i, vid in enumerate(vids):
        path = folder / f"{vid}.mp4"
        write_numbered_video(path, num_frames + i, fps=fps, size=size)
        path.rename(folder / f"{vid}{extensions[i % len(extensions)]}")
    return folder
