"""Thresholded scores of a run of ``lt_emoji.py``: F1 at calibrated thresholds, and at 0.5.

AP ranks the images within a class, so it does not change under a per-class monotone map of
the logits. Post-hoc logit adjustment (``logits - τ·logit(π)``) is one, so it leaves every AP
as it is, and it leaves F1 at per-class thresholds calibrated on validation as it is too (the
calibrated cut moves with the logits). What it changes is F1 at one fixed threshold (0.5); the
run records all three, and the largest change of a class's AP under the adjustment (0 up to
rounding) as a check.
"""

from __future__ import annotations

from typing import Any

import torch


def _f1(scores: torch.Tensor, targets: torch.Tensor, threshold: Any) -> dict[str, float]:
    from cprfl_zoo.metrics import threshold_metrics

    m = threshold_metrics(scores, targets, threshold=threshold, from_logits=True)
    return {"CF1": round(100 * m.class_f1, 3), "OF1": round(100 * m.overall_f1, 3)}


def thresholded_scores(
    val_scores: torch.Tensor,
    val_y: torch.Tensor,
    test_scores: torch.Tensor,
    test_y: torch.Tensor,
    priors: torch.Tensor,
    tail: list[int],
) -> dict[str, Any]:
    """F1 of the test set at thresholds calibrated on validation, at 0.5, and at 0.5 post hoc.

    Args:
        val_scores: Validation logits (N_v, C).
        val_y: Validation targets (N_v, C).
        test_scores: Test logits (N_t, C).
        test_y: Test targets (N_t, C).
        priors: Training priors π (C,) of the post-hoc logit adjustment (τ = 1).
        tail: Indices of the tail classes.

    Returns:
        ``{"cal": {CF1, OF1, tail_CF1}, "half": {CF1, OF1}, "half_la": {CF1, OF1},
        "la_max_ap_change": float}`` (percent).
    """
    from cprfl_zoo.losses import adjust_logits
    from cprfl_zoo.metrics import average_precision
    from cprfl_zoo.thresholds import calibrate_thresholds

    thresholds = calibrate_thresholds(val_scores, val_y).thresholds
    cal = _f1(test_scores, test_y, thresholds)
    if tail:
        cal["tail_CF1"] = _f1(test_scores[:, tail], test_y[:, tail], thresholds[tail])["CF1"]
    adjusted = adjust_logits(test_scores, priors, 1.0)
    change = (average_precision(adjusted, test_y) - average_precision(test_scores, test_y)).abs()
    return {
        "cal": cal,
        "half": _f1(test_scores, test_y, 0.5),
        "half_la": _f1(adjusted, test_y, 0.5),
        "la_max_ap_change": round(100 * float(change.nan_to_num().max()), 6),
    }
