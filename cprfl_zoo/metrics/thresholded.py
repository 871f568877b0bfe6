"""Metrics of hard predictions: OP, OR, OF1, CP, CR, CF1 at a threshold and/or at top-k.

* :func:`threshold_metrics` / :class:`ThresholdMetrics`: overall (micro) and per-class (macro)
  precision, recall and F1, with CF1 the harmonic mean of CP and CR (the ML-GCN convention).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .ranking import _check_scores_targets

__all__ = ["ThresholdMetrics", "threshold_metrics"]


@dataclass(frozen=True)
class ThresholdMetrics:
    """Overall (micro) and per-class (macro) precision, recall and F1 of hard predictions.

    Attributes:
        overall_precision: OP = total true positives / total predicted positives.
        overall_recall: OR = total true positives / total ground-truth positives.
        overall_f1: OF1 = harmonic mean of OP and OR.
        class_precision: CP = mean per-class precision over the evaluable classes.
        class_recall: CR = mean per-class recall over the evaluable classes.
        class_f1: CF1 = harmonic mean of CP and CR (the ML-GCN convention, not the mean of the
            per-class F1 scores).
        precision: ``(C,)`` per-class precision (0 where the class was never predicted).
        recall: ``(C,)`` per-class recall (NaN for classes without a positive).
        excluded: Classes without a positive in the evaluation set, left out of CP and CR.
    """

    overall_precision: float
    overall_recall: float
    overall_f1: float
    class_precision: float
    class_recall: float
    class_f1: float
    precision: Tensor
    recall: Tensor
    excluded: tuple[int, ...]

    def as_dict(self, scale: float = 1.0) -> dict[str, float]:
        """Return ``{"OP", "OR", "OF1", "CP", "CR", "CF1"}`` multiplied by ``scale``.

        Args:
            scale: Use 100 for percentages.

        Returns:
            The six summary numbers.
        """
        return {
            "OP": self.overall_precision * scale,
            "OR": self.overall_recall * scale,
            "OF1": self.overall_f1 * scale,
            "CP": self.class_precision * scale,
            "CR": self.class_recall * scale,
            "CF1": self.class_f1 * scale,
        }


def _harmonic(p: float, r: float) -> float:
    if math.isnan(p) or math.isnan(r):
        return math.nan
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _safe_ratio(num: Tensor, den: Tensor) -> float:
    return float(num / den) if float(den) > 0 else 0.0


def _check_threshold(threshold: float | Tensor | Sequence[float], scores: Tensor) -> Tensor:
    """The threshold as a tensor that broadcasts against ``(N, C)`` scores."""
    num_classes = scores.shape[1]
    if isinstance(threshold, (bool, str)) or not isinstance(
        threshold, (int, float, Tensor, Sequence)
    ):
        raise ValueError(f"threshold must be a number or one per class, got {threshold!r}")
    value = torch.as_tensor(threshold, dtype=torch.float64).to(scores.device)
    if value.dim() > 1 or (value.dim() == 1 and value.numel() != num_classes):
        raise ValueError(
            f"threshold must be one number or one per class ({num_classes}), got shape "
            f"{tuple(value.shape)}"
        )
    if bool(torch.isnan(value).any()):
        raise ValueError("threshold must not be NaN")
    return value.to(scores.dtype) if scores.is_floating_point() else value


def threshold_metrics(
    scores: Tensor,
    targets: Tensor,
    *,
    threshold: float | Tensor | Sequence[float] | None = None,
    top_k: int | None = None,
) -> ThresholdMetrics:
    """OP, OR, OF1, CP, CR and CF1 of thresholded and/or top-k predictions.

    A label is predicted positive when its score is ``>= threshold`` (if given) and it is among
    the ``top_k`` highest scores of its image (if given); giving both reproduces the ML-GCN
    "top-3" protocol (``top_k=3, threshold=0`` on logits). The threshold is compared with
    ``scores`` as given: ``0.5`` on probabilities is ``0.0`` on logits. Among tied scores
    :func:`torch.topk` picks arbitrarily.

    Conventions for undefined ratios: a class never predicted has precision 0; a class without
    a positive in the evaluation set has no recall and is left out of CP and CR (as it is of
    mAP) but still counts in OP through its false positives; OP, OR and the F1 scores are 0
    when their denominator is 0.

    Args:
        scores: ``(N, C)`` logits or probabilities.
        targets: ``(N, C)`` multi-hot 0/1 targets.
        threshold: Score threshold, one for every class or ``(C,)`` per-class thresholds (a
            calibrated model's ``get_thresholds()`` on probabilities), or ``None`` for none.
        top_k: Number of labels kept per image, or ``None`` for no top-k restriction.

    Returns:
        A :class:`ThresholdMetrics` (fractions in [0, 1]).

    Raises:
        ValueError: On a bad input, if neither ``threshold`` nor ``top_k`` is given, or if
            ``top_k`` is not an int in ``[1, C]``.
    """
    scores, targets = _check_scores_targets(scores, targets)
    num_classes = scores.shape[1]
    if threshold is None and top_k is None:
        raise ValueError("give a threshold, a top_k, or both")
    predicted = torch.ones_like(targets)
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= num_classes:
            raise ValueError(f"top_k must be an int in [1, {num_classes}], got {top_k!r}")
        keep = scores.topk(top_k, dim=1).indices
        predicted = torch.zeros_like(targets).scatter_(1, keep, True)
    if threshold is not None:
        predicted = predicted & (scores >= _check_threshold(threshold, scores))
    true_pos = (predicted & targets).sum(0).to(torch.float64)
    num_pred = predicted.sum(0).to(torch.float64)
    num_gt = targets.sum(0).to(torch.float64)
    precision = torch.where(num_pred > 0, true_pos / num_pred.clamp_min(1), 0.0)
    recall = torch.where(num_gt > 0, true_pos / num_gt.clamp_min(1), math.nan)
    valid = num_gt > 0
    excluded = tuple((~valid).nonzero().flatten().tolist())
    op = _safe_ratio(true_pos.sum(), num_pred.sum())
    orec = _safe_ratio(true_pos.sum(), num_gt.sum())
    cp = float(precision[valid].mean()) if bool(valid.any()) else math.nan
    cr = float(recall[valid].mean()) if bool(valid.any()) else math.nan
    return ThresholdMetrics(
        overall_precision=op,
        overall_recall=orec,
        overall_f1=_harmonic(op, orec),
        class_precision=cp,
        class_recall=cr,
        class_f1=_harmonic(cp, cr),
        precision=precision,
        recall=recall,
        excluded=excluded,
    )
