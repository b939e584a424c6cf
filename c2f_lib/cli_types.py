"""argparse value types that refuse impossible numbers at the command line (`--clip-len 0`)."""
from __future__ import annotations

import argparse


def _number(kind: type, text: str) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None
    if kind is float and value != value:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = _number(int, text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _number(float, text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def unit_float(text: str) -> float:
    value = _number(float, text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def device(text: str) -> str:
    """--device: auto, cpu or cuda[:N], resolved now, so a GPU that is not here is a usage error."""
    from c2f_lib.utils import DeviceError, resolve_device

    try:
        return resolve_device(text)
    except DeviceError as err:
        raise argparse.ArgumentTypeError(err.what) from None


DEVICE_HELP = "auto (a GPU when one is visible), cpu, or cuda[:N]"
