"""`c2f features --dataset-dir DIR --backbone SPEC --out STORE.h5`: fill a feature store."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from c2f_lib import cli_types
from c2f_lib.cli_types import DEVICE_HELP, non_negative_int, positive_float, positive_int
from c2f_lib.errors import Interrupted, UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset-dir", required=True, help="folder with moments_/captions_<split>.jsonl")
    parser.add_argument("--video-dir", default=None, help="videos (default: DATASET_DIR/videos)")
    parser.add_argument("--backbone", default="tinyclip",
                        help="tinyclip | tinyclip:<ckpt> | hf:<hub id or dir> | <open_clip model>:<tag or file>")
    parser.add_argument("--out", required=True, help="the HDF5 feature store to create or complete")
    parser.add_argument("--splits", nargs="*", default=None, help="only these splits (default: all)")
    parser.add_argument("--num-frames", type=positive_int, default=12,
                        help="uniform frames per video (the coarse stage's input)")
    parser.add_argument("--clip-len", type=positive_float, default=2.0,
                        help="seconds per clip feature (the fine stage's input)")
    parser.add_argument("--frames-per-clip", type=positive_int, default=None,
                        help="frames decoded per clip (default: tinyclip's own, 1 for image backbones, whose "
                             "frame embeddings are averaged)")
    parser.add_argument("--motion", action="store_true",
                        help="also store each clip's colour-motion descriptor (needs --frames-per-clip >= 2)")
    parser.add_argument("--decoder", default="auto", choices=["auto", "decord", "pyav"],
                        help="video decoder (auto: decord when installed, else PyAV)")
    parser.add_argument("--workers", type=non_negative_int, default=0, help="decoding processes")
    parser.add_argument("--device", type=cli_types.device, default="auto", help=DEVICE_HELP)
    parser.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                        help="extract only shard I of N (every N-th video and text) into OUT.shardIofN.h5; "
                             "resumable; join the N shards with --merge N")
    parser.add_argument("--merge", type=positive_int, default=None, metavar="N",
                        help="join the N finished shards OUT.shard<i>ofN.h5 into --out (no extraction)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "amp"],
                        help="backbone precision: fp16 weights (halve GPU memory), or amp: fp32 weights under "
                             "autocast (fp16 on CUDA, bf16 on CPU)")


def _shard(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    try:
        shard = (int(index), int(count))
    except ValueError:
        shard = None
    if not sep or shard is None or not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, e.g. 0/4, got {text!r}")
    return shard


def frames_per_clip(args: argparse.Namespace, backbone) -> int:
    """--frames-per-clip, or the backbone's own; checked against --motion (which needs two frames)."""
    frames = args.frames_per_clip or getattr(backbone, "frames_per_clip", 1)
    if args.motion and frames < 2:
        raise UserError("needs --frames-per-clip 2 or more (motion is measured between a clip's frames)",
                        field="--motion")
    return frames


def main(args: argparse.Namespace) -> int:
    from c2f_lib.features.backbone_specs import load_backbone
    from c2f_lib.features.extract import ExtractConfig, extract_dataset, merge_shards, shard_path
    from c2f_lib.features.motion import MotionConfig

    if not Path(args.dataset_dir).is_dir():
        raise UserError("not a folder" if Path(args.dataset_dir).exists() else "folder not found",
                        args.dataset_dir, field="--dataset-dir")
    if args.merge is not None:
        if args.shard is not None:
            raise UserError("--merge joins finished shards; do not give --shard with it", field="--merge")
        merged = merge_shards(args.dataset_dir, args.out, args.merge, splits=args.splits)
        print(f"{Path(args.out)}: {merged['videos']} videos ({merged['merged_videos']} merged), {merged['texts']} "
              f"texts ({merged['merged_texts']} merged) from {args.merge} shards, {len(merged['failures'])} failed")
        return 0
    out = shard_path(args.out, *args.shard) if args.shard else Path(args.out)
    weights_precision = "fp32" if args.precision == "amp" else args.precision
    backbone = load_backbone(args.backbone, device=args.device, precision=weights_precision,
                             dataset_dir=args.dataset_dir)
    cfg = ExtractConfig(num_frames=args.num_frames, clip_len=args.clip_len,
                        frames_per_clip=frames_per_clip(args, backbone), motion=MotionConfig() if args.motion else None,
                        backend=args.decoder, num_workers=args.workers,
                        amp="auto" if args.precision == "amp" else False)
    try:
        summary = extract_dataset(args.dataset_dir, backbone, out, cfg, splits=args.splits,
                                  video_dir=args.video_dir, shard=args.shard)
    except KeyboardInterrupt:
        raise Interrupted("while extracting (the videos done so far are kept)") from None
    print(f"{out}: {summary['videos']} videos ({summary['encoded_videos']} new), "
          f"{summary['texts']} texts ({summary['encoded_texts']} new), {len(summary['failures'])} failed")
    for vid, reason in summary["failures"].items():
        print(f"  failed {vid}: {reason}", file=sys.stderr)
    return 0
