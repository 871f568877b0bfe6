"""Average precision and mean average precision, and the checks of every metric's inputs.

* :func:`average_precision`: per-class AP, vectorised over classes; tied scores form one
  threshold group, so the result equals scikit-learn's ``average_precision_score``.
* :func:`mean_average_precision` / :class:`MAPResult`: mAP over the classes that have a positive
  in the evaluation set; the others are excluded from the mean and reported.

``scores`` is an ``(N, C)`` tensor of raw logits or probabilities and ``targets`` the matching
multi-hot 0/1 tensor; ``_check_scores_targets`` validates them for every metric of
:mod:`cprfl_zoo.metrics` (and for :mod:`cprfl_zoo.thresholds`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._chunks import column_chunks

__all__ = ["MAPResult", "average_precision", "mean_average_precision"]

_logger = logging.getLogger(__name__)


def _check_scores_targets(scores: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Validate a score matrix and its multi-hot targets; return them as 2-D tensors."""
    if not isinstance(scores, Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if scores.dim() not in (1, 2):
        raise ValueError(f"scores must have shape (N, C) or (N,), got {tuple(scores.shape)}")
    if targets.shape != scores.shape:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} does not match scores shape "
            f"{tuple(scores.shape)}"
        )
    if scores.shape[0] == 0:
        raise ValueError("scores is empty: need at least one sample (N >= 1)")
    if scores.dim() == 1:
        scores, targets = scores[:, None], targets[:, None]
    if scores.dtype == torch.bool or not (scores.is_floating_point() or scores.dtype.is_signed):
        scores = scores.float()
    if scores.is_complex():
        raise ValueError(f"scores must be real, got dtype {scores.dtype}")
    nan_classes: list[int] = []
    bad_targets: list[int] = []
    # class by class, so that no mask is the size of the whole matrix
    for cols in column_chunks(*scores.shape):
        if scores.is_floating_point():
            nan = torch.isnan(scores[:, cols]).any(0)
            nan_classes += (nan.nonzero().flatten() + cols.start).tolist()
        if targets.dtype != torch.bool:
            part = targets[:, cols]
            not_binary = ((part != 0) & (part != 1)).any(0)
            bad_targets += (not_binary.nonzero().flatten() + cols.start).tolist()
    if nan_classes:
        raise ValueError(f"scores contain NaN (classes {nan_classes[:10]})")
    if bad_targets:
        raise ValueError(
            f"targets must be multi-hot 0/1 values; classes {bad_targets[:10]} hold other values"
        )
    return scores, targets.bool()


def average_precision(scores: Tensor, targets: Tensor) -> Tensor:
    """Per-class average precision, vectorised over classes.

    For each class, AP is the precision averaged over the ranks of its positive samples when
    the samples are sorted by decreasing score, i.e. ``AP = sum_n (R_n - R_{n-1}) P_n`` over the
    distinct score thresholds ``n``.

    Ties: samples with equal scores form one threshold group; every positive in the group gets
    the precision measured at the *end* of the group (all tied samples counted as predicted
    positive). The result therefore does not depend on the order of tied samples, and equals
    scikit-learn's ``average_precision_score`` with or without ties. (The official CPRFL helper
    ranks tied samples one by one in ``argsort`` order, which can differ from this by a
    small amount when scores tie.)

    Each class column is sorted once, in chunks of classes that bound the memory (about
    100 MB of temporaries whatever the size of the matrix); there is no Python loop over
    samples.

    Args:
        scores: ``(N, C)`` (or ``(N,)``) logits or probabilities; higher means more likely
            positive. Any monotone transform gives the same AP; prefer raw logits, which do not
            saturate into artificial ties the way float32 sigmoid outputs can.
        targets: Multi-hot 0/1 tensor (any dtype, incl. bool) of the same shape as ``scores``.

    Returns:
        Float64 tensor of shape ``(C,)`` (a 0-d tensor for 1-D input), on ``scores``' device.
        Classes without a positive sample get NaN.

    Raises:
        TypeError: If an input is not a tensor.
        ValueError: On a shape mismatch, an empty input, NaN scores or non-binary targets.
    """
    squeeze = scores.dim() == 1 if isinstance(scores, Tensor) else False
    scores, targets = _check_scores_targets(scores, targets)
    n, c = scores.shape
    ap = torch.empty(c, dtype=torch.float64, device=scores.device)
    for cols in column_chunks(n, c):
        ap[cols] = _column_average_precision(scores[:, cols], targets[:, cols])
    return ap[0] if squeeze else ap


def _column_average_precision(scores: Tensor, targets: Tensor) -> Tensor:
    """AP of each column of a checked ``(N, k)`` chunk (see :func:`average_precision`)."""
    n = scores.shape[0]
    sorted_scores, order = scores.sort(dim=0, descending=True, stable=True)
    hits = targets.gather(0, order).to(torch.float64)
    true_pos = hits.cumsum(0)
    positions = torch.arange(n, device=scores.device)[:, None].expand_as(hits)
    group_end = torch.ones_like(hits, dtype=torch.bool)
    group_end[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    # For each rank, the last rank of its tie group: a reversed running minimum over the
    # positions that close a group (other positions hold n - 1, never below a later group end).
    end_pos = torch.where(group_end, positions, torch.full_like(positions, n - 1))
    end_pos = end_pos.flip(0).cummin(0).values.flip(0)
    precision_at_end = true_pos.gather(0, end_pos) / (end_pos + 1).to(torch.float64)
    num_pos = hits.sum(0)
    # a running sum adds in row order whatever the chunk's width: chunking changes no bit
    ap = (hits * precision_at_end).cumsum(0)[-1] / num_pos
    return torch.where(num_pos > 0, ap, torch.full_like(ap, math.nan))


@dataclass(frozen=True)
class MAPResult:
    """Mean average precision over the classes that can be evaluated.

    Attributes:
        map: Mean AP over the classes with at least one positive (NaN if there is none).
        ap: ``(C,)`` float64 per-class AP, NaN for the excluded classes.
        excluded: Indices of the classes without a positive in the evaluation set; they are
            left out of ``map``.
    """

    map: float
    ap: Tensor
    excluded: tuple[int, ...]

    @property
    def num_evaluated(self) -> int:
        """Number of classes that entered the mean."""
        return self.ap.numel() - len(self.excluded)


def _nanmean(values: Tensor) -> float:
    valid = values[~torch.isnan(values)]
    return float(valid.mean()) if valid.numel() else math.nan


def mean_average_precision(
    scores: Tensor, targets: Tensor, class_names: Sequence[str] | None = None
) -> MAPResult:
    """Mean of the per-class average precision, skipping classes without positives.

    See :func:`average_precision` for the definition of AP and the handling of tied scores.
    A class with no positive sample in the evaluation set has no defined AP; it is excluded
    from the mean, listed in :attr:`MAPResult.excluded` and logged as a warning.

    Args:
        scores: ``(N, C)`` logits or probabilities.
        targets: ``(N, C)`` multi-hot 0/1 targets.
        class_names: Optional ``C`` names, only used to name excluded classes in the warning.

    Returns:
        A :class:`MAPResult` (``map`` in [0, 1]; multiply by 100 for the papers' tables).

    Raises:
        TypeError: If an input is not a tensor.
        ValueError: On a bad input (see :func:`average_precision`) or if ``class_names`` does
            not have one name per class.
    """
    ap = average_precision(scores, targets).reshape(-1)
    if class_names is not None and len(class_names) != ap.numel():
        raise ValueError(f"class_names has {len(class_names)} names for {ap.numel()} classes")
    excluded = tuple(torch.isnan(ap).nonzero().flatten().tolist())
    if excluded:
        shown = [class_names[i] for i in excluded] if class_names is not None else list(excluded)
        _logger.warning(
            "%d of %d classes have no positive sample and are excluded from mAP: %s",
            len(excluded),
            ap.numel(),
            shown,
        )
    return MAPResult(map=_nanmean(ap), ap=ap, excluded=excluded)
