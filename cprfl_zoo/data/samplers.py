"""Samplers that show tail classes more often: class-aware and repeat-factor sampling.

Both read the multi-hot labels of a training list (:func:`multi_hot_targets`), build one epoch's
index list from ``seed + epoch``, and shard it across processes the way
``torch.utils.data.DistributedSampler`` does (pad by repeating the list's start, or drop the
tail with ``drop_last``; rank ``r`` takes every ``num_replicas``-th index from position ``r``).
Every process builds the same list, so under ``torchrun`` the ranks see disjoint parts of one
epoch. Call ``set_epoch(epoch)`` before each epoch, as with ``DistributedSampler``; without a
process group ``num_replicas`` is 1 and the sampler is an ordinary one.

* :class:`ClassAwareSampler`: the class-aware sampler of the Distribution-Balanced loss paper
  (Wu et al., ECCV 2020; from Shen et al., ECCV 2016): pick a class, then images of that class.
* :class:`RepeatFactorSampler`: the repeat-factor sampling of LVIS (Gupta et al., CVPR 2019):
  repeat each image by a factor set by its rarest class.
* :func:`image_repeat_factors`: the LVIS repeat factor of every image.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from .label_stats import multi_hot_targets

__all__ = ["ClassAwareSampler", "RepeatFactorSampler", "image_repeat_factors"]


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _replicas_and_rank(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """``(num_replicas, rank)``: as given, else from the process group, else ``(1, 0)``."""
    initialized = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialized else 1
    if rank is None:
        rank = dist.get_rank() if initialized else 0
    _check_positive_int("num_replicas", num_replicas)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < num_replicas:
        raise ValueError(f"rank must be an int in [0, num_replicas={num_replicas}), got {rank!r}")
    return num_replicas, rank


def _shard(indices: list[int], num_replicas: int, rank: int, drop_last: bool) -> list[int]:
    """This rank's part of an epoch's index list, as ``DistributedSampler`` splits it."""
    n = len(indices)
    if drop_last and n % num_replicas:
        per_rank = math.ceil((n - num_replicas) / num_replicas)
    else:
        per_rank = math.ceil(n / num_replicas)
    total = per_rank * num_replicas
    if n and total > n:
        padding = total - n
        indices = indices + (indices * math.ceil(padding / n))[:padding]
    return indices[:total][rank:total:num_replicas]


class _EpochSampler(Sampler[int]):
    """A sampler whose epoch list is a function of ``seed + epoch``, sharded across ranks."""

    def __init__(
        self,
        num_replicas: int | None,
        rank: int | None,
        seed: int,
        drop_last: bool,
    ) -> None:
        self.num_replicas, self.rank = _replicas_and_rank(num_replicas, rank)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.seed = seed
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self._cache: tuple[int, list[int]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch; it seeds the next epoch's list (the same on every rank).

        Args:
            epoch: The epoch number.
        """
        self.epoch = int(epoch)

    def _epoch_indices(self, generator: torch.Generator) -> list[int]:
        raise NotImplementedError

    def _indices(self) -> list[int]:
        if self._cache is None or self._cache[0] != self.epoch:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            full = self._epoch_indices(generator)
            self._cache = (self.epoch, _shard(full, self.num_replicas, self.rank, self.drop_last))
        return self._cache[1]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


class ClassAwareSampler(_EpochSampler):
    """Class-aware sampling for multi-label lists (the sampler of the DB loss paper).

    Classes are visited in a random order that is reshuffled after every class has been visited
    once (so each class is picked equally often); each visit yields ``samples_per_class`` images
    of that class, taken from the class's own image list in a random order that is reshuffled
    when exhausted (so within a class every image comes up before any repeats). This is the
    official ``ClassAwareSampler`` of wutong16/DistributionBalancedLoss (``RandomCycleIter``
    over classes and over each class's images, ``num_samples_cls=3``), made deterministic per
    ``seed + epoch`` and shardable across processes. Classes without any image are skipped.

    One epoch yields ``num_samples`` indices in all (split across ranks). The official code
    uses ``max_c n_c * C / 4`` indices per epoch (its ``reduce=4``); the default here is the
    number of images, so an epoch keeps its usual length.

    Args:
        dataset: The training list: a :class:`~cprfl_zoo.data.MultiLabelImageList`, its
            ``(N, C)`` targets, or anything :func:`multi_hot_targets` reads.
        num_samples: Indices per epoch over all ranks; default the number of images.
        samples_per_class: Consecutive images drawn per class visit (3 in the official code).
        num_replicas: Processes sharing the epoch; default the process group's world size
            (1 without one).
        rank: This process's rank; default the process group's (0 without one).
        seed: Base seed; epoch ``e`` uses ``seed + e``. Must be the same on every rank.
        drop_last: Drop the end of the list so that it splits evenly, instead of padding it.

    Attributes:
        class_indices: For each class, the indices of the images containing it.

    Raises:
        ValueError: If no image has a positive label, or an argument is out of range.
        TypeError: If no target matrix can be read from ``dataset``.

    Example:
        >>> sampler = ClassAwareSampler(train_set, seed=args.seed)
        >>> loader = DataLoader(train_set, batch_size=32, sampler=sampler)
        >>> for epoch in range(epochs):
        ...     sampler.set_epoch(epoch)
    """

    def __init__(
        self,
        dataset: Any,
        num_samples: int | None = None,
        samples_per_class: int = 3,
        *,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(num_replicas, rank, seed, drop_last)
        positive = multi_hot_targets(dataset).float() >= 0.5
        self.class_indices: list[torch.Tensor] = [
            positive[:, c].nonzero().flatten() for c in range(positive.shape[1])
        ]
        self._classes = [c for c, idx in enumerate(self.class_indices) if idx.numel()]
        if not self._classes:
            raise ValueError(
                "class-aware sampling needs images with positive labels; no image in the "
                f"training list ({positive.shape[0]} images) has one"
            )
        self.num_samples = _check_positive_int(
            "num_samples", positive.shape[0] if num_samples is None else num_samples
        )
        self.samples_per_class = _check_positive_int("samples_per_class", samples_per_class)

    def _epoch_indices(self, generator: torch.Generator) -> list[int]:
        queues: dict[int, list[int]] = {}
        classes: list[int] = []
        out: list[int] = []
        while len(out) < self.num_samples:
            if not classes:  # a new round over the classes, in a fresh random order
                order = torch.randperm(len(self._classes), generator=generator).tolist()
                classes = [self._classes[i] for i in reversed(order)]
            c = classes.pop()
            for _ in range(self.samples_per_class):
                queue = queues.get(c)
                if not queue:  # a new round over the class's images
                    members = self.class_indices[c]
                    perm = torch.randperm(members.numel(), generator=generator)
                    queue = queues[c] = members[perm].flip(0).tolist()
                out.append(queue.pop())
        return out[: self.num_samples]


def image_repeat_factors(dataset: Any, threshold: float) -> torch.Tensor:
    r"""LVIS repeat factor of every image: :math:`r_i = \max_{c \in i} \max(1, \sqrt{t / f_c})`.

    :math:`f_c` is the fraction of images that contain class :math:`c`; an image without a
    positive label has factor 1.

    Args:
        dataset: The training list (see :func:`multi_hot_targets`).
        threshold: Frequency threshold :math:`t` in (0, 1]: classes in fewer than a fraction
            :math:`t` of the images are oversampled (LVIS uses 0.001).

    Returns:
        ``(N,)`` float64 factors, each at least 1.

    Raises:
        ValueError: If ``threshold`` is not in (0, 1].
    """
    number = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
    if not (number and 0 < threshold <= 1):
        raise ValueError(f"threshold must be a number in (0, 1], got {threshold!r}")
    positive = multi_hot_targets(dataset).float() >= 0.5
    freq = positive.double().mean(dim=0)
    per_class = torch.sqrt(threshold / freq.clamp(min=torch.finfo(torch.float64).tiny))
    per_class = per_class.clamp(min=1.0)
    per_image = torch.where(positive, per_class, torch.ones((), dtype=torch.float64))
    if positive.shape[1] == 0:
        return torch.ones(positive.shape[0], dtype=torch.float64)
    return per_image.amax(dim=1)


class RepeatFactorSampler(_EpochSampler):
    r"""Repeat-factor sampling (LVIS, Gupta et al., CVPR 2019) for multi-label lists.

    Each class gets :math:`r_c = \max(1, \sqrt{t / f_c})` from the fraction :math:`f_c` of images
    containing it, each image the largest factor of its classes (:func:`image_repeat_factors`).
    Every epoch, image :math:`i` appears :math:`\lfloor r_i \rfloor` times plus once more with
    probability :math:`r_i - \lfloor r_i \rfloor` (stochastic rounding, as in detectron2's
    ``RepeatFactorTrainingSampler``), and the list is shuffled. The epoch's length therefore
    varies a little from epoch to epoch (about :math:`\sum_i r_i`); ``len(sampler)`` is the
    current epoch's (this rank's) length.

    Args:
        dataset: The training list (see :func:`multi_hot_targets`).
        threshold: Frequency threshold :math:`t` (LVIS: 0.001). For small lists, a larger value
            is needed to oversample anything: a class in ``k`` of ``N`` images is repeated
            only when ``k / N < t``.
        shuffle: Shuffle the epoch's list (otherwise each image's repeats are adjacent, in
            index order).
        num_replicas: Processes sharing the epoch; default the process group's world size.
        rank: This process's rank; default the process group's.
        seed: Base seed; epoch ``e`` uses ``seed + e``. Must be the same on every rank.
        drop_last: Drop the end of the list so that it splits evenly, instead of padding it.

    Attributes:
        repeat_factors: ``(N,)`` float64 factor of every image.

    Raises:
        ValueError: If ``threshold`` is not in (0, 1] or an argument is out of range.
        TypeError: If no target matrix can be read from ``dataset``.
    """

    def __init__(
        self,
        dataset: Any,
        threshold: float = 0.001,
        *,
        shuffle: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(num_replicas, rank, seed, drop_last)
        self.threshold = float(threshold)
        self.repeat_factors = image_repeat_factors(dataset, threshold)
        self.shuffle = bool(shuffle)

    def _epoch_indices(self, generator: torch.Generator) -> list[int]:
        whole = self.repeat_factors.floor()
        extra = torch.rand(whole.shape, generator=generator, dtype=torch.float64)
        repeats = (whole + (extra < self.repeat_factors - whole)).long()
        indices = torch.repeat_interleave(torch.arange(repeats.numel()), repeats)
        if self.shuffle:
            indices = indices[torch.randperm(indices.numel(), generator=generator)]
        return indices.tolist()
