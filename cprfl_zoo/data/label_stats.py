"""Per-class statistics of a multi-label training list, read from its labels.

The long-tail tools need each class's number of positive images (the Distribution-Balanced loss,
the samplers) or its positive rate (logit adjustment). These functions read them from the
multi-hot targets a dataset already holds, so no separate counts file is needed:

* :func:`multi_hot_targets`: the ``(N, C)`` target matrix of a :class:`MultiLabelImageList`, its
  :class:`ImageListEntries`, a ``torch.utils.data.Subset`` of either, any object with a
  ``targets`` attribute, or the matrix itself.
* :func:`class_counts`: images containing each class.
* :func:`class_priors`: each class's positive rate among the images where it is labelled.

A label counts as positive when its target is at least 0.5 and as known when it is not negative
(``-1`` marks an unknown label, as in the losses).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Subset

from .image_list import ImageListEntries

__all__ = ["class_counts", "class_priors", "multi_hot_targets"]


def multi_hot_targets(dataset: Any) -> torch.Tensor:
    """Return the ``(N, C)`` target matrix of a multi-label dataset.

    Args:
        dataset: A :class:`~cprfl_zoo.data.MultiLabelImageList` (or any object with a
            ``targets`` tensor or array of shape (N, C)), an
            :class:`~cprfl_zoo.data.ImageListEntries`, a ``torch.utils.data.Subset`` of one
            of these (its rows are taken), or an ``(N, C)`` tensor or array.

    Returns:
        The targets as a tensor (not a copy where the dataset holds one); 1 = positive,
        0 = negative, -1 = unknown.

    Raises:
        TypeError: If no target matrix can be found (the message names the type).
        ValueError: If the targets are not 2-D or not real numbers.
    """
    if isinstance(dataset, Subset):
        return multi_hot_targets(dataset.dataset)[torch.as_tensor(dataset.indices)]
    if isinstance(dataset, ImageListEntries):
        targets: Any = dataset.targets()
    elif isinstance(dataset, torch.Tensor):
        targets = dataset
    elif hasattr(dataset, "targets"):
        targets = dataset.targets
    elif hasattr(dataset, "__array__"):  # a NumPy array
        targets = dataset
    else:
        raise TypeError(
            f"cannot read multi-label targets from a {type(dataset).__name__}: pass a "
            "MultiLabelImageList, ImageListEntries, a Subset of one, an object with a (N, C) "
            "'targets' attribute, or the (N, C) target matrix"
        )
    if callable(targets):
        targets = targets()
    t = torch.as_tensor(targets)
    if t.ndim != 2:
        raise ValueError(
            f"multi-label targets must be a (num_images, num_classes) matrix, got shape "
            f"{tuple(t.shape)} from {type(dataset).__name__}"
        )
    if t.is_complex():
        raise ValueError(f"targets must be real numbers, got dtype {t.dtype}")
    return t


def class_counts(dataset: Any) -> torch.Tensor:
    """Return the number of images containing each class (targets >= 0.5).

    Args:
        dataset: See :func:`multi_hot_targets`.

    Returns:
        ``(C,)`` int64 counts.

    Raises:
        TypeError: If no target matrix can be found.
        ValueError: If the targets are not a 2-D matrix.

    Example:
        >>> train_set = create_lt_dataset("coco-lt", "train", "data/coco")
        >>> counts = class_counts(train_set)  # the same as train_set.class_counts
    """
    targets = multi_hot_targets(dataset)
    return (targets.float() >= 0.5).sum(dim=0, dtype=torch.long)


def class_priors(dataset: Any) -> torch.Tensor:
    """Return each class's positive rate: positives / images where the class is labelled.

    With no unknown labels this is ``class_counts(dataset) / len(dataset)``, the multi-label
    prior π of logit adjustment (:class:`cprfl_zoo.losses.LogitAdjustment`).

    Args:
        dataset: See :func:`multi_hot_targets`.

    Returns:
        ``(C,)`` float64 priors; 0 for a class that is never labelled.

    Raises:
        TypeError: If no target matrix can be found.
        ValueError: If the targets are not a 2-D matrix.
    """
    targets = multi_hot_targets(dataset).double()
    positives = (targets >= 0.5).sum(dim=0, dtype=torch.float64)
    known = (targets >= 0).sum(dim=0, dtype=torch.float64)
    return positives / known.clamp(min=1.0)
