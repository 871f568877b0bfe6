"""Helpers shared by the multi-label and the single-label loss.

The hyperparameter check, compile detection (value checks are skipped under ``torch.compile``)
and the dtype the losses compute in. Imports only PyTorch.
"""

from __future__ import annotations

import math

import torch


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return bool(compiler.is_compiling())
    return bool(torch._dynamo.is_compiling())  # torch < 2.3


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Float64 stays float64; every narrower float type is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_hyperparameters(gamma_pos: float, gamma_neg: float, clip: float, eps: float) -> None:
    for name, value in (("gamma_pos", gamma_pos), ("gamma_neg", gamma_neg), ("eps", eps)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    if not (math.isfinite(clip) and 0 <= clip < 1):
        raise ValueError(f"clip must be in [0, 1), got {clip}")
