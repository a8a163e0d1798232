"""Argument checks: for the library's own functions, and types for the command line.

>>> positive_int("3"), non_negative_float("0.5")
(3, 0.5)
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np


def check_positive_int(value: Any, what: str, where: str) -> None:
    """Raise a ValueError naming ``where`` and ``what`` unless ``value`` is a whole number >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{where}: {what} must be a positive integer, got {value!r}")


def _whole_number(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1, or argparse's one-line error."""
    return _whole_number(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """A whole number >= 0 (a seed), or argparse's one-line error."""
    return _whole_number(text, 0, "a non-negative integer")


def non_negative_float(text: str) -> float:
    """A finite number >= 0, or argparse's one-line error."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value
