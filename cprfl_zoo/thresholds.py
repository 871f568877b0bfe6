"""Decision thresholds of a multi-label model: validation and F1 calibration.

A CPRFL model outputs one logit per class; ``sigmoid(logit)`` is the class probability and a
label is predicted when its probability is ``>=`` its class's threshold. Thresholds are
**probabilities**, one per class in logit order, stored in the saved model's ``config.json``
(``model_args.thresholds``); a model that was never calibrated uses 0.5 for every class.

:func:`calibrate_thresholds` picks them on a validation set: for each class the threshold that
maximises that class's F1, and one global threshold that maximises the overall (micro) F1.
It works on exactly the probabilities prediction compares with the thresholds, the **float32**
``sigmoid`` of the logits (``logits.float().sigmoid()``, as :func:`~cprfl_zoo.predict.predict`), and
returns float32 thresholds, so ``prob >= threshold`` selects on the validation set exactly the
samples whose F1 is reported (float32 saturates: logits above about 16.6 all have probability
1.0 and tie). One sort per class finds every per-class candidate at once, in chunks of classes;
the global threshold is found from histograms of the float32 bit patterns, exactly and without
sorting the N x C values, so memory stays bounded (see ``benchmarks/bench_eval_memory.py``).

A class with no positive in the validation set (fewer than ``min_positives``) has no F1 to
maximise: its F1-optimal threshold would be "never predict", which silences exactly the rare
classes a long-tailed model is for. Such a class gets the **global threshold** instead (or the
``fallback`` you pass), a floor chosen from all classes' evidence.

Targets are multi-hot 0/1, checked as :mod:`cprfl_zoo.metrics` checks them: a ``-1``
("unknown") label is an error there and here, so both see the same labels.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .metrics import _check_scores_targets
from .metrics._chunks import column_chunks, sigmoid_probabilities

__all__ = [
    "DEFAULT_THRESHOLD",
    "ThresholdCalibration",
    "best_f1_thresholds",
    "calibrate_thresholds",
    "validate_thresholds",
]

DEFAULT_THRESHOLD = 0.5
"""Probability threshold of every class of a model that was never calibrated."""

KEEP_ALL_MARGIN_ULPS = 8
"""Float32 steps below the lowest probability of a keep-every-sample calibrated threshold."""


def validate_thresholds(values: Any, num_classes: int, what: str = "thresholds") -> list[float]:
    """Check per-class probability thresholds and return them as a list of floats.

    Args:
        values: A number (the same threshold for every class) or a sequence / 1-D tensor /
            array of ``num_classes`` numbers in [0, 1], in logit order.
        num_classes: The number of classes C.
        what: How to name the value in messages.

    Returns:
        ``num_classes`` floats in [0, 1].

    Raises:
        ValueError: If a value is not a finite number in [0, 1] (the message names its
            position), the length is not ``num_classes``, an array or tensor is not 1-D, or a
            tensor is on the meta device.
    """
    if isinstance(values, numbers.Real) and not isinstance(values, bool):
        values = [values] * num_classes  # any real number, numpy scalars included
    if isinstance(values, Tensor):
        if values.is_meta:
            raise ValueError(f"{what} is a tensor on the meta device, which holds no values")
        if values.ndim != 1 or values.is_complex():
            raise ValueError(
                f"{what} must be a 1-D real tensor of {num_classes} values, got shape "
                f"{tuple(values.shape)} and dtype {values.dtype}"
            )
        values = values.detach().cpu().tolist()
    elif hasattr(values, "tolist") and not isinstance(values, (str, bytes)):  # numpy arrays
        shape = tuple(getattr(values, "shape", ()))
        if len(shape) != 1:
            raise ValueError(
                f"{what} must be a 1-D array of {num_classes} values, got shape {shape}"
            )
        values = values.tolist()
    if isinstance(values, (str, bytes, bytearray)) or not isinstance(values, Sequence):
        raise ValueError(
            f"{what} must be a number or a sequence of {num_classes} numbers in [0, 1], got "
            f"{type(values).__name__}"
        )
    if len(values) != num_classes:
        raise ValueError(
            f"{what} has {len(values)} values but the model has {num_classes} classes; expected "
            "one probability threshold per class, in logit order"
        )
    out = []
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{what}[{i}] is {value!r} ({type(value).__name__}), not a number")
        try:
            value = float(value)
            shown = repr(value)
        except OverflowError:  # an int like 10**400
            value, shown = math.inf, f"{str(value)[:12]}... (too large for a float)"
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(
                f"{what}[{i}] is {shown}; thresholds are probabilities in [0, 1] (applied to "
                "sigmoid(logits), not to the logits)"
            )
        out.append(value)
    return out


@dataclass(frozen=True)
class ThresholdCalibration:
    """Result of :func:`calibrate_thresholds`.

    Attributes:
        thresholds: ``(C,)`` float32 probability thresholds, one per class in logit order.
        global_threshold: The single probability threshold that maximises the overall F1.
        class_f1: ``(C,)`` validation F1 of each class at its threshold (NaN for the classes in
            ``fallback_classes``, which had no F1 to maximise).
        global_f1: Overall (micro) validation F1 at ``global_threshold``.
        num_positives: ``(C,)`` validation positives of each class.
        fallback_classes: Classes with fewer than ``min_positives`` validation positives, which
            got the fallback threshold.
    """

    thresholds: Tensor
    global_threshold: float
    class_f1: Tensor
    global_f1: float
    num_positives: Tensor
    fallback_classes: tuple[int, ...]

    def as_list(self) -> list[float]:
        """The per-class thresholds as floats, for :meth:`CPRFL.set_thresholds`."""
        return [float(v) for v in self.thresholds.tolist()]


def best_f1_thresholds(probs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """For each column, the threshold ``t`` maximising F1 of the rule ``prob >= t``.

    The probabilities are taken in float32, the dtype :func:`cprfl_zoo.predict.predict`
    computes and the thresholds are stored in, and ``prob >= t`` on them reproduces exactly the
    cut whose F1 is returned. Candidate cuts lie between consecutive distinct values of the
    column sorted in decreasing order (a cut inside a run of equal values cannot be made); the
    threshold is the float32 midpoint between the last value kept and the next one, which
    leaves a margin on both sides, or the last value kept when no float32 lies strictly between
    them. When every sample is kept, the threshold is the lowest value moved down by
    :data:`KEEP_ALL_MARGIN_ULPS` float32 steps, so that a sigmoid computed another way (another
    kernel, NumPy, ONNX Runtime; they differ by a few units in the last place) still keeps it.
    Among equal F1 scores the highest threshold wins. Columns are processed in chunks that
    bound the memory.

    Args:
        probs: ``(N, C)`` probabilities (any float dtype, cast to float32).
        targets: ``(N, C)`` boolean targets.

    Returns:
        ``(thresholds, f1)``: ``(C,)`` float32 thresholds and float64 F1 scores; both NaN for a
        column without a positive.
    """
    n, c = probs.shape
    thresholds = torch.full((c,), math.nan, dtype=torch.float32)
    best = torch.full((c,), math.nan, dtype=torch.float64)
    for cols in column_chunks(n, c):
        part = _float32_probabilities(probs[:, cols])
        thresholds[cols], best[cols] = _column_cuts(part, targets[:, cols].cpu())
    return thresholds, best


def _float32_probabilities(probs: Tensor) -> Tensor:
    # abs() only turns a -0.0 into 0.0, so that equal values have equal bit patterns
    return probs.detach().to(device="cpu", dtype=torch.float32).abs().contiguous()


def _cut_between(at: Tensor, below: Tensor, has_below: Tensor) -> Tensor:
    """Float32 thresholds ``t`` with ``below < t <= at`` (``0 <= t <= at`` without ``below``)."""
    mid = ((at.double() + below.double()) / 2).float()
    mid = torch.where(mid > below, mid, at)  # rounded onto ``below``: no float32 in between
    bits = (at.view(torch.int32) - KEEP_ALL_MARGIN_ULPS).clamp_min(0)
    return torch.where(has_below, mid, bits.view(torch.float32))


def _column_cuts(probs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Best-F1 cut of each column of float32 ``probs`` (see :func:`best_f1_thresholds`)."""
    n = probs.shape[0]
    scores, order = probs.sort(dim=0, descending=True)
    hits = targets.gather(0, order).cumsum(0)  # int64 true positives of each cut: exact
    positives = hits[-1:]
    ranks = torch.arange(1, n + 1, dtype=torch.int64)[:, None]
    f1 = 2 * hits.double() / (ranks + positives).double()
    # A cut inside a run of equal scores cannot be made by a threshold.
    f1[:-1][scores[:-1] == scores[1:]] = -1.0
    value, k = f1.max(dim=0)  # the first maximum: the highest threshold
    at = scores.gather(0, k[None])[0]
    below = scores.gather(0, (k + 1).clamp_max(n - 1)[None])[0]
    cut = _cut_between(at, below, k + 1 < n)
    has_pos = positives[0] > 0
    return torch.where(has_pos, cut, math.nan), torch.where(has_pos, value, math.nan)


# The global cut, exactly, without sorting all N x C probabilities: float32 values in [0, 1]
# are non-negative, so their bit patterns (as int32) sort like the values. A histogram of the
# high 16 bits gives the F1 of every cut between two bins and an upper bound for the cuts
# inside each bin; only the bins whose bound reaches the best cut between bins are counted
# value by value (a histogram of their low 16 bits).
_HIGH_SHIFT = 16
_LOW_MASK = (1 << _HIGH_SHIFT) - 1
_HIGH_BINS = (0x3F800000 >> _HIGH_SHIFT) + 1  # 0x3F800000 is the bit pattern of 1.0
_REFINE_BINS = 32  # high bins counted value by value per pass over the data


def _global_cut(chunks: Callable[[], Iterable[tuple[Tensor, Tensor]]]) -> tuple[float, float]:
    """Best-F1 threshold and F1 of all the values together, as one column.

    Args:
        chunks: Called once per pass; yields ``(probs, targets)`` chunks covering every value
            once: float32 probabilities in [0, 1] without -0.0, and boolean targets.

    Returns:
        ``(threshold, f1)`` as :func:`best_f1_thresholds` would give them for the flattened
        column; ``(nan, nan)`` without a positive.
    """

    def bit_chunks() -> Iterator[tuple[Tensor, Tensor]]:
        for probs, targets in chunks():
            yield probs.reshape(-1).view(torch.int32).long(), targets.reshape(-1)

    count = torch.zeros(_HIGH_BINS, dtype=torch.int64)
    hits = torch.zeros(_HIGH_BINS, dtype=torch.int64)
    for bits, targets in bit_chunks():
        high = bits >> _HIGH_SHIFT
        count += torch.bincount(high, minlength=_HIGH_BINS)
        hits += torch.bincount(high[targets], minlength=_HIGH_BINS)
    positives = int(hits.sum())
    if positives == 0:
        return math.nan, math.nan
    kept_from = count.flip(0).cumsum(0).flip(0)  # values in this bin or a higher one
    hits_from = hits.flip(0).cumsum(0).flip(0)
    kept_above, hits_above = kept_from - count, hits_from - hits
    present = count > 0
    # keeping whole bins down to a non-empty one is a cut at its lowest value
    best_between = float((2 * hits_from.double() / (kept_from + positives).double())[present].max())
    # inside a bin, F1 is at most that of keeping all its positives and none of its negatives
    bound = 2 * (hits_above + hits).double() / (kept_above + hits + positives).double()
    refine = (present & (bound >= best_between)).nonzero().flatten().flip(0).tolist()

    best_f1, best_bits = -1.0, -1
    lows = torch.arange(_LOW_MASK, -1, -1)
    for start in range(0, len(refine), _REFINE_BINS):
        batch = refine[start : start + _REFINE_BINS]
        slot = torch.full((_HIGH_BINS,), -1, dtype=torch.int64)
        slot[batch] = torch.arange(len(batch))
        size = len(batch) << _HIGH_SHIFT
        value_count = torch.zeros(size, dtype=torch.int64)
        value_hits = torch.zeros(size, dtype=torch.int64)
        for bits, targets in bit_chunks():
            where = slot[bits >> _HIGH_SHIFT]
            inside = where >= 0
            index = (where[inside] << _HIGH_SHIFT) | (bits[inside] & _LOW_MASK)
            value_count += torch.bincount(index, minlength=size)
            value_hits += torch.bincount(index[targets[inside]], minlength=size)
        for j, high in enumerate(batch):
            # this bin's values from the highest down, after everything above the bin
            n_kept = value_count[j << _HIGH_SHIFT : (j + 1) << _HIGH_SHIFT].flip(0)
            n_hits = value_hits[j << _HIGH_SHIFT : (j + 1) << _HIGH_SHIFT].flip(0)
            kept = kept_above[high] + n_kept.cumsum(0)
            tp = hits_above[high] + n_hits.cumsum(0)
            f1 = torch.where(n_kept > 0, 2 * tp.double() / (kept + positives).double(), -1.0)
            value, k = f1.max(dim=0)  # the first maximum: the highest value of the bin
            if float(value) > best_f1:  # ties: the earlier, higher bin wins
                best_f1, best_bits = float(value), (high << _HIGH_SHIFT) | int(lows[k])
    below_bits = -1
    for bits, _ in bit_chunks():
        lower = bits[bits < best_bits]
        if lower.numel():
            below_bits = max(below_bits, int(lower.max()))
    at = torch.tensor([best_bits], dtype=torch.int32).view(torch.float32)
    below = torch.tensor([max(below_bits, 0)], dtype=torch.int32).view(torch.float32)
    cut = _cut_between(at, below, torch.tensor([below_bits >= 0]))
    return float(cut[0]), best_f1


def calibrate_thresholds(
    scores: Tensor,
    targets: Tensor,
    *,
    from_logits: bool = True,
    min_positives: int = 1,
    fallback: float | None = None,
) -> ThresholdCalibration:
    """Per-class and global probability thresholds that maximise F1 on a validation set.

    Args:
        scores: ``(N, C)`` validation logits (or probabilities with ``from_logits=False``).
        targets: ``(N, C)`` multi-hot 0/1 targets, checked as :mod:`cprfl_zoo.metrics` does
            (``-1`` "unknown" labels are an error, as there).
        from_logits: ``scores`` are logits; their float32 sigmoid is taken, as prediction
            does (with ``False``, the probabilities are cast to float32).
        min_positives: Classes with fewer validation positives than this get the fallback
            threshold instead of their own (1: only classes without a positive).
        fallback: Threshold of those classes (default: the global threshold).

    Returns:
        A :class:`ThresholdCalibration`; ``result.as_list()`` goes to
        :meth:`CPRFL.set_thresholds <cprfl_zoo.model.CPRFL.set_thresholds>`.

    Raises:
        ValueError: On bad scores or targets, no class (C = 0), a ``min_positives`` below 1 or
            a ``fallback`` outside [0, 1].
    """
    scores, targets = _check_scores_targets(scores, targets)
    n, c = scores.shape
    if c == 0:
        raise ValueError(
            f"scores have shape {tuple(scores.shape)}: no class to calibrate (need C >= 1)"
        )
    if isinstance(min_positives, bool) or not isinstance(min_positives, int) or min_positives < 1:
        raise ValueError(f"min_positives must be an int >= 1, got {min_positives!r}")
    if fallback is not None:
        fallback = validate_thresholds([fallback], 1, "fallback")[0]
    if not from_logits:
        for cols in column_chunks(n, c):
            part = scores[:, cols]
            if bool(((part < 0) | (part > 1)).any()):
                raise ValueError(
                    "scores are not probabilities (values outside [0, 1]); pass logits with "
                    "from_logits=True"
                )

    def probability_chunks() -> Iterator[tuple[Tensor, Tensor]]:
        for cols in column_chunks(n, c):
            part = scores[:, cols]
            part = sigmoid_probabilities(part) if from_logits else part
            yield _float32_probabilities(part), targets[:, cols].cpu()

    per_class = torch.empty(c, dtype=torch.float32)
    class_f1 = torch.empty(c, dtype=torch.float64)
    num_positives = torch.empty(c, dtype=torch.int64)
    for cols, (probs, hits) in zip(column_chunks(n, c), probability_chunks(), strict=True):
        per_class[cols], class_f1[cols] = _column_cuts(probs, hits)
        num_positives[cols] = hits.sum(0)
    global_threshold, global_f1 = _global_cut(probability_chunks)
    if math.isnan(global_threshold):
        global_threshold = DEFAULT_THRESHOLD  # no positive at all
    few = num_positives < min_positives
    floor = global_threshold if fallback is None else fallback
    thresholds = torch.where(few, torch.tensor(floor, dtype=torch.float32), per_class)
    class_f1 = torch.where(few, math.nan, class_f1)
    return ThresholdCalibration(
        thresholds=thresholds,
        global_threshold=global_threshold,
        class_f1=class_f1,
        global_f1=global_f1,
        num_positives=num_positives,
        fallback_classes=tuple(few.nonzero().flatten().tolist()),
    )
