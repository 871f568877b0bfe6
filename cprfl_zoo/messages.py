"""Wording shared by the package's error messages."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["MAX_LISTED", "listed"]

MAX_LISTED = 10


def listed(names: Sequence[str], limit: int = MAX_LISTED) -> str:
    """Join names for a message, at most ``limit`` of them, then how many more there are.

    Args:
        names: The names, in the order to show.
        limit: How many to show.

    Returns:
        ``"a, b, c"``, or ``"a, b, ... and 3 more"`` when there are more than ``limit``.
    """
    shown = ", ".join(names[:limit])
    if len(names) > limit:
        shown += f", ... and {len(names) - limit} more"
    return shown
