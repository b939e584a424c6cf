"""`c2f features --dataset-dir DIR --backbone SPEC --out STORE.h5`: fill a feature store."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from c2f_lib.features.decode import VideoDecodeError
from c2f_lib.features.store import StoreError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset-dir", required=True, help="folder with moments_/captions_<split>.jsonl")
    parser.add_argument("--video-dir", default=None, help="videos (default: DATASET_DIR/videos)")
    parser.add_argument("--backbone", default="tinyclip",
                        help="tinyclip | tinyclip:<ckpt> | hf:<hub id or dir> | <open_clip model>:<tag or file>")
    parser.add_argument("--out", required=True, help="the HDF5 feature store to create or complete")
    parser.add_argument("--splits", nargs="*", default=None, help="only these splits (default: all)")
    parser.add_argument("--num-frames", type=int, default=12)
    parser.add_argument("--clip-len", type=float, default=2.0)
    parser.add_argument("--frames-per-clip", type=int, default=1, help="frames averaged per clip")
    parser.add_argument("--motion", action="store_true",
                        help="also store each clip's colour-motion descriptor (needs --frames-per-clip >= 2)")
    parser.add_argument("--decoder", default="auto", choices=["auto", "decord", "pyav"])
    parser.add_argument("--workers", type=int, default=0, help="decoding processes")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16"])


def main(args: argparse.Namespace) -> int:
    from c2f_lib.features.backbones import load_backbone
    from c2f_lib.features.extract import ExtractConfig, extract_dataset
    from c2f_lib.features.motion import MotionConfig
    from c2f_lib.utils import resolve_device

    try:
        device = resolve_device(args.device)
        backbone = load_backbone(args.backbone, device=device, precision=args.precision,
                                 dataset_dir=args.dataset_dir)
        cfg = ExtractConfig(num_frames=args.num_frames, clip_len=args.clip_len,
                            frames_per_clip=args.frames_per_clip, motion=MotionConfig() if args.motion else None,
                            backend=args.decoder, num_workers=args.workers)
        summary = extract_dataset(args.dataset_dir, backbone, args.out, cfg, splits=args.splits,
                                  video_dir=args.video_dir)
    except (FileNotFoundError, ValueError, StoreError, VideoDecodeError) as err:
        print(f"c2f features: {err}", file=sys.stderr)
        return 2
    print(f"{Path(args.out)}: {summary['videos']} videos ({summary['encoded_videos']} new), "
          f"{summary['texts']} texts ({summary['encoded_texts']} new), {len(summary['failures'])} failed")
    for vid, reason in summary["failures"].items():
        print(f"  failed {vid}: {reason}", file=sys.stderr)
    return 0
