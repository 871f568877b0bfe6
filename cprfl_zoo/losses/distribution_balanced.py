r"""Distribution-Balanced loss (Wu et al., ECCV 2020) for long-tailed multi-label training.

The paper: *Distribution-Balanced Loss for Multi-Label Classification in Long-Tailed Datasets*.

:class:`DistributionBalancedLoss` computes the formula of the official ``ResampleLoss``
(wutong16/DistributionBalancedLoss, ``mllt/models/losses/resample_loss.py``) with
``reweight_func='rebalance'``, focal term and logit regularisation, as configured in the paper's
COCO-LT and VOC-LT experiments (:data:`DB_LOSS_PRESETS`).

For sample :math:`k`, class :math:`i` with logit :math:`z`, label :math:`y`, class counts
:math:`n_i` out of :math:`N` training images:

* **Re-balanced weight.** :math:`r_i^k = \frac{1/n_i}{\sum_j y_j^k / n_j}` (the class's
  sampling probability over the image's, under class-aware sampling), smoothed to
  :math:`\hat r = \sigma(\beta(r - \mu)) + \alpha`. It weights positive *and* negative labels.
  (An image without positives has :math:`r = \infty`, so :math:`\hat r = 1 + \alpha`, as in the
  official code.)
* **Negative-tolerant regularisation.** A class-specific bias
  :math:`b_i = -\kappa\log(N/n_i - 1)`, i.e. κ times the log-odds of the prior, is added to the
  logit; negatives are then scaled by λ: :math:`z' = z + b_i` for positives and
  :math:`z' = \lambda(z + b_i)` for negatives, with the negative's weight divided by λ.
  The official code divides the bias by λ as well
  (:math:`b_i = -\kappa\log(N/n_i - 1)/\lambda`); the authors confirmed in their issue #8
  that this ``/ neg_scale`` is a bug that makes κ effectively λ times smaller.
  ``fix_init_bias=False`` (default) keeps the official behaviour (the published numbers were
  obtained with it); ``fix_init_bias=True`` uses the paper's equation.
* **Focal term.** With :math:`\mathrm{bce} = \mathrm{BCE}(z', y)` and
  :math:`p_t = e^{-\mathrm{bce}}`, the label's loss is
  :math:`\mathrm{balance} \cdot (1 - p_t)^{\gamma}\cdot w \cdot \mathrm{bce}`, where :math:`w`
  is :math:`\hat r` (positives) or :math:`\hat r/\lambda` (negatives). The focal factor is
  differentiated, as in the official code.

The official head averages this over the batch and the classes (``"mean"``).

The official CPRFL repository ships its own ``dbl.py`` that is *not* this loss: its binary
cross-entropy is reduced to a weighted scalar mean *before* the focal term, so
:math:`p_t = e^{-\overline{\mathrm{bce}}}` is one number for the batch and the focal factor
scales the whole batch's loss instead of each label. The DB rows of the CPRFL paper come from
that variant; this module implements the original.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._common import _as_per_class, _class_list, _compute_dtype, _is_compiling, _reduce
from .asymmetric import (
    _REDUCTIONS,
    Reduction,
    _check_class_weight,
    _check_multilabel_shapes,
    _check_multilabel_values,
)

__all__ = ["DB_LOSS_PRESETS", "DistributionBalancedLoss"]

DB_LOSS_PRESETS: dict[str, dict[str, float]] = {
    "coco-lt": {"alpha": 0.1, "beta": 10.0, "mu": 0.2, "neg_scale": 2.0, "init_bias": 0.05},
    "voc-lt": {"alpha": 0.1, "beta": 10.0, "mu": 0.3, "neg_scale": 5.0, "init_bias": 0.05},
}
"""The official configurations (``configs/{coco,voc}/LT_resnet50_pfc_DB.py``): ``map_param``
``alpha``, ``beta``, ``gamma`` (here ``mu``) and ``logit_reg`` ``neg_scale``, ``init_bias``.
Both use focal γ = 2 and ``balance_param`` = 2 (the class defaults)."""


def _check_counts(class_counts: torch.Tensor | Sequence[float], num_samples: int) -> torch.Tensor:
    counts = _as_per_class(class_counts, "class_counts")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples must be an int >= 2 (training images), got {num_samples!r}")
    bad = (counts <= 0) | (counts >= num_samples)
    if bool(bad.any()):
        raise ValueError(
            f"class_counts must be strictly between 0 and num_samples={num_samples} (the "
            f"re-balancing weight needs 1/n and the bias log(N/n - 1)); classes "
            f"{_class_list(bad)} have {counts[bad].tolist()[:10]}. Train without classes that "
            "have no positive (or no negative) image in the list"
        )
    return counts


class DistributionBalancedLoss(nn.Module):
    r"""Distribution-Balanced loss for long-tailed multi-label classification (Wu et al., 2020).

    Re-balanced weights :math:`\sigma(\beta(r-\mu))+\alpha`, negative-tolerant regularisation
    (bias κ·logit(prior), negatives scaled by λ) and a focal term; see
    :mod:`cprfl_zoo.losses.distribution_balanced` for the equations. Values match the official
    ``ResampleLoss`` (``reweight_func='rebalance'``, ``focal=True``, ``logit_reg`` with
    ``init_bias`` and ``neg_scale``) averaged over batch × classes; the tests check this in
    float64 against the formula written independently, with and without ``fix_init_bias``.

    Beyond the official code: half-precision logits and autocast regions are computed in
    float32; a target of ``-1`` or ``mask=False`` marks a label unknown (it gets no loss, no
    gradient, and does not count in the image's :math:`\sum_j y_j/n_j`); ``class_weight``
    multiplies each class's loss; the caller's logits are not modified in place (the official
    ``logits += bias`` is).

    Args:
        class_counts: Number of training images containing each class (C,), read from the
            training list (``cprfl_zoo.data.class_counts(train_set)`` or
            ``MultiLabelImageList.class_counts``); each in (0, ``num_samples``).
        num_samples: Number of training images N.
        alpha: Lift α of the smoothed weight (``map_param['alpha']``).
        beta: Slope β of the smoothing sigmoid (``map_param['beta']``).
        mu: Shift μ of the smoothing sigmoid (``map_param['gamma']`` in the official code).
        neg_scale: Scale λ of the negative logits (``logit_reg['neg_scale']``).
        init_bias: κ of the class bias (``logit_reg['init_bias']``); 0 disables the bias.
        focal_gamma: Focusing parameter γ of the focal term; 0 disables it.
        balance_param: Constant factor of the loss (``focal['balance_param']``).
        fix_init_bias: Use the paper's bias :math:`-\kappa\log(N/n-1)` instead of the official
            code's, which divides it by λ (a bug the authors confirmed in their issue #8).
        reduction: ``"mean"`` (official: over batch × classes, i.e. over the known labels),
            ``"sum"``, ``"batchmean"`` (sum / batch size) or ``"none"`` (per label).
        class_weight: Optional non-negative per-class weights (C,).
        validate: Also check every call's values (finite logits, targets in {0, 1} or -1); one
            host sync per call, so off by default.

    Raises:
        ValueError: If a count is not in (0, ``num_samples``) (the message names the classes), or
            a hyperparameter is out of range.

    Example:
        >>> counts = class_counts(train_set)  # from cprfl_zoo.data
        >>> criterion = DistributionBalancedLoss.from_preset("coco-lt", counts, len(train_set))
        >>> loss = criterion(logits, targets)
    """

    inv_counts: torch.Tensor
    bias: torch.Tensor
    class_weight: torch.Tensor | None

    def __init__(
        self,
        class_counts: torch.Tensor | Sequence[float],
        num_samples: int,
        *,
        alpha: float = 0.1,
        beta: float = 10.0,
        mu: float = 0.2,
        neg_scale: float = 2.0,
        init_bias: float = 0.05,
        focal_gamma: float = 2.0,
        balance_param: float = 2.0,
        fix_init_bias: bool = False,
        reduction: Reduction = "mean",
        class_weight: torch.Tensor | Sequence[float] | None = None,
        validate: bool = False,
    ) -> None:
        super().__init__()
        counts = _check_counts(class_counts, num_samples)
        for name, value in (("alpha", alpha), ("beta", beta), ("mu", mu)):
            if not math.isfinite(float(value)):
                raise ValueError(f"{name} must be finite, got {value}")
        for name, value in (
            ("init_bias", init_bias),
            ("focal_gamma", focal_gamma),
            ("balance_param", balance_param),
        ):
            if not (math.isfinite(float(value)) and float(value) >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not (math.isfinite(float(neg_scale)) and float(neg_scale) > 0):
            raise ValueError(f"neg_scale must be a finite number > 0, got {neg_scale}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.num_samples = int(num_samples)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.mu = float(mu)
        self.neg_scale = float(neg_scale)
        self.init_bias = float(init_bias)
        self.focal_gamma = float(focal_gamma)
        self.balance_param = float(balance_param)
        self.fix_init_bias = bool(fix_init_bias)
        self.reduction = reduction
        self.validate = bool(validate)
        bias = -torch.log(num_samples / counts - 1) * self.init_bias
        if not self.fix_init_bias:
            bias = bias / self.neg_scale
        self.register_buffer("inv_counts", (1.0 / counts).float(), persistent=False)
        self.register_buffer("bias", bias.float(), persistent=False)
        weight = None
        if class_weight is not None:
            weight = torch.as_tensor(class_weight, dtype=torch.float32).detach().clone()
            _check_class_weight(weight)
        self.register_buffer("class_weight", weight, persistent=False)

    @classmethod
    def from_preset(
        cls,
        preset: str,
        class_counts: torch.Tensor | Sequence[float],
        num_samples: int,
        **kwargs: Any,
    ) -> DistributionBalancedLoss:
        """Build with the official hyperparameters of ``"coco-lt"`` or ``"voc-lt"``.

        Args:
            preset: A key of :data:`DB_LOSS_PRESETS`.
            class_counts: Training images containing each class (C,).
            num_samples: Training images N.
            **kwargs: Further arguments, overriding the preset's.

        Returns:
            The loss.

        Raises:
            ValueError: For an unknown preset, or as the constructor.
        """
        if preset not in DB_LOSS_PRESETS:
            raise ValueError(
                f"unknown DB loss preset {preset!r}; choose one of {sorted(DB_LOSS_PRESETS)}"
            )
        return cls(class_counts, num_samples, **{**DB_LOSS_PRESETS[preset], **kwargs})

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return int(self.inv_counts.shape[0])

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            logits: Raw scores (N, ..., C), any floating dtype.
            targets: Labels of the same shape: 0/1 (float, integer or bool); -1 marks an
                unknown label.
            mask: Optional bool tensor broadcastable to ``logits``; False marks unknown labels.

        Returns:
            The reduced loss, or the per-label loss for ``reduction="none"``; float32 unless the
            logits are float64.

        Raises:
            TypeError: If an input has the wrong type or dtype.
            ValueError: If shapes disagree (the class count included); with ``validate``,
                also if targets are out of range or logits are not finite.
        """
        _check_multilabel_shapes(logits, targets, mask, self.class_weight)
        if logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"logits have {logits.shape[-1]} classes (last dimension) but the loss was "
                f"built from {self.num_classes} class counts"
            )
        if self.validate and not _is_compiling():
            _check_multilabel_values(logits, targets)
        dtype = _compute_dtype(logits.dtype)
        x = logits.to(dtype)
        y = targets.to(dtype)
        known = targets >= 0
        if mask is not None:
            known = known & mask
        y = torch.where(known, y, torch.zeros((), dtype=dtype, device=y.device))
        inv = self.inv_counts.to(device=x.device, dtype=dtype)
        bias = self.bias.to(device=x.device, dtype=dtype)

        # Re-balanced weight r = (1/n_i) / sum_j y_j / n_j, smoothed; 1 + alpha without positives.
        rate = (y * inv).sum(dim=-1, keepdim=True)
        has_pos = rate > 0
        r = inv / torch.where(has_pos, rate, torch.ones((), dtype=dtype, device=x.device))
        smooth = torch.where(has_pos, torch.sigmoid(self.beta * (r - self.mu)), 1.0)
        weight = (smooth + self.alpha).detach()

        # Negative-tolerant regularisation: bias, then negatives scaled by lambda (weight / lambda).
        lam = self.neg_scale
        z = x + bias
        z = z * (lam + (1.0 - lam) * y)
        weight = weight * (1.0 / lam + (1.0 - 1.0 / lam) * y)

        bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
        per_label = bce * weight
        if self.focal_gamma != 0:
            per_label = per_label * (-torch.expm1(-bce)) ** self.focal_gamma
        per_label = per_label * self.balance_param
        if self.class_weight is not None:
            per_label = per_label * self.class_weight.to(device=x.device, dtype=dtype)
        per_label = torch.where(known, per_label, torch.zeros((), dtype=dtype, device=x.device))
        return _reduce(per_label, self.reduction, known)

    def extra_repr(self) -> str:
        """Summarise the hyperparameters."""
        return (
            f"num_classes={self.num_classes}, num_samples={self.num_samples}, "
            f"alpha={self.alpha:g}, beta={self.beta:g}, mu={self.mu:g}, "
            f"neg_scale={self.neg_scale:g}, init_bias={self.init_bias:g}, "
            f"focal_gamma={self.focal_gamma:g}, balance_param={self.balance_param:g}, "
            f"fix_init_bias={self.fix_init_bias}, reduction={self.reduction!r}"
        )
