"""Argument types for argparse, shared by ``cprfl-zoo`` and the example scripts.

Each takes the command-line text and returns the value, or raises
:class:`argparse.ArgumentTypeError` naming what was expected and what was given, which argparse
reports as ``argument --epochs: expected a positive integer, got '0'``.
"""

from __future__ import annotations

import argparse
import math

__all__ = [
    "fraction",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "probability",
]


def _int(text: str, expected: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _float(text: str, expected: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """Parse an integer >= 1.

    Args:
        text: The argument's text.

    Returns:
        The integer.

    Raises:
        argparse.ArgumentTypeError: If ``text`` is no integer or is below 1.
    """
    value = _int(text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """Parse an integer >= 0.

    Args:
        text: The argument's text.

    Returns:
        The integer.

    Raises:
        argparse.ArgumentTypeError: If ``text`` is no integer or is negative.
    """
    value = _int(text, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """Parse a finite number > 0.

    Args:
        text: The argument's text.

    Returns:
        The number.

    Raises:
        argparse.ArgumentTypeError: If ``text`` is no finite number or is not above 0.
    """
    value = _float(text, "a number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """Parse a finite number >= 0.

    Args:
        text: The argument's text.

    Returns:
        The number.

    Raises:
        argparse.ArgumentTypeError: If ``text`` is no finite number or is negative.
    """
    value = _float(text, "a number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """Parse a number in [0, 1) (a drop rate, a share held out).

    Args:
        text: The argument's text.

    Returns:
        The number.

    Raises:
        argparse.ArgumentTypeError: If ``text`` is no number in [0, 1).
    """
    value = _float(text, "a number")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def probability(text: str) -> float:
    """Parse a number in [0, 1] (a threshold).

    Args:
        text: The argument's text.

    Returns:
        The number.

    Raises:
        argparse.ArgumentTypeError: If ``text`` is no number in [0, 1].
    """
    value = _float(text, "a number in [0, 1]")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value
