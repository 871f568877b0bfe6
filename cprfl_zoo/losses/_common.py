"""Helpers shared by the multi-label and the single-label loss.

The hyperparameter check, compile detection (value checks are skipped under ``torch.compile``),
the dtype the losses compute in, per-class input checks and the reduction of a per-label loss.
Imports only PyTorch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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


def _as_per_class(values: torch.Tensor | Sequence[float], name: str) -> torch.Tensor:
    """``values`` as a detached 1-D float64 tensor on the CPU, checked to be finite."""
    if isinstance(values, torch.Tensor):
        t = values.detach()
    else:  # Python floats as float64, not torch's default float32
        t = torch.as_tensor(values)
        if t.is_floating_point():
            t = torch.as_tensor(values, dtype=torch.float64)
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be real numbers, got dtype {t.dtype}")
    t = t.to(device="cpu", dtype=torch.float64)
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(
            f"{name} must be a 1-D sequence with one value per class, got shape {tuple(t.shape)}"
        )
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got {t.tolist()[:10]}")
    return t


def _class_list(mask: torch.Tensor, limit: int = 10) -> str:
    """The indices where ``mask`` is True, for messages (at most ``limit`` shown)."""
    idx = mask.nonzero().flatten().tolist()
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return f"{idx[:limit]}{more}"


def _reduce(per_label: torch.Tensor, reduction: str, known: torch.Tensor | None) -> torch.Tensor:
    """Reduce a per-label loss that is already 0 at unknown labels.

    ``"mean"`` divides by the number of known labels (all of them when ``known`` is None; the
    result is 0 when none is known), ``"batchmean"`` by the batch size.
    """
    if reduction == "none":
        return per_label
    total = per_label.sum()
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        return total / max(per_label.shape[0], 1)
    if known is None:
        return total / max(per_label.numel(), 1)
    count = known.expand(per_label.shape).sum().to(per_label.dtype).clamp(min=1.0)
    return total / count
