"""The `c2f` command. Each subcommand lives in its stage's module (see docs/ARCHITECTURE.md)."""
from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, one-line help). Modules define add_arguments(parser) and main(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("c2f_lib.pipeline.runner", "run the notebook pipeline with papermill"),
    "features": ("c2f_lib.features.cli", "extract video/text features into a feature store"),
    "data": ("c2f_lib.data.cli", "list datasets and show their statistics"),
    "eval-moments": ("c2f_lib.evaluation.moments_cli", "evaluate moment predictions (QVHighlights format)"),
    "index": ("c2f_lib.pipeline.search_cli", "index a folder of your own videos"),
    "search": ("c2f_lib.pipeline.search_cli", "search an indexed folder with a text query"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="c2f", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            command.set_defaults(_missing=module_name)
            continue
        suffix = name.replace("-", "_")
        # A module serving several commands names its functions per command.
        adder = getattr(module, f"add_{suffix}_arguments", None) or module.add_arguments
        runner = getattr(module, f"main_{suffix}", None) or module.main
        adder(command)
        command.set_defaults(_main=runner)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "_missing", None):
        print(f"c2f {args.command}: {args._missing} is not available in this install", file=sys.stderr)
        return 2
    return int(args._main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
