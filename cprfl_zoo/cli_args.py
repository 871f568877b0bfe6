"""Argument types for argparse, shared by ``cprfl-zoo`` and the example scripts.

Each type takes the argument's text and returns its value, or raises
:class:`argparse.ArgumentTypeError` naming what was expected and what was given, which argparse
reports as ``argument --epochs: expected a positive integer, got '0'``. The float types refuse
``nan`` and ``inf``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

__all__ = [
    "fraction",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "probability",
]

_T = TypeVar("_T", int, float)


def _parse(text: str, kind: type[_T], accept: Callable[[_T], bool], expected: str) -> _T:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    if not accept(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """Parse an integer >= 1 (a count, a size); see the module docstring for errors."""
    return _parse(text, int, lambda v: v >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """Parse an integer >= 0 (a number of workers); see the module docstring for errors."""
    return _parse(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """Parse a finite number > 0 (a learning rate); see the module docstring for errors."""
    return _parse(text, float, lambda v: v > 0, "a number > 0")


def non_negative_float(text: str) -> float:
    """Parse a finite number >= 0 (a weight decay); see the module docstring for errors."""
    return _parse(text, float, lambda v: v >= 0, "a number >= 0")


def fraction(text: str) -> float:
    """Parse a number in [0, 1) (a drop rate); see the module docstring for errors."""
    return _parse(text, float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def probability(text: str) -> float:
    """Parse a number in [0, 1] (a threshold); see the module docstring for errors."""
    return _parse(text, float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
