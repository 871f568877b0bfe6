"""What both composers share: the long-tailed class-frequency profile and the cell layout."""

from __future__ import annotations

import math

import torch

__all__ = ["cell_origin", "long_tail_class_weights"]


def long_tail_class_weights(num_classes: int, imbalance: float) -> torch.Tensor:
    """Geometrically decreasing class weights, from 1 for class 0 to ``1 / imbalance``.

    Args:
        num_classes: Number of classes C (at least 1).
        imbalance: Ratio of the first to the last weight (1 for uniform weights).

    Returns:
        ``(C,)`` float64 weights ``imbalance ** (-c / (C - 1))``.

    Raises:
        ValueError: If ``num_classes < 1`` or ``imbalance`` is not a finite number >= 1.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(imbalance, (int, float)) or not math.isfinite(imbalance) or imbalance < 1:
        raise ValueError(f"imbalance must be a finite number >= 1, got {imbalance!r}")
    if num_classes == 1:
        return torch.ones(1, dtype=torch.float64)
    exponents = torch.arange(num_classes, dtype=torch.float64) / (num_classes - 1)
    return float(imbalance) ** -exponents


def cell_origin(slot, grid: int, cell: int):
    """Top and left pixel of cell ``slot`` (row-major) of a ``grid x grid`` layout of ``cell`` px.

    Works on ints, numpy arrays and tensors alike.
    """
    return (slot // grid) * cell, (slot % grid) * cell
