"""The head / medium / tail class split of Wu et al. (2020), and mAP on each part.

* :func:`long_tail_split` / :class:`LongTailSplit`: classes grouped by their number of positive
  **training** images (head >= 100, medium 20 to 99, tail < 20 by default), the split used by
  every long-tailed multi-label paper.
* :func:`long_tail_map` / :class:`LongTailMAP`: mAP overall and on the head, medium and tail
  classes of an evaluation set.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .ranking import _nanmean, mean_average_precision

__all__ = ["LongTailMAP", "LongTailSplit", "long_tail_map", "long_tail_split"]


@dataclass(frozen=True)
class LongTailSplit:
    """Classes grouped by their number of positive *training* images.

    Attributes:
        head: Class indices with at least ``head_threshold`` training positives.
        medium: Class indices with ``tail_threshold`` to ``head_threshold - 1`` positives.
        tail: Class indices with fewer than ``tail_threshold`` positives.
        class_counts: The per-class training counts the split was made from.
        head_threshold: Smallest count of a head class.
        tail_threshold: Smallest count of a medium class (tail classes have fewer).
    """

    head: tuple[int, ...]
    medium: tuple[int, ...]
    tail: tuple[int, ...]
    class_counts: tuple[int, ...]
    head_threshold: int = 100
    tail_threshold: int = 20

    @property
    def num_classes(self) -> int:
        """Number of classes in the split."""
        return len(self.class_counts)

    def groups(self) -> dict[str, tuple[int, ...]]:
        """Return ``{"head": ..., "medium": ..., "tail": ...}``."""
        return {"head": self.head, "medium": self.medium, "tail": self.tail}

    def group_of(self, class_index: int) -> str:
        """Return ``"head"``, ``"medium"`` or ``"tail"`` for one class index.

        Raises:
            IndexError: If ``class_index`` is not a class of the split.
        """
        for name, members in self.groups().items():
            if class_index in members:
                return name
        raise IndexError(f"class index {class_index} is outside [0, {self.num_classes})")


def long_tail_split(
    class_counts: Sequence[int] | Tensor, head_threshold: int = 100, tail_threshold: int = 20
) -> LongTailSplit:
    """Split classes into head / medium / tail by their number of training positives.

    This is the split of Wu et al. (ECCV 2020) used by CPRFL and the other long-tailed
    multi-label papers: head = at least 100 positive training images, medium = 20 to 99,
    tail = fewer than 20. On the published COCO-LT and VOC-LT training lists it gives 22/33/25
    and 6/6/8 classes. Count the **training** list (e.g. with
    :func:`cprfl_zoo.data.read_image_list`), never the test set.

    Args:
        class_counts: ``(C,)`` non-negative integer counts of positive training images.
        head_threshold: A class with at least this many positives is a head class.
        tail_threshold: A class with fewer than this many positives is a tail class.

    Returns:
        A :class:`LongTailSplit`.

    Raises:
        ValueError: If the counts are not a non-empty 1-D sequence of finite, whole,
            non-negative numbers below 2**63 (a bool or a string is refused, naming its
            position), or the thresholds are not integers with
            ``head_threshold >= tail_threshold >= 0``.
    """
    counts = torch.tensor(_check_counts(class_counts), dtype=torch.int64)
    for name, value in (("head_threshold", head_threshold), ("tail_threshold", tail_threshold)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    head_threshold, tail_threshold = int(head_threshold), int(tail_threshold)
    if head_threshold < tail_threshold:
        raise ValueError(
            f"head_threshold ({head_threshold}) must be >= tail_threshold ({tail_threshold})"
        )
    head = counts >= head_threshold
    tail = counts < tail_threshold
    medium = ~head & ~tail
    return LongTailSplit(
        head=tuple(head.nonzero().flatten().tolist()),
        medium=tuple(medium.nonzero().flatten().tolist()),
        tail=tuple(tail.nonzero().flatten().tolist()),
        class_counts=tuple(counts.tolist()),
        head_threshold=head_threshold,
        tail_threshold=tail_threshold,
    )


_MAX_COUNT = (1 << 63) - 1


def _check_counts(class_counts: object) -> list[int]:
    """The counts as ints, or a ValueError naming the first bad one."""
    shape = getattr(class_counts, "shape", None)
    if isinstance(class_counts, Tensor) and class_counts.is_meta:
        raise ValueError("class_counts is a tensor on the meta device, which holds no values")
    if shape is not None and len(shape) != 1:
        raise ValueError(f"class_counts must be a non-empty 1-D sequence, got shape {tuple(shape)}")
    values = class_counts.tolist() if hasattr(class_counts, "tolist") else class_counts
    if isinstance(values, (str, bytes, bytearray)) or not isinstance(values, Sequence):
        raise ValueError(
            f"class_counts must be a non-empty 1-D sequence of counts, got "
            f"{type(class_counts).__name__}"
        )
    if len(values) == 0:
        raise ValueError("class_counts must be a non-empty 1-D sequence, got no count")
    counts = []
    for i, value in enumerate(values):
        if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
            raise ValueError(
                f"class_counts must be a non-empty 1-D sequence; class_counts[{i}] is a sequence"
            )
        # bool is a number to Python; a count of True is a mistake, not 1
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(
                f"class_counts[{i}] is {value!r} ({type(value).__name__}), not a count of "
                "training images"
            )
        if isinstance(value, numbers.Integral):
            count = int(value)
        elif not math.isfinite(value):
            raise ValueError(f"class_counts[{i}] is {value!r}, not a finite count")
        elif not float(value).is_integer():
            raise ValueError(
                f"class_counts[{i}] is {value!r}: class_counts must be whole numbers of "
                "training images"
            )
        else:
            count = int(value)
        if count > _MAX_COUNT:
            raise ValueError(f"class_counts[{i}] is {count}, more than a count can be (2**63 - 1)")
        counts.append(count)
    negative = [i for i, count in enumerate(counts) if count < 0]
    if negative:
        raise ValueError(f"class_counts must be non-negative; classes {negative[:10]} are negative")
    return counts


@dataclass(frozen=True)
class LongTailMAP:
    """mAP overall and on the head / medium / tail classes.

    Attributes:
        map: mAP over all evaluable classes.
        head: mAP over the evaluable head classes (NaN if there is none).
        medium: mAP over the evaluable medium classes (NaN if there is none).
        tail: mAP over the evaluable tail classes (NaN if there is none).
        ap: ``(C,)`` float64 per-class AP (NaN for classes without a positive).
        split: The :class:`LongTailSplit` used.
        excluded: Classes without a positive in the evaluation set, left out of every mean.
    """

    map: float
    head: float
    medium: float
    tail: float
    ap: Tensor
    split: LongTailSplit
    excluded: tuple[int, ...]

    def as_dict(self, scale: float = 1.0) -> dict[str, float]:
        """Return ``{"mAP", "mAP_head", "mAP_medium", "mAP_tail"}`` multiplied by ``scale``.

        Args:
            scale: Use 100 for the percentages of the papers' tables.

        Returns:
            The four summary numbers.
        """
        return {
            "mAP": self.map * scale,
            "mAP_head": self.head * scale,
            "mAP_medium": self.medium * scale,
            "mAP_tail": self.tail * scale,
        }


def long_tail_map(
    scores: Tensor,
    targets: Tensor,
    split: LongTailSplit | Sequence[int] | Tensor,
    *,
    head_threshold: int = 100,
    tail_threshold: int = 20,
    class_names: Sequence[str] | None = None,
) -> LongTailMAP:
    """Compute mAP overall and on the head, medium and tail classes.

    Each group's mAP is the mean AP of its classes that have a positive in the evaluation set
    (see :func:`mean_average_precision`).

    Args:
        scores: ``(N, C)`` logits or probabilities on the evaluation set.
        targets: ``(N, C)`` multi-hot 0/1 targets.
        split: A :class:`LongTailSplit`, or the ``(C,)`` per-class counts of positive
            **training** images to build one with :func:`long_tail_split`.
        head_threshold: Passed to :func:`long_tail_split` when ``split`` is a count vector.
        tail_threshold: Passed to :func:`long_tail_split` when ``split`` is a count vector.
        class_names: Optional names, used to name excluded classes in the log.

    Returns:
        A :class:`LongTailMAP`.

    Raises:
        ValueError: On a bad input, or if the split does not have one entry per class.
    """
    if not isinstance(split, LongTailSplit):
        split = long_tail_split(split, head_threshold, tail_threshold)
    result = mean_average_precision(scores, targets, class_names)
    if split.num_classes != result.ap.numel():
        raise ValueError(
            f"the long-tail split covers {split.num_classes} classes but scores have "
            f"{result.ap.numel()}"
        )
    group_maps = {
        name: _nanmean(result.ap[list(members)]) if members else math.nan
        for name, members in split.groups().items()
    }
    return LongTailMAP(
        map=result.map,
        head=group_maps["head"],
        medium=group_maps["medium"],
        tail=group_maps["tail"],
        ap=result.ap,
        split=split,
        excluded=result.excluded,
    )
