"""Asymmetric loss (ASL, Ridnik et al., ICCV 2021) for multi-label training.

:class:`AsymmetricLoss` is a drop-in replacement for the ``AsymmetricLoss`` of the reference
repository (Alibaba-MIIL/ASL, also copied into the CPRFL code) with the same signature, defaults
and values, plus float32 computation under mixed precision, partial labels, per-class weights,
input checks and a hand-written backward that keeps only the inputs for the backward pass.
:func:`asymmetric_loss` is its functional form.

Shape, dtype and device checks run on every call and cost nothing on the device. Value checks
(finite logits, targets in range) read the tensors, so they wait for the device once per call;
they are opt-in (``validate=True``) for debugging a training loop or checking a data set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ._common import _check_hyperparameters, _compute_dtype, _is_compiling

__all__ = ["UNKNOWN_TARGET", "AsymmetricLoss", "asymmetric_loss"]

Reduction = Literal["none", "mean", "sum", "batchmean"]
_REDUCTIONS = ("none", "mean", "sum", "batchmean")

UNKNOWN_TARGET = -1
"""Target value marking a label as unknown: it contributes neither loss nor gradient."""


def _pow(t: torch.Tensor, exponent: float, inplace: bool = False) -> torch.Tensor:
    """``t ** exponent``, by repeated multiplication for small integer exponents.

    ``Tensor.pow`` with a general scalar exponent is several times slower on CPU than a few
    multiplications. Returns ``t`` itself for exponent 1 (even when not ``inplace``).
    """
    if exponent == 1:
        return t
    if exponent == 0:
        return t.fill_(1.0) if inplace else torch.ones_like(t)
    if exponent.is_integer() and exponent <= 16:
        n = int(exponent)
        if n & (n - 1) == 0:  # power of two: square in place
            out = t.square_() if inplace else t.square()
            n >>= 1
            while n > 1:
                out.square_()
                n >>= 1
            return out
        base = t.clone() if inplace else t
        out = t if inplace else t.clone()
        for _ in range(n - 1):
            out.mul_(base)
        return out
    return t.pow_(exponent) if inplace else t.pow(exponent)


def _loss_terms(
    x: torch.Tensor, y: torch.Tensor, gp: float, gn: float, clip: float
) -> torch.Tensor:
    """Per-label log-likelihood ``y·(1-p)^γ+·log p + (1-y)·p_m^γ−·log(1-p_m)`` (a new tensor)."""
    p = torch.sigmoid(x)
    pos = F.logsigmoid(x)
    if gp != 0:
        pos.mul_(_pow(torch.rsub(p, 1.0), gp, inplace=True))
    if clip == 0:
        neg = F.logsigmoid(-x)
        if gn != 0:
            neg.mul_(_pow(p, gn, inplace=True))
    else:
        # 1 - p_m = min(1 - p + clip, 1) >= clip, so its log is finite.
        neg = torch.rsub(p, 1.0 + clip)
        if gn == 0:
            neg.clamp_(max=1.0).log_()
        else:  # where p <= clip the weight p_m^γ− is 0, which makes the clamp unnecessary
            neg.log_().mul_(_pow(p.sub_(clip).clamp_(min=0.0), gn, inplace=True))
    return neg.lerp_(pos, y)


def _loss_terms_grad(
    x: torch.Tensor, y: torch.Tensor, gp: float, gn: float, clip: float, detach_weight: bool
) -> torch.Tensor:
    """Derivative of :func:`_loss_terms` with respect to the logits (a new tensor)."""
    p = torch.sigmoid(x)
    q = torch.rsub(p, 1.0)
    # Positives: d/dx (1-p)^γ·log p = q^γ·q (weight constant) or q^γ·(q - γ·p·log p).
    if gp == 0:
        d_pos = q
    elif detach_weight:
        d_pos = _pow(q, gp + 1)
    else:
        d_pos = torch.addcmul(q, p, F.logsigmoid(x), value=-gp).mul_(_pow(q, gp))
    # Negatives, no margin: d/dx p^γ·log(1-p) = -p^(γ+1) (weight constant) or
    # p^γ·(γ·q·log q - p).
    if clip == 0:
        if gn == 0:
            d_neg = p.neg_()
        elif detach_weight:
            d_neg = _pow(p, gn + 1, inplace=True).neg_()
        else:
            inner = F.logsigmoid(-x).mul_(q).mul_(gn).sub_(p)
            d_neg = _pow(p, gn, inplace=True).mul_(inner)
        return d_neg.lerp_(d_pos, y)
    # Negatives with margin m, where p > m (0 elsewhere): d p_m/dx = p·q and
    # d log(1-p_m)/dx = -p·q/(q+m); the full derivative adds γ·p_m^(γ-1)·p·q·log(1-p_m).
    pq = p * q
    neg_one_minus_pm = torch.rsub(q, -clip)  # -(q + m) = -(1 - p_m)
    p_m = p.sub_(clip).clamp_(min=0.0)
    if gn == 0:
        d_neg = pq.div_(neg_one_minus_pm).mul_(p_m > 0)
    elif detach_weight:
        d_neg = pq.mul_(_pow(p_m, gn)).div_(neg_one_minus_pm)
    else:
        # log(1-p_m)/p_m tends to -1 as p_m -> 0; evaluate it on a safe argument there.
        safe = torch.where(p_m > 0, p_m, 0.5)
        ratio = torch.log1p(-safe).div_(safe)
        inner = torch.add(neg_one_minus_pm.reciprocal_(), ratio, alpha=gn)
        d_neg = pq.mul_(_pow(p_m, gn)).mul_(inner)
    return d_neg.lerp_(d_pos, y)


class _AsymmetricLossFn(torch.autograd.Function):
    """ASL with an analytic backward that saves only its inputs."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        y: torch.Tensor,
        coef: torch.Tensor | None,
        scale: torch.Tensor | float | None,
        gamma_pos: float,
        gamma_neg: float,
        clip: float,
        detach_weight: bool,
        marked: bool,
    ) -> torch.Tensor:
        # x and y are float32/float64 already and every op here is elementwise or a sum, which
        # autocast leaves in the input precision, so no autocast handling is needed.
        # With ``marked``, y may hold UNKNOWN_TARGET; the known mask is recomputed in backward
        # instead of being saved.
        terms = _loss_terms(x, y, gamma_pos, gamma_neg, clip)
        if marked:  # the terms at y = -1 are finite but meaningless: zero them
            terms.masked_fill_(y < 0, 0.0)
        if coef is not None:
            terms.mul_(coef)
        # The output must come from an out-of-place op: under torch.compile, PyTorch 2.11
        # routes the gradient of a returned tensor that was modified in place to the wrong
        # output (pytorch/pytorch#180642), which silently zeroes the gradient.
        out = torch.neg(terms) if scale is None else terms.sum() * -scale
        if isinstance(scale, torch.Tensor):
            ctx.save_for_backward(x, y, coef, scale)
            ctx.scale = None
        else:
            ctx.save_for_backward(x, y, coef)
            ctx.scale = scale
        ctx.hyper = (gamma_pos, gamma_neg, clip, detach_weight)
        ctx.marked = marked
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, y, coef, *rest = ctx.saved_tensors
        scale = rest[0] if rest else ctx.scale
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = _loss_terms_grad(x, y, *ctx.hyper)
            if ctx.marked:
                grad_x.masked_fill_(y < 0, 0.0)
            if scale is None:
                grad_x.mul_(grad_out).neg_()
            else:
                grad_x.mul_(grad_out * -scale)
            if coef is not None:
                grad_x.mul_(coef)
        return grad_x, None, None, None, None, None, None, None, None


def _check_class_weight(weight: torch.Tensor) -> None:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"class_weight must be a tensor, got {type(weight).__name__}")
    if weight.ndim != 1 or weight.numel() == 0:
        raise ValueError(
            f"class_weight must be a 1-D sequence of per-class weights, got shape "
            f"{tuple(weight.shape)}"
        )
    if not bool(torch.isfinite(weight).all()) or bool((weight < 0).any()):
        raise ValueError("class_weight must be finite and non-negative")


def _check_multilabel_shapes(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None,
    class_weight: torch.Tensor | None,
) -> None:
    if not isinstance(logits, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise TypeError(
            f"logits and targets must be tensors, got {type(logits).__name__} and "
            f"{type(targets).__name__}"
        )
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.ndim < 2:
        raise ValueError(
            f"logits must have shape (batch, ..., num_classes) with at least 2 dimensions, "
            f"got shape {tuple(logits.shape)}"
        )
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} does not match logits shape "
            f"{tuple(logits.shape)}"
        )
    if targets.is_complex():
        raise TypeError(f"targets must be float, integer or bool, got dtype {targets.dtype}")
    if targets.device != logits.device:
        raise ValueError(f"targets are on {targets.device} but logits are on {logits.device}")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            what = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise TypeError(f"mask must be a bool tensor (True = label known), got {what}")
        try:
            broadcast = torch.broadcast_shapes(mask.shape, logits.shape)
        except RuntimeError:
            broadcast = None
        if broadcast != logits.shape:
            raise ValueError(
                f"mask shape {tuple(mask.shape)} does not broadcast to logits shape "
                f"{tuple(logits.shape)}"
            )
    if class_weight is not None and class_weight.shape != (logits.shape[-1],):
        raise ValueError(
            f"class_weight has shape {tuple(class_weight.shape)} but logits have "
            f"{logits.shape[-1]} classes (last dimension)"
        )


def _check_multilabel_values(logits: torch.Tensor, targets: torch.Tensor) -> bool:
    """Check logits are finite and targets in [0, 1] or UNKNOWN_TARGET, with one host sync.

    Returns:
        Whether any target equals ``UNKNOWN_TARGET``.
    """
    if targets.numel() == 0:  # an empty batch (or no classes): nothing to check
        return False
    # A sum of the logits is non-finite if any logit is; it can overflow, hence the recheck below.
    stats = [logits.detach().sum(dtype=torch.float32 if logits.itemsize < 4 else None)]
    if targets.dtype != torch.bool:
        stats += torch.aminmax(targets.detach())
    dtype = stats[0].dtype
    values = torch.stack([s if s.dtype == dtype else s.to(dtype) for s in stats]).tolist()
    if not math.isfinite(values[0]):
        bad = int((~torch.isfinite(logits.detach())).sum())
        if bad:
            raise ValueError(f"logits contain {bad} non-finite value(s) (NaN or ±inf)")
    if targets.dtype == torch.bool:
        return False
    lo, hi = values[1], values[2]
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError("targets contain NaN")
    if lo < UNKNOWN_TARGET or hi > 1:
        raise ValueError(
            f"targets must be in [0, 1] (or {UNKNOWN_TARGET} for unknown labels), "
            f"got values in [{lo:g}, {hi:g}]"
        )
    if lo >= 0:
        return False
    t = targets.detach()
    bad_values = t[(t < 0) & (t != UNKNOWN_TARGET)]
    if bad_values.numel():
        raise ValueError(
            f"targets must be in [0, 1] (or {UNKNOWN_TARGET} for unknown labels), got "
            f"{bad_values.numel()} value(s) in ({UNKNOWN_TARGET}, 0), e.g. {bad_values[0].item():g}"
        )
    return True


def asymmetric_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    gamma_neg: float = 4.0,
    gamma_pos: float = 1.0,
    clip: float | None = 0.05,
    detach_focal_weight: bool = True,
    reduction: Reduction = "sum",
    mask: torch.Tensor | None = None,
    class_weight: torch.Tensor | None = None,
    validate: bool = False,
) -> torch.Tensor:
    """Asymmetric loss of multi-label logits; see :class:`AsymmetricLoss` for the definition.

    Args:
        logits: Raw scores (N, ..., C), any floating dtype; half precision is computed in float32.
        targets: Labels of the same shape: float (soft labels in [0, 1]), integer or bool;
            ``UNKNOWN_TARGET`` (-1) marks a label as unknown.
        gamma_neg: Focusing parameter γ− of the negatives.
        gamma_pos: Focusing parameter γ+ of the positives.
        clip: Probability margin m shifting the negatives; ``None`` or 0 disables it.
        detach_focal_weight: Treat the focusing weights as constants in the gradient.
        reduction: ``"sum"``, ``"mean"`` (over known labels), ``"batchmean"`` (sum / N) or
            ``"none"``.
        mask: Optional bool tensor broadcastable to ``logits``; False marks a label unknown.
        class_weight: Optional non-negative weights of shape (C,).
        validate: Also check values (finite logits, targets in [0, 1] or -1). Off by default:
            it costs one host sync per call; skipped while compiling with ``torch.compile``.
            Without it, out-of-range targets give a wrong loss rather than an error.

    Returns:
        The loss: a scalar, or a tensor shaped like ``logits`` for ``reduction="none"``, in
        float32 (float64 for float64 logits).

    Raises:
        TypeError: If an input has the wrong type or dtype.
        ValueError: If shapes disagree or a hyperparameter is out of range; with ``validate``,
            also if targets are outside [0, 1] (other than -1) or logits are not finite.
    """
    clip = 0.0 if clip is None else float(clip)
    _check_hyperparameters(float(gamma_pos), float(gamma_neg), clip, 0.0)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if class_weight is not None:
        _check_class_weight(class_weight)
    return _asymmetric_loss(
        logits,
        targets,
        float(gamma_neg),
        float(gamma_pos),
        clip,
        bool(detach_focal_weight),
        reduction,
        mask,
        class_weight,
        validate,
    )


def _asymmetric_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma_neg: float,
    gamma_pos: float,
    clip: float,
    detach_focal_weight: bool,
    reduction: str,
    mask: torch.Tensor | None,
    class_weight: torch.Tensor | None,
    validate: bool,
) -> torch.Tensor:
    """:func:`asymmetric_loss` with its hyperparameters already checked."""
    _check_multilabel_shapes(logits, targets, mask, class_weight)
    has_unknown: bool | None = None
    if validate and not _is_compiling():
        has_unknown = _check_multilabel_values(logits, targets)
    elif targets.dtype == torch.bool:
        has_unknown = False

    dtype = _compute_dtype(logits.dtype)
    x = logits.to(dtype)
    # Unless the values were read, targets may hold UNKNOWN_TARGET: the loss function masks them
    # itself (no tensor saved for it), and "mean" counts the known labels on the device.
    marked = has_unknown is not False
    y = targets.to(dtype)
    known: torch.Tensor | None = (targets >= 0) if marked and reduction == "mean" else None
    if mask is not None:
        known = mask if known is None else known & mask

    coef: torch.Tensor | None = None
    if mask is not None:
        coef = mask.to(dtype)
    if class_weight is not None:
        weight = class_weight.to(device=x.device, dtype=dtype)
        coef = weight if coef is None else coef * weight

    scale: torch.Tensor | float | None = None
    if reduction == "sum":
        scale = 1.0
    elif reduction == "batchmean":
        scale = 1.0 / max(x.shape[0], 1)
    elif reduction == "mean":
        if known is None:
            scale = 1.0 / max(x.numel(), 1)
        else:
            scale = known.expand(x.shape).sum().to(dtype).clamp_(min=1.0).reciprocal_()
    return _AsymmetricLossFn.apply(
        x, y, coef, scale, gamma_pos, gamma_neg, clip, detach_focal_weight, marked
    )


class AsymmetricLoss(nn.Module):
    r"""Asymmetric loss for multi-label classification (ASL, Ridnik et al., ICCV 2021).

    With :math:`p = \sigma(x)` and targets :math:`y`, each label contributes

    .. math::

        \ell = -\big[\, y\,(1-p)^{\gamma_+}\log p
               + (1-y)\, p_m^{\gamma_-}\log(1-p_m) \big],
        \qquad p_m = \max(p - m, 0),

    with margin :math:`m` = ``clip``; the loss is the reduction of :math:`\ell` (weighted by
    ``class_weight`` and zero for unknown labels). Values equal the reference implementation
    (Alibaba-MIIL/ASL ``AsymmetricLoss``) for hard targets; the signature and defaults are the
    reference's, so existing code switches by changing its import. CPRFL trains with
    ``AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05, reduction="mean")``.

    Differences from the reference:

    * log terms use log-sigmoid instead of ``log(p.clamp(min=eps))``, so the loss and its
      gradient stay finite and non-zero for any finite logit; ``eps`` is accepted but unused.
    * half-precision inputs and autocast regions are computed in float32 (the result is
      float32), so fp16/bf16 training gives no NaN.
    * ``disable_torch_grad_focal_loss`` detaches the focusing weight without touching the
      global grad mode (the reference switches gradients *on* inside ``torch.no_grad()``).
    * targets may be float (soft labels: the positive and negative terms are weighted by
      :math:`y` and :math:`1-y`), integer or bool; ``-1`` or ``mask=False`` marks unknown labels.
    * the backward pass is analytic and keeps only the inputs, not intermediate tensors.

    Args:
        gamma_neg: Focusing parameter γ− of the negatives (≥ 0).
        gamma_pos: Focusing parameter γ+ of the positives (≥ 0).
        clip: Probability margin m in [0, 1) for the negatives; ``None`` or 0 disables it.
        eps: Unused; kept for signature compatibility with the reference.
        disable_torch_grad_focal_loss: Treat the focusing weights as constants in the gradient,
            as the reference does; False differentiates through them.
        reduction: ``"sum"`` (reference default), ``"mean"`` (over the known labels: batch ×
            classes when all are known; 0 when none is), ``"batchmean"`` (sum / batch size)
            or ``"none"`` (per-label loss, 0 for unknown labels).
        class_weight: Optional non-negative per-class weights (C,), multiplying each label's
            loss; they do not change the ``"mean"`` denominator.
        validate: Also check every call's values (finite logits, targets in [0, 1] or -1).
            Off by default, because it costs one host sync per call; turn it on to debug a
            training loop. Skipped while compiling with ``torch.compile``. Shape, dtype and
            device checks always run (they read no tensor value).

    Raises:
        ValueError: If a hyperparameter is out of range or ``reduction`` is unknown.

    Example:
        >>> loss_fn = AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05, reduction="mean")
        >>> loss = loss_fn(torch.randn(2, 5), torch.tensor([[1, 0, 0, 1, 0], [0, 0, 1, 0, -1]]))
    """

    def __init__(
        self,
        gamma_neg: float = 4,
        gamma_pos: float = 1,
        clip: float | None = 0.05,
        eps: float = 1e-8,
        disable_torch_grad_focal_loss: bool = True,
        reduction: Reduction = "sum",
        class_weight: torch.Tensor | Sequence[float] | None = None,
        validate: bool = False,
    ) -> None:
        super().__init__()
        clip_value = 0.0 if clip is None else float(clip)
        _check_hyperparameters(float(gamma_pos), float(gamma_neg), clip_value, float(eps))
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.gamma_neg = float(gamma_neg)
        self.gamma_pos = float(gamma_pos)
        self.clip = clip_value
        self.eps = float(eps)
        self.disable_torch_grad_focal_loss = bool(disable_torch_grad_focal_loss)
        self.reduction = reduction
        self.validate = bool(validate)
        weight = None
        if class_weight is not None:
            try:
                weight = torch.as_tensor(class_weight, dtype=torch.float32).detach().clone()
            except (TypeError, ValueError, RuntimeError, OverflowError) as e:
                raise TypeError(
                    f"class_weight must be a tensor or a sequence of per-class numbers, got "
                    f"{type(class_weight).__name__} {class_weight!r:.40} ({e})"
                ) from None
            _check_class_weight(weight)
        self.class_weight: torch.Tensor | None
        self.register_buffer("class_weight", weight, persistent=False)

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            logits: Raw scores (N, ..., C), any floating dtype.
            targets: Labels of the same shape (float in [0, 1], integer or bool); -1 marks an
                unknown label.
            mask: Optional bool tensor broadcastable to ``logits``; False marks unknown labels.

        Returns:
            The reduced loss (a scalar), or the per-label loss for ``reduction="none"``; float32
            unless the logits are float64.

        Raises:
            TypeError: If an input has the wrong type or dtype.
            ValueError: If shapes disagree; with ``validate``, also if targets are out of range
                or logits are not finite.
        """
        return _asymmetric_loss(
            logits,
            targets,
            self.gamma_neg,
            self.gamma_pos,
            self.clip,
            self.disable_torch_grad_focal_loss,
            self.reduction,
            mask,
            self.class_weight,
            self.validate,
        )

    def extra_repr(self) -> str:
        """Summarise the hyperparameters."""
        return (
            f"gamma_neg={self.gamma_neg:g}, gamma_pos={self.gamma_pos:g}, clip={self.clip:g}, "
            f"disable_torch_grad_focal_loss={self.disable_torch_grad_focal_loss}, "
            f"reduction={self.reduction!r}" + (", validate=True" if self.validate else "")
        )
