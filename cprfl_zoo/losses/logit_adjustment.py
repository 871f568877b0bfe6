r"""Logit adjustment (Menon et al., *Long-tail learning via logit adjustment*, ICLR 2021).

Menon et al. correct a classifier trained on long-tailed data by the log of each class's prior
π: post hoc, predict with :math:`f_y(x) - \tau\log\pi_y`; or, at training time, train on
:math:`f_y(x) + \tau\log\pi_y` and predict with :math:`f_y(x)`. Both target the balanced
error, for which the Bayes-optimal score is :math:`\log P(y\mid x) - \log P(y)`.

For multi-label (sigmoid) outputs every class is its own binary problem, with prior π (the
class's positive rate in the training list) for "present" and 1 - π for "absent". Writing the
sigmoid logit as the difference of a two-class softmax's logits ``(f, 0)`` and adjusting each
by τ·log of its prior gives :math:`f - \tau\log\frac{\pi}{1-\pi}`: the offset of a
multi-label class is τ times the *log-odds* of its prior, not τ·log π. (τ·log π alone would shift
every class down by a further τ·log(1 - π), which is not the balanced-error correction of the
binary problem; for rare classes the two are close.) ``multi_label=False`` gives the paper's
softmax offset τ·log π for single-label logits.

* :func:`logit_adjustment_offset`: the per-class offset τ·logit(π) (or τ·log π).
* :func:`adjust_logits`: the post-hoc correction ``logits - offset``.
* :class:`LogitAdjustment`: a module holding the offset as a buffer (saved in ``state_dict``)
  that subtracts it, for prediction, deployment and export.
* :class:`LogitAdjustedLoss`: the training-time form, any base loss (default binary
  cross-entropy) applied to ``logits + offset``.

Post-hoc adjustment is a per-class monotone shift of the logits, so it changes thresholded
metrics (F1, OF1/CF1 at fixed thresholds) but not a class's AP or the mAP.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ._common import _as_per_class, _class_list, _compute_dtype
from .asymmetric import AsymmetricLoss

__all__ = ["LogitAdjustedLoss", "LogitAdjustment", "adjust_logits", "logit_adjustment_offset"]


def _check_tau(tau: float) -> float:
    tau = float(tau)
    if not tau == tau or tau in (float("inf"), float("-inf")):
        raise ValueError(f"tau must be a finite number, got {tau}")
    return tau


def logit_adjustment_offset(
    priors: torch.Tensor | Sequence[float], tau: float = 1.0, *, multi_label: bool = True
) -> torch.Tensor:
    r"""Per-class logit-adjustment offset: :math:`\tau\log\frac{\pi}{1-\pi}` or :math:`\tau\log\pi`.

    Args:
        priors: Class priors π (C,). Multi-label: each class's positive rate in the training
            list (``cprfl_zoo.data.class_priors``), each strictly between 0 and 1. Single-label:
            the class frequencies (any positive scale; softmax ignores a common shift).
        tau: Scale τ of the adjustment (Menon et al. use 1; 0 disables it).
        multi_label: Use the log-odds of the prior (sigmoid outputs; see the module docstring)
            instead of its log (softmax outputs).

    Returns:
        The offset (C,) in float64 on the CPU.

    Raises:
        ValueError: If ``priors`` is not a finite 1-D sequence, or a prior is outside (0, 1)
            (multi-label) or not positive (single-label); the message names the classes.
        TypeError: If ``priors`` is not real-valued.
    """
    tau = _check_tau(tau)
    p = _as_per_class(priors, "priors")
    if multi_label:
        bad = (p <= 0) | (p >= 1)
        if bool(bad.any()):
            raise ValueError(
                f"priors must be strictly between 0 and 1 (the log-odds of 0 or 1 is infinite); "
                f"classes {_class_list(bad)} have {p[bad].tolist()[:10]}. A class without "
                "positives (or without negatives) in the training list has no finite prior: drop "
                "it, or smooth the counts, e.g. priors = (counts + 1) / (num_samples + 2)"
            )
        return tau * torch.log(p / (1 - p))
    bad = p <= 0
    if bool(bad.any()):
        raise ValueError(
            f"priors must be positive; classes {_class_list(bad)} have {p[bad].tolist()[:10]}. "
            "Drop classes without training examples, or smooth the counts (counts + 1)"
        )
    return tau * torch.log(p)


def _priors_from_counts(
    class_counts: torch.Tensor | Sequence[float], num_samples: int, multi_label: bool
) -> torch.Tensor:
    counts = _as_per_class(class_counts, "class_counts")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if bool((counts < 0).any()) or bool((counts > num_samples).any()):
        raise ValueError(
            f"class_counts must be in [0, num_samples={num_samples}]; classes "
            f"{_class_list((counts < 0) | (counts > num_samples))} are not"
        )
    if multi_label:
        return counts / num_samples
    return counts / counts.sum().clamp(min=1.0)


def _shifted(logits: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """``logits + offset`` in float32 (float64 for float64 logits), after checking the logits."""
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        what = logits.dtype if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise TypeError(f"logits must be a floating-point tensor, got {what}")
    if logits.ndim < 1 or logits.shape[-1] != offset.shape[0]:
        raise ValueError(
            f"logits have shape {tuple(logits.shape)} but the adjustment has {offset.shape[0]} "
            "classes (the last dimension of the logits)"
        )
    dtype = _compute_dtype(logits.dtype)
    return logits.to(dtype) + offset.to(device=logits.device, dtype=dtype)


def adjust_logits(
    logits: torch.Tensor,
    priors: torch.Tensor | Sequence[float],
    tau: float = 1.0,
    *,
    multi_label: bool = True,
) -> torch.Tensor:
    r"""Post-hoc logit adjustment: ``logits - tau * logit(priors)`` (Menon et al., 2021).

    Args:
        logits: Raw scores (..., C), any floating dtype (the sum is formed in float32 and
            returned in the logits' dtype).
        priors: Class priors π (C,); see :func:`logit_adjustment_offset`.
        tau: Scale τ of the adjustment.
        multi_label: Subtract τ·log(π / (1 - π)) (sigmoid outputs) instead of τ·log π.

    Returns:
        The adjusted logits, same shape and dtype as ``logits``.

    Raises:
        TypeError: If ``logits`` is not a floating-point tensor.
        ValueError: If the class count differs from the logits' last dimension, or a prior is
            out of range.

    Example:
        >>> adjusted = adjust_logits(model(images), class_priors(train_set), tau=1.0)
    """
    offset = logit_adjustment_offset(priors, tau, multi_label=multi_label)
    return _shifted(logits, -offset).to(logits.dtype)


class LogitAdjustment(nn.Module):
    r"""Subtract a per-class offset from logits: the post-hoc logit adjustment as a module.

    ``forward(logits) = logits - offset`` with ``offset = tau * log(pi / (1 - pi))`` (multi-label)
    or ``tau * log(pi)`` (single-label); see :mod:`cprfl_zoo.losses.logit_adjustment`. The
    offset is a persistent float32 buffer, so it is saved and loaded with ``state_dict`` and
    exported with the model; ``tau`` and ``multi_label`` are kept as attributes for the record.

    Args:
        priors: Class priors π (C,): each class's positive rate in the training list, e.g.
            ``cprfl_zoo.data.class_priors(train_set)``.
        tau: Scale τ (1 in Menon et al.; 0 gives the identity).
        multi_label: Use the log-odds of the prior (sigmoid outputs) instead of its log.

    Raises:
        ValueError: If a prior is out of range (the message names the classes) or ``tau`` is not
            finite.

    Example:
        >>> adjust = LogitAdjustment(class_priors(train_set), tau=1.0)
        >>> probs = torch.sigmoid(adjust(model(images)))
    """

    offset: torch.Tensor

    def __init__(
        self, priors: torch.Tensor | Sequence[float], tau: float = 1.0, multi_label: bool = True
    ) -> None:
        super().__init__()
        self.tau = _check_tau(tau)
        self.multi_label = bool(multi_label)
        offset = logit_adjustment_offset(priors, self.tau, multi_label=self.multi_label)
        self.register_buffer("offset", offset.float())

    @classmethod
    def from_counts(
        cls,
        class_counts: torch.Tensor | Sequence[float],
        num_samples: int,
        tau: float = 1.0,
        multi_label: bool = True,
    ) -> LogitAdjustment:
        """Build from per-class positive counts of a training list of ``num_samples`` images.

        Args:
            class_counts: Images containing each class (C,), e.g. ``dataset.class_counts``.
            num_samples: Images in the list. Single-label priors are the counts over their sum.
            tau: Scale τ.
            multi_label: See the class.

        Returns:
            The module.

        Raises:
            ValueError: If a count is negative or above ``num_samples``, or gives a prior of 0
                or 1 (multi-label).
        """
        return cls(_priors_from_counts(class_counts, num_samples, multi_label), tau, multi_label)

    @classmethod
    def from_offset(cls, offset: torch.Tensor | Sequence[float]) -> LogitAdjustment:
        """Build from a saved offset (C,), e.g. before ``load_state_dict`` or from metadata.

        ``tau`` is recorded as 1 and ``multi_label`` as True; only ``offset`` is used.

        Raises:
            ValueError: If ``offset`` is not a finite 1-D sequence.
        """
        values = _as_per_class(offset, "offset")
        module = cls(torch.full_like(values, 0.5))
        module.offset = values.float()
        return module

    @property
    def num_classes(self) -> int:
        """Number of classes the offset covers."""
        return int(self.offset.shape[0])

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """Return ``logits - offset`` in the logits' dtype (computed in at least float32).

        Raises:
            TypeError: If ``logits`` is not a floating-point tensor.
            ValueError: If the logits' last dimension is not ``num_classes``.
        """
        return _shifted(logits, -self.offset).to(logits.dtype)

    def extra_repr(self) -> str:
        """Summarise the adjustment."""
        return f"num_classes={self.num_classes}, tau={self.tau:g}, multi_label={self.multi_label}"


class LogitAdjustedLoss(nn.Module):
    r"""Logit-adjusted training loss: a base loss on ``logits + tau * logit(priors)``.

    Menon et al.'s loss-time correction: the offset is added to the logits *during training
    only*, so the network learns balanced scores and is used unadjusted at prediction. With the
    default base loss (binary cross-entropy, mean over the known labels) each label contributes

    .. math::

        \ell = -\big[y\log\sigma(x + \delta) + (1-y)\log(1-\sigma(x+\delta))\big],\qquad
        \delta = \tau\log\frac{\pi}{1-\pi}.

    Any loss with the signature ``loss(logits, targets, ...)`` can be wrapped, e.g.
    :class:`~cprfl_zoo.losses.AsymmetricLoss` or
    :class:`~cprfl_zoo.losses.DistributionBalancedLoss`; extra arguments of ``forward`` (such as
    ``mask``) are passed to it. Half-precision logits are cast to float32 before the offset is
    added. The offset is a non-persistent buffer: it follows ``.to(device)`` and stays out of
    ``state_dict`` (a training-time setting, like ``AsymmetricLoss.class_weight``).

    Args:
        priors: Class priors π (C,), each class's positive rate in the training list
            (``cprfl_zoo.data.class_priors``).
        tau: Scale τ (Menon et al. use 1).
        base_loss: The loss applied to the shifted logits; default
            ``AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0, reduction="mean")``, i.e. binary
            cross-entropy averaged over the known labels (``-1`` targets are unknown).
        multi_label: Offset τ·log(π / (1 - π)) (sigmoid outputs) instead of τ·log π (softmax,
            e.g. with ``base_loss=torch.nn.CrossEntropyLoss()``).

    Raises:
        ValueError: If a prior is out of range or ``tau`` is not finite.
        TypeError: If ``base_loss`` is not callable.

    Example:
        >>> criterion = LogitAdjustedLoss(class_priors(train_set), tau=1.0)
        >>> loss = criterion(model(images), targets)
    """

    offset: torch.Tensor

    def __init__(
        self,
        priors: torch.Tensor | Sequence[float],
        tau: float = 1.0,
        base_loss: Callable[..., torch.Tensor] | None = None,
        multi_label: bool = True,
    ) -> None:
        super().__init__()
        if base_loss is None:
            base_loss = AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0, reduction="mean")
        elif not callable(base_loss):
            raise TypeError(f"base_loss must be callable, got {type(base_loss).__name__}")
        self.tau = _check_tau(tau)
        self.multi_label = bool(multi_label)
        self.base_loss = base_loss
        offset = logit_adjustment_offset(priors, self.tau, multi_label=self.multi_label)
        self.register_buffer("offset", offset.float(), persistent=False)

    @classmethod
    def from_counts(
        cls,
        class_counts: torch.Tensor | Sequence[float],
        num_samples: int,
        tau: float = 1.0,
        base_loss: Callable[..., torch.Tensor] | None = None,
        multi_label: bool = True,
    ) -> LogitAdjustedLoss:
        """Build from per-class positive counts of a training list of ``num_samples`` images.

        Raises:
            ValueError: If a count is negative, above ``num_samples`` or gives a prior of 0 or 1.
        """
        priors = _priors_from_counts(class_counts, num_samples, multi_label)
        return cls(priors, tau, base_loss, multi_label)

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Return ``base_loss(logits + offset, targets, *args, **kwargs)``.

        The shifted logits are float32 for half-precision input (float64 for float64).

        Raises:
            TypeError: If ``logits`` is not a floating-point tensor.
            ValueError: If the logits' last dimension is not the number of classes; whatever
                the base loss raises.
        """
        return self.base_loss(_shifted(logits, self.offset), targets, *args, **kwargs)

    def extra_repr(self) -> str:
        """Summarise the adjustment."""
        return (
            f"num_classes={self.offset.shape[0]}, tau={self.tau:g}, multi_label={self.multi_label}"
        )
