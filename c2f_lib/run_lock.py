"""An advisory lock per run folder, so two writers (`c2f run`, `c2f repro`, `c2f index`, `c2f data export`)
never write into one folder at once.

The lock is an `flock` on ``<folder>/.c2f.lock``, which holds who took it (pid, host, command, time).
The operating system releases it when the holder exits, however it exits, so a killed run never
leaves a lock behind and there is nothing to delete by hand.
"""
from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from c2f_lib.errors import UserError
from c2f_lib.utils import command_line

LOCK_NAME = ".c2f.lock"


class FolderBusyError(UserError):
    """Another process holds the folder's lock."""


def holder(folder: Path) -> dict | None:
    """Who holds the folder's lock now, or None when nobody does."""
    path = Path(folder) / LOCK_NAME
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return _read_holder(path)
    finally:
        os.close(fd)


def _read_holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold the folder's lock for the block; FolderBusyError (naming the holder) if another process has it."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # not inherited by child processes (kernels)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = _read_holder(path)
            who = (f"process {other.get('pid', '?')} on {other.get('host', '?')} "
                   f"({' '.join(other.get('command', [])) or 'unknown command'}, since {other.get('since', '?')})")
            raise FolderBusyError(f"in use by {who}; wait for it to finish or choose another folder",
                                  folder) from None
        record = {"pid": os.getpid(), "host": platform.node(), "command": command_line(),
                  "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
        if created and [p.name for p in folder.iterdir()] == [LOCK_NAME]:
            shutil.rmtree(folder, ignore_errors=True)  # a refused run leaves no empty folder behind
