"""The `c2f` command. Each subcommand lives in its stage's module (see docs/ARCHITECTURE.md).

Errors: a mistake in what you gave prints one line, ``c2f <command>: <what>, <file>:<line>:<field>``,
and exits with status 2; Ctrl-C exits with 130 and says what to rerun; anything else is a bug in c2f
(status 1; ``--debug`` shows its traceback).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from c2f_lib.errors import Interrupted, UserError

# command -> (module, one-line help). Modules define add_arguments(parser) and main(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("c2f_lib.pipeline.runner", "run the notebook pipeline with papermill"),
    "status": ("c2f_lib.pipeline.status", "show a run folder's stages: fresh, stale or missing (and why), times, "
                                          "outputs, report"),
    "features": ("c2f_lib.features.cli", "extract video/text features into a feature store"),
    "data": ("c2f_lib.data.cli", "list datasets and show their statistics"),
    "repro": ("c2f_lib.pipeline.recipes", "train and evaluate a paper's setting on a real benchmark "
                                          "(configs/repro/*.yaml)"),
    "eval-moments": ("c2f_lib.evaluation.moments_cli", "evaluate moment predictions (QVHighlights format)"),
    "index": ("c2f_lib.pipeline.search_cli", "index a folder of your own videos"),
    "search": ("c2f_lib.pipeline.search_cli", "search an indexed folder with a text query"),
}
# Errors about paths the user named count as the user's mistakes too.
USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
INTERRUPTED_STATUS = 130


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, ``c2f <command>: <message> (see ... --help)``, exit status 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


class _Version(argparse.Action):
    """--version: the package version and the checked-out commit (looked up only when asked)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib import metadata

        from c2f_lib.utils import git_commit

        print(f"c2f {metadata.version('c2f')} (git {git_commit()})")
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="c2f", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_Version, help="print the version and git commit, then exit")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of any error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        # --debug is accepted after the command too (SUPPRESS keeps a value given before it).
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the full traceback of any error")
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
    _name_every_command(parser)
    return parser


def _name_every_command(parser: argparse.ArgumentParser, depth: int = 0) -> None:
    """Each (sub)command records its own name ("c2f data stats"), the deepest one parsed wins, and
    takes --debug wherever it is typed (`c2f data list --debug`)."""
    parser.set_defaults(_prog=parser.prog)
    if depth >= 2 and "--debug" not in parser._option_string_actions:
        parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help="show the full traceback of any error")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _name_every_command(child, depth + 1)


def describe(err: BaseException) -> str:
    """One line for a user error (OSError: its reason, then the path)."""
    if isinstance(err, OSError) and not isinstance(err, UserError) and err.filename is not None:
        return f"{err.strerror or err}, {err.filename}"
    return str(err).strip().replace("\n", " ")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "_missing", None):
        print(f"{args._prog}: {args._missing} is not available in this install", file=sys.stderr)
        return 2
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt as err:
        if args.debug:
            raise
        where = err.where if isinstance(err, Interrupted) else ""
        print(f"{args._prog}: interrupted" + (f" {where}; rerun to resume" if where else ""), file=sys.stderr)
        return INTERRUPTED_STATUS
    except USER_ERRORS as err:
        if args.debug:
            raise
        print(f"{args._prog}: {describe(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # a bug: say so in one line, the traceback is one flag away
        if args.debug:
            raise
        print(f"{args._prog}: internal error ({type(err).__name__}: {describe(err)}); rerun with --debug "
              f"for the traceback and please report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
