"""`c2f data list | stats NAME | download NAME | export NAME --run-dir DIR`."""
from __future__ import annotations

import argparse
import sys

from c2f_lib.data import registry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default=None,
                        help="annotation root (default: $C2F_SHARED_DATASETS or ../shared/datasets)")
    sub = parser.add_subparsers(dest="data_command", required=True)
    sub.add_parser("list", help="list the registered datasets and whether their files are present")
    stats = sub.add_parser("stats", help="counts, lengths and cleaning report per split")
    stats.add_argument("name")
    download = sub.add_parser("download", help="print the download steps and fetch the free annotation files")
    download.add_argument("name")
    download.add_argument("--print-only", action="store_true", help="only print the steps")
    export = sub.add_parser("export", help="write the dataset into a run directory (moments/captions jsonl)")
    export.add_argument("name")
    export.add_argument("--run-dir", required=True)
    export.add_argument("--splits", nargs="*", default=None)
    export.add_argument("--coarse-captions", default="auto", choices=["auto", "native", "offline", "none"])
    videos = sub.add_parser("videos", help="check which videos of a dataset are in a folder")
    videos.add_argument("name")
    videos.add_argument("folder")
    videos.add_argument("--split", default=None)


def main(args: argparse.Namespace) -> int:
    try:
        return _COMMANDS[args.data_command](args)
    except (KeyError, FileNotFoundError, ValueError) as err:
        print(f"c2f data {args.data_command}: {err}", file=sys.stderr)
        return 2


def _list(args: argparse.Namespace) -> int:
    for info in registry.list_datasets():
        here = "present" if info.path(args.root).is_dir() else "absent"
        print(f"{info.name:22s} {info.kind:17s} splits: {', '.join(info.splits):45s} [{here}]  {info.title}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    import pandas as pd

    table = pd.DataFrame(registry.dataset_stats(args.name, args.root)).set_index("split")
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 90):
        print(table.round(2).to_string())
    return 0


def _download(args: argparse.Namespace) -> int:
    print(registry.download_steps(args.name))
    if not args.print_only and registry.get_dataset(args.name).fetch:
        for path in registry.download(args.name, args.root):
            print(f"  wrote {path}")
    return 0


def _export(args: argparse.Namespace) -> int:
    target = registry.export_dataset(args.name, args.run_dir, args.root, args.splits, args.coarse_captions)
    print(f"wrote {target}")
    return 0


def _videos(args: argparse.Namespace) -> int:
    present, missing = registry.find_videos(args.name, args.folder, args.split, args.root)
    print(f"{len(present)} present, {len(missing)} missing")
    for vid in missing[:20]:
        print(f"  missing: {vid}")
    return 0


_COMMANDS = {"list": _list, "stats": _stats, "download": _download, "export": _export, "videos": _videos}
