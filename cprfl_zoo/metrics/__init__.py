"""Multi-label evaluation metrics for long-tailed benchmarks, in torch.

Everything here works on a whole evaluation set at once: ``scores`` is an ``(N, C)`` tensor of
raw logits or probabilities (any monotone transform of the logits gives the same average
precision) and ``targets`` the matching ``(N, C)`` multi-hot tensor of 0/1 values. Under
DistributedDataParallel each rank sees only its shard, so gather the shards first with
:func:`gather_for_metrics` (or let :class:`MultiLabelEvaluator` do it); the metric functions
themselves never communicate.

Every name is importable from ``cprfl_zoo.metrics``; the package holds one module per part:

* :mod:`cprfl_zoo.metrics.ranking`: :func:`average_precision` /
  :func:`mean_average_precision`: per-class AP and mAP; classes without a positive in the
  evaluation set are excluded from the mean and reported.
* :mod:`cprfl_zoo.metrics.long_tail`: :func:`long_tail_split` / :func:`long_tail_map`: the
  head / medium / tail split of Wu et al. (2020) used by every LTMLC paper, and mAP on each part.
* :mod:`cprfl_zoo.metrics.thresholded`: :func:`threshold_metrics`: OP, OR, OF1, CP, CR, CF1 at a
  score threshold and/or at top-k.
* :mod:`cprfl_zoo.metrics.distributed`: :func:`gather_for_metrics` for DDP, and
  :class:`MultiLabelEvaluator`, which accumulates an evaluation loop and computes all of the
  above.
"""

from .distributed import MultiLabelEvaluator, gather_for_metrics
from .long_tail import LongTailMAP, LongTailSplit, long_tail_map, long_tail_split
from .ranking import MAPResult, average_precision, mean_average_precision
from .ranking import _check_scores_targets as _check_scores_targets  # cprfl_zoo.thresholds uses it
from .thresholded import ThresholdMetrics, threshold_metrics

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
