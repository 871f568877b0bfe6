"""Asymmetric loss for single-label (softmax) classification: :class:`ASLSingleLabel`.

The reference's ``ASLSingleLabel`` (Alibaba-MIIL/ASL), with label smoothing, float32 computation
for half-precision inputs and input checks; the value checks are opt-in (``validate=True``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ._common import _check_hyperparameters, _compute_dtype, _is_compiling

__all__ = ["ASLSingleLabel"]

_SINGLE_LABEL_REDUCTIONS = ("none", "mean", "sum")


class ASLSingleLabel(nn.Module):
    r"""Asymmetric loss for single-label (softmax) classification, with label smoothing.

    The reference's ``ASLSingleLabel``: with :math:`p = \mathrm{softmax}(x)`, each class's
    log-probability is weighted by :math:`(1-p_c)^{\gamma_+}` for the target class and
    :math:`p_c^{\gamma_-}` for the others (the weight is differentiated, as in the reference),
    then the cross entropy with smoothed targets
    :math:`\tilde y = (1-\varepsilon)\,\mathrm{onehot} + \varepsilon / C` is taken:

    .. math::

        \ell = -\sum_c \tilde y_c \, w_c \log p_c .

    Computed in float32 for half-precision inputs.

    Args:
        gamma_pos: Focusing parameter γ+ of the target class (≥ 0).
        gamma_neg: Focusing parameter γ− of the other classes (≥ 0).
        eps: Label-smoothing amount ε in [0, 1].
        reduction: ``"mean"`` over the batch (default), ``"sum"`` or ``"none"``.
        validate: Also check every call's values (finite logits, class indices in [0, C)).
            Off by default, because it costs one host sync per call. Shape and dtype checks
            always run.

    Raises:
        ValueError: If a hyperparameter is out of range or ``reduction`` is unknown.
    """

    def __init__(
        self,
        gamma_pos: float = 0,
        gamma_neg: float = 4,
        eps: float = 0.1,
        reduction: Literal["none", "mean", "sum"] = "mean",
        validate: bool = False,
    ) -> None:
        super().__init__()
        _check_hyperparameters(float(gamma_pos), float(gamma_neg), 0.0, 0.0)
        if not (math.isfinite(eps) and 0 <= eps <= 1):
            raise ValueError(f"eps (label smoothing) must be in [0, 1], got {eps}")
        _check_single_label_reduction(reduction)
        self.gamma_pos = float(gamma_pos)
        self.gamma_neg = float(gamma_neg)
        self.eps = float(eps)
        self.reduction = reduction
        self.validate = bool(validate)

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        reduction: Literal["none", "mean", "sum"] | None = None,
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            logits: Raw scores (N, C), any floating dtype.
            target: Class indices (N,), an integer tensor with values in [0, C).
            reduction: Overrides the module's reduction for this call when given.

        Returns:
            A scalar, or the per-sample loss (N,) for ``"none"``; float32 unless the logits are
            float64.

        Raises:
            TypeError: If an input has the wrong dtype.
            ValueError: If shapes disagree; with ``validate``, also if a class index is out of
                range or logits are not finite.
        """
        reduction = self.reduction if reduction is None else reduction
        _check_single_label_reduction(reduction)
        _check_single_label_inputs(logits, target, self.validate)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            x = logits.to(_compute_dtype(logits.dtype))
            num_classes = x.shape[-1]
            log_p = F.log_softmax(x, dim=-1)
            is_target = F.one_hot(target.long(), num_classes).bool()
            weight = torch.exp(log_p * self.gamma_neg)
            if self.gamma_pos != 0:
                # (1 - p)^γ+ via expm1 keeps precision near p = 1; the floor keeps its
                # gradient finite for γ+ < 1.
                one_minus_p = (-torch.expm1(log_p)).clamp(min=torch.finfo(x.dtype).tiny)
                weight = torch.where(is_target, one_minus_p.pow(self.gamma_pos), weight)
            else:
                weight = weight.masked_fill(is_target, 1.0)
            weighted = weight * log_p
            target_term = weighted.gather(-1, target.long().unsqueeze(-1)).squeeze(-1)
            loss = -((1 - self.eps) * target_term + (self.eps / num_classes) * weighted.sum(-1))
        if reduction == "mean":
            # The mean of an empty batch is 0 (not NaN), with a zero gradient of the right shape.
            return loss.mean() if loss.numel() else loss.sum()
        if reduction == "sum":
            return loss.sum()
        return loss

    def extra_repr(self) -> str:
        """Summarise the hyperparameters."""
        return (
            f"gamma_pos={self.gamma_pos:g}, gamma_neg={self.gamma_neg:g}, eps={self.eps:g}, "
            f"reduction={self.reduction!r}" + (", validate=True" if self.validate else "")
        )


def _check_single_label_reduction(reduction: str) -> None:
    if reduction not in _SINGLE_LABEL_REDUCTIONS:
        raise ValueError(f"reduction must be one of {_SINGLE_LABEL_REDUCTIONS}, got {reduction!r}")


def _check_single_label_inputs(logits: torch.Tensor, target: torch.Tensor, validate: bool) -> None:
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.ndim != 2:
        raise ValueError(
            f"logits must have shape (batch, num_classes), got shape {tuple(logits.shape)}"
        )
    if logits.shape[1] == 0:
        raise ValueError(
            f"logits have no classes (shape {tuple(logits.shape)}); single-label "
            "classification needs at least one"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"target must hold class indices (an integer tensor), got dtype {target.dtype}"
        )
    if target.shape != logits.shape[:1]:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match batch size {logits.shape[0]} "
            f"(expected shape ({logits.shape[0]},))"
        )
    if not validate or _is_compiling() or target.numel() == 0:
        return
    stats = torch.stack(
        [logits.detach().sum(dtype=torch.float64), target.min().double(), target.max().double()]
    ).tolist()
    if not math.isfinite(stats[0]):
        bad = int((~torch.isfinite(logits.detach())).sum())
        if bad:
            raise ValueError(f"logits contain {bad} non-finite value(s) (NaN or ±inf)")
    if stats[1] < 0 or stats[2] >= logits.shape[-1]:
        raise ValueError(
            f"target class indices must be in [0, {logits.shape[-1]}), got values in "
            f"[{int(stats[1])}, {int(stats[2])}]"
        )
