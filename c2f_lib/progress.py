"""One progress-bar helper that behaves both in JupyterLab and headless under papermill.

Widget bars (tqdm.auto in a notebook) executed headlessly leave un-rendered widget JSON and
can stay stuck at 0% (papermill#617), so headless runs use plain text tqdm with a coarse
refresh interval, written to stdout: tqdm's default, stderr, puts every bar of an executed notebook in a
red box that reads as an error. The pipeline runner sets C2F_HEADLESS=1 for every notebook it executes.
"""
from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def is_headless() -> bool:
    return os.environ.get("C2F_HEADLESS", "") not in ("", "0", "false", "False")


def progress(iterable: Iterable[T] | None = None, **kwargs) -> "Iterable[T]":
    """tqdm over `iterable`: a widget bar interactively, plain text when headless."""
    if is_headless():
        from tqdm import tqdm

        kwargs.setdefault("mininterval", 5.0)
        kwargs.setdefault("ascii", True)
        kwargs.setdefault("file", sys.stdout)
    else:
        from tqdm.auto import tqdm
    return tqdm(iterable, **kwargs)
