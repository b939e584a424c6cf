"""`c2f data list | stats NAME | download NAME | export NAME --run-dir DIR`."""
from __future__ import annotations

import argparse

from c2f_lib.data import registry


ROOT_HELP = "annotation root (default: $C2F_SHARED_DATASETS or ../shared/datasets)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default=None, help=ROOT_HELP)
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    commands = {name: sub.add_parser(name, help=text, description=text) for name, text in (
        ("list", "list the registered datasets and whether their files are present"),
        ("stats", "counts, lengths and cleaning report per split"),
        ("download", "print the download steps and fetch the free annotation files"),
        ("export", "write the dataset into a run directory (moments/captions jsonl)"),
        ("videos", "check which videos of a dataset are in a folder"))}
    for name, command in commands.items():
        # --root works after the subcommand too; SUPPRESS keeps a value given before it.
        command.add_argument("--root", default=argparse.SUPPRESS, help=ROOT_HELP)
        if name != "list":
            command.add_argument("name", help="dataset name (see `c2f data list`)")
    commands["download"].add_argument("--print-only", action="store_true", help="only print the steps")
    export = commands["export"]
    export.add_argument("--run-dir", required=True, help="run folder that receives data/<name>/")
    export.add_argument("--splits", nargs="*", default=None, help="only these splits (default: every split)")
    export.add_argument("--coarse-captions", default="auto", choices=["auto", "native", "offline", "none"],
                        help="whole-video captions: the dataset's own (native), generated offline, auto "
                             "(native, else offline), or none")
    videos = commands["videos"]
    videos.add_argument("folder", help="folder of video (or feature) files, searched recursively")
    videos.add_argument("--split", default=None, help="only this split's videos (default: every split)")


def main(args: argparse.Namespace) -> int:
    return _COMMANDS[args.data_command](args)


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
    from c2f_lib.run_lock import folder_lock

    with folder_lock(args.run_dir):  # a stage or recipe may be reading this run's data/ now
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
