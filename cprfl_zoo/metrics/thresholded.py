"""Metrics of hard predictions: OP, OR, OF1, CP, CR, CF1 at a threshold and/or at top-k.

* :func:`threshold_metrics` / :class:`ThresholdMetrics`: overall (micro) and per-class (macro)
  precision, recall and F1, with CF1 the harmonic mean of CP and CR (the ML-GCN convention).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._chunks import row_chunks, sigmoid_probabilities
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


def _check_threshold(threshold: object, num_classes: int) -> float | Tensor:
    """A real number, or ``(C,)`` per-class thresholds (a tensor or a sequence), none NaN."""
    is_array = hasattr(threshold, "__array__") and getattr(threshold, "ndim", 0) > 0
    if isinstance(threshold, (list, tuple)) or (is_array and not isinstance(threshold, Tensor)):
        try:
            threshold = torch.as_tensor(threshold, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(
                f"threshold must be a number or one per class, got {threshold!r}"
            ) from None
    if isinstance(threshold, Tensor):
        if threshold.shape != (num_classes,) or threshold.is_complex() or threshold.is_meta:
            raise ValueError(
                f"threshold must be one number or one per class ({num_classes}), got shape "
                f"{tuple(threshold.shape)}, dtype {threshold.dtype} on {threshold.device}"
            )
        if threshold.dtype == torch.bool:
            raise ValueError("threshold must be numbers, got a bool tensor")
        if bool(torch.isnan(threshold.float()).any()):
            raise ValueError("threshold must not be NaN")
        return threshold.detach()
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise ValueError(f"threshold must be a number or one per class, got {threshold!r}")
    if math.isnan(threshold):
        raise ValueError("threshold must not be NaN")
    return float(threshold)


def threshold_metrics(
    scores: Tensor,
    targets: Tensor,
    *,
    threshold: float | Tensor | Sequence[float] | None = None,
    top_k: int | None = None,
    from_logits: bool = False,
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

    The images are counted in chunks of rows, so memory stays bounded on large sets.

    Args:
        scores: ``(N, C)`` logits or probabilities.
        targets: ``(N, C)`` multi-hot 0/1 targets.
        threshold: Score threshold: a real number (Python or NumPy), ``(C,)`` per-class
            thresholds (a tensor or a sequence, e.g. a calibrated model's ``get_thresholds()``),
            or ``None`` for none.
        top_k: Number of labels kept per image, or ``None`` for no top-k restriction.
        from_logits: ``scores`` are logits: ``threshold`` and ``top_k`` apply to their float32
            sigmoid, the probabilities :func:`cprfl_zoo.predict.predict` compares with the
            model's thresholds.

    Returns:
        A :class:`ThresholdMetrics` (fractions in [0, 1]).

    Raises:
        ValueError: On a bad input, if neither ``threshold`` nor ``top_k`` is given, if
            ``threshold`` is NaN or a tensor of the wrong shape, or if ``top_k`` is not an
            int in ``[1, C]``.
    """
    scores, targets = _check_scores_targets(scores, targets)
    n, num_classes = scores.shape
    if threshold is None and top_k is None:
        raise ValueError("give a threshold, a top_k, or both")
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= num_classes
    ):
        raise ValueError(f"top_k must be an int in [1, {num_classes}], got {top_k!r}")
    limit = None if threshold is None else _check_threshold(threshold, num_classes)
    if isinstance(limit, Tensor):
        limit = limit.to(scores.device)[None]
    true_pos = torch.zeros(num_classes, dtype=torch.int64, device=scores.device)
    num_pred = torch.zeros_like(true_pos)
    num_gt = torch.zeros_like(true_pos)
    for rows in row_chunks(n, num_classes):
        part = sigmoid_probabilities(scores[rows]) if from_logits else scores[rows]
        hits = targets[rows]
        predicted = torch.ones_like(hits)
        if top_k is not None:
            keep = part.topk(top_k, dim=1).indices
            predicted = torch.zeros_like(hits).scatter_(1, keep, True)
        if limit is not None:
            predicted &= part >= limit
        true_pos += (predicted & hits).sum(0)
        num_pred += predicted.sum(0)
        num_gt += hits.sum(0)
    return _metrics_from_counts(
        true_pos.to(torch.float64), num_pred.to(torch.float64), num_gt.to(torch.float64)
    )


def _metrics_from_counts(true_pos: Tensor, num_pred: Tensor, num_gt: Tensor) -> ThresholdMetrics:
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
