"""The two exceptions the `c2f` command's error boundary knows: a user's mistake, and an interrupt.

`UserError` is raised for anything the user can fix (a bad file, flag, config value or folder). The
command prints it as one line, ``c2f <command>: <what>, <file>:<line>:<field>``, and exits with
status 2; any other exception is a bug and shows its traceback (behind ``--debug``). Library
error types that describe bad input (SchemaError, StoreError, PipelineError, ...) derive from it.
"""
from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """What the user gave is wrong: `what` says how, `file`/`line`/`field` where (each optional).

    Lines are 1-based file lines; `field` names the key, column or flag that holds the bad value.
    """

    def __init__(self, what: str, file: str | Path | None = None, line: int | None = None,
                 field: str | None = None):
        self.what, self.file, self.line, self.field = what, file, line, field
        super().__init__(self.message())

    def message(self) -> str:
        where = ":".join(str(part) for part in (self.file, self.line, self.field) if part is not None)
        return f"{self.what}, {where}" if where else self.what

    def __str__(self) -> str:
        return self.message()

    def __reduce__(self):  # pickles (e.g. from a DataLoader worker) with its location intact
        return (_rebuild, (type(self), self.what, self.file, self.line, self.field))


def _rebuild(cls: type[UserError], what: str, file, line, field) -> UserError:
    error = cls.__new__(cls)
    UserError.__init__(error, what, file, line, field)
    return error


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named (or a step they must run first would make) does not exist."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with where it struck ("in 05_fine_grounding") so the command can say what to rerun."""

    def __init__(self, where: str = ""):
        self.where = where
        super().__init__(where)
