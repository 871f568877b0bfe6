"""Evaluation under DistributedDataParallel, and the evaluator that runs every metric.

* :func:`gather_for_metrics`: concatenate every rank's shard (sizes may differ), dropping the
  padding of ``DistributedSampler``; the identity without a process group.
* :class:`MultiLabelEvaluator`: accumulate logits and targets over an evaluation loop, gather
  them, and compute mAP (overall and head / medium / tail) and the threshold metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from .long_tail import long_tail_map, long_tail_split
from .ranking import mean_average_precision
from .thresholded import threshold_metrics

__all__ = ["MultiLabelEvaluator", "gather_for_metrics"]


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
    for the metrics of :mod:`cprfl_zoo.metrics`.

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
        thresholded = threshold_metrics(logits, targets, threshold=self.threshold, from_logits=True)
        results.update(thresholded.as_dict())
        if self.top_k is not None:
            top_k = min(self.top_k, logits.shape[1])
            topk = threshold_metrics(logits, targets, top_k=top_k, from_logits=True)
            results.update({f"{k}_top{self.top_k}": v for k, v in topk.as_dict().items()})
        return results
