r"""Two-way multi-label loss (Kobayashi, *Two-way Multi-Label Loss*, CVPR 2023).

A softmax-like loss built on relative comparisons between positive and negative logits, applied
two ways: within each sample (its positive classes against its negative classes) and within each
class (its positive samples in the batch against its negative samples). For a set of positive
logits :math:`P` and negative logits :math:`N`,

.. math::

    \ell(P, N) = \operatorname{softplus}\Big(
        T_n \log\sum_{n\in N} e^{x_n/T_n} + T_p \log\sum_{p\in P} e^{-x_p/T_p}\Big),

a smooth version of :math:`\max(0, \max_n x_n - \min_p x_p)` whose temperatures :math:`T_p`
(4 in the paper) and :math:`T_n` (1) set how hard the maxima are. The loss is the mean of
:math:`\ell` over the samples that have a positive plus its mean over the classes that have a
positive in the batch. It needs no class frequencies.

Values match the official ``TwoWayLoss`` (tk1980/TwowayMultiLabelLoss, ``utils/criterion.py``),
except that it excludes labels from a log-sum-exp by adding -100 to their scaled logits while
this module excludes them exactly; the relative difference is about
:math:`e^{-100}` times the exponential of the spread of the scaled logits, negligible unless
logits differ by tens. A sample or class with positives but no negative contributes 0
(the official code gives about :math:`e^{-100}`); with no positive at all it is left out of
the mean, and a batch with no positive anywhere gives 0 (the official code gives NaN).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ._common import _compute_dtype, _is_compiling
from .asymmetric import _check_multilabel_shapes, _check_multilabel_values

__all__ = ["TwoWayLoss", "two_way_loss"]

_TWO_WAY_REDUCTIONS = ("mean", "sum")


def _check_temperatures(tp: float, tn: float) -> None:
    for name, value in (("tp", tp), ("tn", tn)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value}")


def _masked_logsumexp(
    values: torch.Tensor, keep: torch.Tensor, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-sum-exp of ``values`` where ``keep`` along ``dim``, and whether any was kept.

    Where nothing is kept the result is 0 (a placeholder to be masked by the caller): taking it
    as -inf would give NaN gradients.
    """
    any_kept = keep.any(dim=dim)
    if values.shape[dim] == 0:  # an empty batch, or no classes: nothing to reduce
        return values.sum(dim=dim), any_kept
    masked = values.masked_fill(~keep, float("-inf"))
    top = masked.amax(dim=dim, keepdim=True).detach()
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = (masked - top).exp().sum(dim=dim)
    total = torch.where(any_kept, total, torch.ones_like(total))
    return total.log() + top.squeeze(dim), any_kept


def _one_way(
    x: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, dim: int, tp: float, tn: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (``dim=1``) or per-column (``dim=0``) terms, and which rows have a positive."""
    p_lse, has_pos = _masked_logsumexp(-x / tp, pos, dim)
    n_lse, has_neg = _masked_logsumexp(x / tn, neg, dim)
    terms = F.softplus(tn * n_lse + tp * p_lse)
    return torch.where(has_pos & has_neg, terms, torch.zeros_like(terms)), has_pos


def two_way_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    tp: float = 4.0,
    tn: float = 1.0,
    reduction: Literal["mean", "sum"] = "mean",
    mask: torch.Tensor | None = None,
    validate: bool = False,
) -> torch.Tensor:
    """Two-way multi-label loss; see :class:`TwoWayLoss` and the module docstring.

    Args:
        logits: Raw scores (B, C), any floating dtype; half precision is computed in float32.
        targets: Labels (B, C): a value > 0 is a positive, 0 a negative, and -1 (or any value
            below 0) an unknown label, as in the official code.
        tp: Temperature T_p of the positives.
        tn: Temperature T_n of the negatives.
        reduction: ``"mean"`` (official): the mean over samples with a positive plus the mean
            over classes with a positive; ``"sum"``: the two sums.
        mask: Optional bool tensor broadcastable to ``logits``; False marks unknown labels.
        validate: Also check values (finite logits, targets in [0, 1] or -1); one host sync.

    Returns:
        The scalar loss, float32 (float64 for float64 logits).

    Raises:
        TypeError: If an input has the wrong type or dtype.
        ValueError: If shapes disagree, the logits are not 2-D, or a hyperparameter is out of
            range; with ``validate``, also for bad values.
    """
    tp, tn = float(tp), float(tn)
    _check_temperatures(tp, tn)
    if reduction not in _TWO_WAY_REDUCTIONS:
        raise ValueError(f"reduction must be one of {_TWO_WAY_REDUCTIONS}, got {reduction!r}")
    return _two_way_loss(logits, targets, tp, tn, reduction, mask, validate)


def _two_way_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    tp: float,
    tn: float,
    reduction: str,
    mask: torch.Tensor | None,
    validate: bool,
) -> torch.Tensor:
    _check_multilabel_shapes(logits, targets, mask, None)
    if logits.ndim != 2:
        raise ValueError(
            f"the two-way loss compares samples within a batch: logits must be (batch, "
            f"num_classes), got shape {tuple(logits.shape)}"
        )
    if validate and not _is_compiling():
        _check_multilabel_values(logits, targets)
    x = logits.to(_compute_dtype(logits.dtype))
    pos = targets > 0
    neg = targets == 0
    if mask is not None:
        pos, neg = pos & mask, neg & mask
    by_sample, sample_has_pos = _one_way(x, pos, neg, 1, tp, tn)
    by_class, class_has_pos = _one_way(x, pos, neg, 0, tp, tn)
    if reduction == "sum":
        return by_sample.sum() + by_class.sum()
    n_samples = sample_has_pos.sum().clamp(min=1).to(x.dtype)
    n_classes = class_has_pos.sum().clamp(min=1).to(x.dtype)
    return by_sample.sum() / n_samples + by_class.sum() / n_classes


class TwoWayLoss(nn.Module):
    r"""Two-way multi-label loss (Kobayashi, CVPR 2023).

    A sample-wise plus a class-wise softplus of the smooth gap between the hardest negative and
    the hardest positive logit.

    For each sample with positives :math:`P` and negatives :math:`N` (and likewise for each
    class over the batch):

    .. math::

        \ell = \operatorname{softplus}\Big(T_n \log\sum_{n\in N} e^{x_n/T_n}
               + T_p \log\sum_{p\in P} e^{-x_p/T_p}\Big).

    ``"mean"`` (the official reduction) averages over the samples with a positive and over the
    classes with a positive and adds the two. The paper's setting is ``tp=4, tn=1`` (the
    defaults). It uses no class frequencies, so it is a frequency-free alternative to
    re-weighting. Half-precision inputs are computed in float32. The logits' scale matters
    (there is no sigmoid): the paper trains with them as they are.

    Args:
        tp: Temperature T_p of the positive log-sum-exp (> 0).
        tn: Temperature T_n of the negative log-sum-exp (> 0).
        reduction: ``"mean"`` or ``"sum"`` (per-label values are not defined for this loss).
        validate: Also check every call's values; one host sync per call, so off by default.

    Raises:
        ValueError: If a temperature is not positive or ``reduction`` is unknown.

    Example:
        >>> loss = TwoWayLoss()(logits, targets)  # targets 0/1, -1 = unknown
    """

    def __init__(
        self,
        tp: float = 4.0,
        tn: float = 1.0,
        reduction: Literal["mean", "sum"] = "mean",
        validate: bool = False,
    ) -> None:
        super().__init__()
        _check_temperatures(float(tp), float(tn))
        if reduction not in _TWO_WAY_REDUCTIONS:
            raise ValueError(f"reduction must be one of {_TWO_WAY_REDUCTIONS}, got {reduction!r}")
        self.tp = float(tp)
        self.tn = float(tn)
        self.reduction = reduction
        self.validate = bool(validate)

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            logits: Raw scores (B, C).
            targets: Labels (B, C): > 0 positive, 0 negative, -1 unknown.
            mask: Optional bool tensor broadcastable to ``logits``; False marks unknown labels.

        Returns:
            The scalar loss, float32 unless the logits are float64.

        Raises:
            TypeError: If an input has the wrong type or dtype.
            ValueError: If shapes disagree or the logits are not 2-D.
        """
        return _two_way_loss(logits, targets, self.tp, self.tn, self.reduction, mask, self.validate)

    def extra_repr(self) -> str:
        """Summarise the hyperparameters."""
        return f"tp={self.tp:g}, tn={self.tn:g}, reduction={self.reduction!r}"
