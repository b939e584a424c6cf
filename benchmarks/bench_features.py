"""Feature extraction throughput: decode alone, encode alone, and the full `extract_dataset`, in frames/s.

Generated SynthMoments videos, a randomly initialised backbone (speed does not depend on the weights).
The frames counted per video are what extraction encodes: N uniform frames + one per clip
(frames_per_clip = 1). Measured in one process, each phase `--repeats` times (median):

* decode only:   the extractor's own DataLoader over the videos, frames discarded;
* encode only:   the backbone on the same frames already decoded into memory, plus the dataset's
                 texts (sentence + token features, in extraction's batches): the baseline, i.e. the
                 model work extraction cannot avoid;
* extraction:    extract_dataset into a fresh store (decode + encode + HDF5 writes).

Printed ratios: extraction / encode-only throughput (1.0 = decoding and I/O cost nothing on top of
the model), and the decode share of (decode + frame encode) time.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_features.py                 # CPU, tiny CLIP
    .venv/bin/python benchmarks/bench_features.py --device cuda --backbone ViT-B-32 \\
        --videos 64 --frame-size 224 --num-workers 8                                   # GPU, goal >= 0.8
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from c2f_lib.data.synth import SynthConfig, generate_synthmoments
from c2f_lib.features.backbones import Backbone, OpenClipBackbone
from c2f_lib.features.extract import ExtractConfig, _VideoDataset, dataset_annotations, extract_dataset
from c2f_lib.utils import seed_everything

BACKBONES = ("tinyclip", "ViT-B-32")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--backbone", default=None, choices=BACKBONES,
                   help="tinyclip (64 px) on cpu, ViT-B-32 (224 px, fp16 on cuda) by default on cuda")
    p.add_argument("--videos", type=int, default=6, help="SynthMoments videos to generate")
    p.add_argument("--frame-size", type=int, default=None, help="video side in pixels (default 64 cpu, 224 cuda)")
    p.add_argument("--num-workers", type=int, default=None, help="decoding processes (default 0 cpu, 8 cuda)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backend", default="auto", choices=["auto", "decord", "pyav"])
    p.add_argument("--work-dir", default=None, help="where videos and stores go (default: a temp dir)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    args.backbone = args.backbone or ("ViT-B-32" if cuda else "tinyclip")
    args.frame_size = args.frame_size or (224 if cuda else 64)
    args.num_workers = args.num_workers if args.num_workers is not None else (8 if cuda else 0)
    return args


def build_backbone(name: str, device: str) -> Backbone:
    """Random-init backbone: open_clip builds it with pretrained=None, nothing is downloaded."""
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here (torch.cuda.is_available() is False); "
                         "run without --device for the CPU benchmark")
    if name == "tinyclip":
        from c2f_lib.features.tiny_clip import TinyClipBackbone, TinyClipConfig, TinyVideoClip

        return TinyClipBackbone(TinyVideoClip(TinyClipConfig()).eval(), device=device, weights="random")
    precision = "fp16" if device == "cuda" else "fp32"
    return OpenClipBackbone(name, None, device=device, precision=precision, name=f"{name}-random")


def make_videos(work: Path, args: argparse.Namespace) -> Path:
    cfg = SynthConfig(seed=args.seed, n_train_videos=args.videos, n_val_videos=0, n_test_videos=0,
                      n_test_cg_videos=0, frame_size=args.frame_size)
    dataset_dir = work / "synthmoments"
    generate_synthmoments(dataset_dir, cfg)
    return dataset_dir


def decode_all(dataset_dir: Path, vids: list[str], cfg: ExtractConfig, short_side: int) -> list:
    """The extractor's decoding path (same Dataset, same DataLoader settings)."""
    loader = torch.utils.data.DataLoader(_VideoDataset(dataset_dir / "videos", vids, cfg, short_side),
                                         batch_size=None, num_workers=cfg.num_workers)
    decoded = []
    for vid, _, video in loader:
        if isinstance(video, str):
            raise RuntimeError(f"{vid}: {video}")
        decoded.append(np.concatenate([video.frames, video.clip_frames.reshape(-1, *video.clip_frames.shape[2:])]))
    return decoded  # per video: uint8 [N + L, H, W, 3]


def encode_frames(backbone: Backbone, decoded: list[np.ndarray]) -> None:
    for frames in decoded:
        backbone.encode_frames(frames)


def encode_texts(backbone: Backbone, texts: list[str], batch: int) -> None:
    for start in range(0, len(texts), batch):
        backbone.encode_sentences(texts[start:start + batch])
        backbone.encode_tokens(texts[start:start + batch])


def timed(fn, repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def run(args: argparse.Namespace, work: Path) -> dict[str, float]:
    seed_everything(args.seed)
    backbone = build_backbone(args.backbone, args.device)
    dataset_dir = make_videos(work, args)
    vids, texts = dataset_annotations(dataset_dir)
    cfg = ExtractConfig(backend=args.backend, num_workers=args.num_workers,
                        frames_per_clip=getattr(backbone, "frames_per_clip", 1))

    decoded = decode_all(dataset_dir, vids, cfg, backbone.image_size)  # warm-up: file cache, workers, kernels
    encode_frames(backbone, decoded[:1])
    encode_texts(backbone, texts[:cfg.text_batch], cfg.text_batch)
    frames = sum(len(f) for f in decoded)

    decode_s = timed(lambda: decode_all(dataset_dir, vids, cfg, backbone.image_size), args.repeats)
    frames_s = timed(lambda: encode_frames(backbone, decoded), args.repeats)
    texts_s = timed(lambda: encode_texts(backbone, texts, cfg.text_batch), args.repeats)
    stores = work / "stores"
    shutil.rmtree(stores, ignore_errors=True)  # an existing store would be resumed, not re-extracted
    runs = iter(range(args.repeats))
    extract_s = timed(lambda: extract_dataset(dataset_dir, backbone, stores / f"run{next(runs)}.h5", cfg),
                      args.repeats)
    return {"videos": len(vids), "texts": len(texts), "frames": frames,
            "decode_s": decode_s, "frames_s": frames_s, "texts_s": texts_s,
            "encode_s": frames_s + texts_s, "extract_s": extract_s}


def report(args: argparse.Namespace, r: dict[str, float]) -> None:
    print(f"backbone {args.backbone} (random init), device {args.device}, {r['videos']} videos "
          f"({args.frame_size} px), {r['frames']} frames, {r['texts']} texts, "
          f"{args.num_workers} decode workers, median of {args.repeats}")
    print(f"{'phase':<34}{'seconds':>10}{'frames/s':>12}")
    for name, key in (("decode only", "decode_s"), ("encode frames (in memory)", "frames_s"),
                      ("encode texts", "texts_s"), ("encode only = frames + texts", "encode_s"),
                      ("extraction (extract_dataset)", "extract_s")):
        rate = f"{r['frames'] / r[key]:>12.1f}" if key != "texts_s" else f"{'-':>12}"
        print(f"{name:<34}{r[key]:>10.3f}{rate}")
    ratio = r["encode_s"] / r["extract_s"]
    goal = "  (goal >= 0.8)" if args.device == "cuda" else ""
    print(f"extraction / encode-only throughput: {ratio:.2f}{goal}")
    print(f"decode share of decode + frame encode time: {r['decode_s'] / (r['decode_s'] + r['frames_s']):.2f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.work_dir:
        work = Path(args.work_dir)
        work.mkdir(parents=True, exist_ok=True)
        report(args, run(args, work))
    else:
        with tempfile.TemporaryDirectory(prefix="c2f-bench-features-") as tmp:
            report(args, run(args, Path(tmp)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
