"""Multi-label evaluation metrics for long-tailed benchmarks, in torch.

Everything here works on a whole evaluation set at once: ``scores`` is an ``(N, C)`` tensor of
raw logits or probabilities (any monotone transform of the logits gives the same average
precision) and ``targets`` the matching ``(N, C)`` multi-hot tensor of 0/1 values. Under
DistributedDataParallel each rank sees only its shard, so gather the shards first with
:func:`gather_for_metrics` (or let :class:`MultiLabelEvaluator` do it); the metric functions
themselves never communicate.

* :func:`average_precision` / :func:`mean_average_precision`: per-class AP and mAP; classes
  without a positive in the evaluation set are excluded from the mean and reported.
* :func:`long_tail_split` / :func:`long_tail_map`: the head / medium / tail split of Wu et al.
  (2020) used by every LTMLC paper, and mAP on each part.
* :func:`threshold_metrics`: OP, OR, OF1, CP, CR, CF1 at a score threshold and/or at top-k.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "LongTailMAP",
    "LongTailSplit",
    "MAPResult",
    "MultiLabelEvaluator",
    "ThresholdMetrics",
    "average_precision",
    "gather_for_metrics",
    "long_tail_map",
    "long_tail_split",
    "mean_average_precision",
    "threshold_metrics",
]

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
    if scores.is_floating_point() and bool(torch.isnan(scores).any()):
        bad = torch.isnan(scores).any(0).nonzero().flatten().tolist()
        raise ValueError(f"scores contain NaN (classes {bad[:10]})")
    if targets.dtype != torch.bool:
        is_binary = (targets == 0) | (targets == 1)
        if not bool(is_binary.all()):
            bad = (~is_binary).any(0).nonzero().flatten().tolist()
            raise ValueError(
                f"targets must be multi-hot 0/1 values; classes {bad[:10]} hold other values"
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

    Each class matrix is sorted once; there is no Python loop over samples or classes.

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
    ap = (hits * precision_at_end).sum(0) / num_pos
    ap = torch.where(num_pos > 0, ap, torch.full_like(ap, math.nan))
    return ap[0] if squeeze else ap


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
        ValueError: If the counts are not a non-empty 1-D sequence of non-negative integers,
            or the thresholds are not integers with ``head_threshold >= tail_threshold >= 0``.
    """
    counts = torch.as_tensor(class_counts)
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(f"class_counts must be a non-empty 1-D sequence, got {counts.shape}")
    if counts.is_floating_point():
        if not bool((counts == counts.round()).all()):
            raise ValueError("class_counts must be whole numbers of training images")
        counts = counts.long()
    if bool((counts < 0).any()):
        bad = (counts < 0).nonzero().flatten().tolist()
        raise ValueError(f"class_counts must be non-negative; classes {bad[:10]} are negative")
    for name, value in (("head_threshold", head_threshold), ("tail_threshold", tail_threshold)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
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


def threshold_metrics(
    scores: Tensor,
    targets: Tensor,
    *,
    threshold: float | None = None,
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
        threshold: Score threshold, or ``None`` for none.
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
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ValueError(f"threshold must be a number, got {threshold!r}")
        if math.isnan(threshold):
            raise ValueError("threshold must not be NaN")
        predicted = predicted & (scores >= threshold)
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


def gather_for_metrics(
    tensor: Tensor, *, num_samples: int | None = None, group: dist.ProcessGroup | None = None
) -> Tensor:
    """Concatenate every rank's tensor along dim 0, allowing different sizes per rank.

    Call it on every rank (it is a collective) with that rank's predictions or targets; every
    rank gets the full result, rank 0's rows first. Without an initialised process group (or
    with a single process) the tensor is returned unchanged, so the same evaluation code runs
    with and without DDP. With the NCCL backend a CPU tensor is sent through the current CUDA
    device and returned on its original device.

    ``torch.utils.data.DistributedSampler`` (``drop_last=False``) pads the dataset by repeating
    its first samples so that every rank gets the same number. Pass ``num_samples=len(dataset)``
    to drop those duplicates: the padding is the last row of ranks ``num_samples % world_size``
    and above. This assumes each rank's rows are in its sampler order and none was dropped.
    The order of the gathered rows is rank by rank, not dataset order, which does not matter
    for the metrics in this module.

    Args:
        tensor: This rank's ``(n_rank, ...)`` tensor; trailing dims and dtype must agree
            across ranks.
        num_samples: Size of the evaluated dataset, to remove ``DistributedSampler`` padding;
            ``None`` keeps every gathered row.
        group: Process group, default the world.

    Returns:
        The ``(sum n_rank, ...)`` tensor (minus the sampler padding if ``num_samples`` is
        given).

    Raises:
        TypeError: If ``tensor`` is not a tensor.
        ValueError: If ``tensor`` is 0-d, or the gathered size does not fit a
            ``DistributedSampler`` padding of ``num_samples``.
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() == 0:
        raise ValueError("tensor must have a sample dimension (dim 0); got a 0-d tensor")
    if not (dist.is_available() and dist.is_initialized()):
        world_size = 1
    else:
        world_size = dist.get_world_size(group)
    if world_size == 1:
        if num_samples is not None and num_samples != tensor.shape[0]:
            raise ValueError(
                f"num_samples={num_samples} but the single process holds {tensor.shape[0]} rows"
            )
        return tensor
    device = tensor.device
    send = tensor.contiguous()
    if dist.get_backend(group) == dist.Backend.NCCL and not send.is_cuda:
        send = send.cuda(torch.cuda.current_device())
    size = torch.tensor([send.shape[0]], device=send.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size, group=group)
    counts = [int(s.item()) for s in sizes]
    padded = send.new_zeros((max(counts), *send.shape[1:]))
    padded[: send.shape[0]] = send
    chunks = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(chunks, padded, group=group)
    if num_samples is not None:
        per_rank = -(-num_samples // world_size)
        if counts != [per_rank] * world_size:
            raise ValueError(
                f"num_samples={num_samples} over {world_size} ranks means {per_rank} rows per "
                f"rank after DistributedSampler padding, but the ranks hold {counts}"
            )
        first_padded = num_samples % world_size or world_size
        counts = [c - (r >= first_padded) for r, c in enumerate(counts)]
    return torch.cat([chunk[:c] for chunk, c in zip(chunks, counts, strict=True)]).to(device)


class MultiLabelEvaluator:
    """Accumulate logits and targets over an evaluation loop, then compute every metric.

    Example:
        >>> evaluator = MultiLabelEvaluator(train_class_counts)
        >>> for images, targets in loader:
        ...     evaluator.update(model(images), targets)
        >>> results = evaluator.compute(num_samples=len(loader.dataset))
        >>> results["mAP"], results["mAP_tail"], results["CF1"]

    Under DDP ``compute`` gathers the shards of all ranks with :func:`gather_for_metrics`, so
    call it on every rank.

    Args:
        train_class_counts: ``(C,)`` positives per class in the training list for the
            head / medium / tail mAP, or ``None`` to report only the overall metrics.
        threshold: Threshold on the **sigmoid probabilities** for OP, OR, OF1, CP, CR, CF1.
        top_k: Also report the ``*_top{k}`` metrics (top-k labels per image, no threshold), or
            ``None`` to skip them.
        head_threshold: See :func:`long_tail_split`.
        tail_threshold: See :func:`long_tail_split`.
        class_names: Optional names for the warning about classes without positives.
    """

    def __init__(
        self,
        train_class_counts: Sequence[int] | Tensor | None = None,
        *,
        threshold: float = 0.5,
        top_k: int | None = 3,
        head_threshold: int = 100,
        tail_threshold: int = 20,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.split = (
            None
            if train_class_counts is None
            else long_tail_split(train_class_counts, head_threshold, tail_threshold)
        )
        self.threshold = threshold
        self.top_k = top_k
        self.class_names = list(class_names) if class_names is not None else None
        self._logits: list[Tensor] = []
        self._targets: list[Tensor] = []

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._logits.clear()
        self._targets.clear()

    def update(self, logits: Tensor, targets: Tensor) -> None:
        """Add a batch of ``(B, C)`` logits and multi-hot targets (stored detached, on CPU).

        Raises:
            ValueError: If the shapes differ or are not 2-D.
        """
        if logits.dim() != 2 or logits.shape != targets.shape:
            raise ValueError(
                f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must both be "
                "(B, C)"
            )
        self._logits.append(logits.detach().float().cpu())
        self._targets.append(targets.detach().cpu().to(torch.uint8))

    def compute(self, num_samples: int | None = None) -> dict[str, float]:
        """Gather across ranks (if distributed) and compute all metrics.

        Args:
            num_samples: Dataset size, to drop ``DistributedSampler`` padding (see
                :func:`gather_for_metrics`).

        Returns:
            ``mAP`` (and ``mAP_head``, ``mAP_medium``, ``mAP_tail`` with class counts),
            ``OP``, ``OR``, ``OF1``, ``CP``, ``CR``, ``CF1`` at the threshold and, with
            ``top_k``, the same six suffixed ``_top{k}``; fractions in [0, 1].

        Raises:
            ValueError: If nothing was added.
        """
        if not self._logits:
            raise ValueError("no batch was added: call update() before compute()")
        logits = gather_for_metrics(torch.cat(self._logits), num_samples=num_samples)
        targets = gather_for_metrics(torch.cat(self._targets), num_samples=num_samples)
        if self.split is not None:
            out = long_tail_map(logits, targets, self.split, class_names=self.class_names)
            results = out.as_dict()
        else:
            results = {"mAP": mean_average_precision(logits, targets, self.class_names).map}
        probs = logits.sigmoid()
        results.update(threshold_metrics(probs, targets, threshold=self.threshold).as_dict())
        if self.top_k is not None:
            topk = threshold_metrics(probs, targets, top_k=min(self.top_k, probs.shape[1]))
            results.update({f"{k}_top{self.top_k}": v for k, v in topk.as_dict().items()})
        return results
