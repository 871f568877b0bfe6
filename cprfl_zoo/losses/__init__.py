"""Multi-label losses: asymmetric loss (ASL) and the long-tail toolkit.

:class:`AsymmetricLoss` is a drop-in replacement for the ``AsymmetricLoss`` of the reference
repository (Alibaba-MIIL/ASL, also copied into the CPRFL code) with the same signature, defaults
and values, plus float32 computation under mixed precision, partial labels, per-class weights,
input checks and a hand-written backward that keeps only the inputs for the backward pass.
:class:`ASLSingleLabel` is the reference's softmax variant with label smoothing.

Shape, dtype and device checks run on every call and cost nothing on the device. Value checks
(finite logits, targets in range) read the tensors, so they wait for the device once per call;
they are opt-in (``validate=True``) for debugging a training loop or checking a data set.

Every name is importable from ``cprfl_zoo.losses``; the package holds one module per part:

* :mod:`cprfl_zoo.losses.asymmetric`: the multi-label ASL: :class:`AsymmetricLoss`, its
  functional form :func:`asymmetric_loss`, the fused autograd function behind both, their input
  checks, and :data:`UNKNOWN_TARGET`.
* :mod:`cprfl_zoo.losses.single_label`: :class:`ASLSingleLabel` and its input checks.
* :mod:`cprfl_zoo.losses.logit_adjustment`: logit adjustment (Menon et al., ICLR 2021): the
  post-hoc :func:`adjust_logits` and :class:`LogitAdjustment` module, the per-class
  :func:`logit_adjustment_offset`, and the training-time :class:`LogitAdjustedLoss`.
* :mod:`cprfl_zoo.losses.distribution_balanced`: :class:`DistributionBalancedLoss` (Wu et al.,
  ECCV 2020) and its official presets :data:`DB_LOSS_PRESETS`.
* :mod:`cprfl_zoo.losses.two_way`: :class:`TwoWayLoss` and :func:`two_way_loss` (Kobayashi,
  CVPR 2023).
* :mod:`cprfl_zoo.losses.prompt_anchor`: :class:`PromptAnchorLoss` and
  :func:`prompt_anchor_loss`, a penalty keeping the category prompts near their text
  initialisation.

This package imports only PyTorch, so it can be used without building a CPRFL model.
"""

from .asymmetric import UNKNOWN_TARGET, AsymmetricLoss, asymmetric_loss
from .asymmetric import Reduction as Reduction  # the reduction type, importable here before too
from .distribution_balanced import DB_LOSS_PRESETS, DistributionBalancedLoss
from .logit_adjustment import (
    LogitAdjustedLoss,
    LogitAdjustment,
    adjust_logits,
    logit_adjustment_offset,
)
from .prompt_anchor import ANCHOR_KINDS, PromptAnchorLoss, prompt_anchor_loss
from .single_label import ASLSingleLabel
from .two_way import TwoWayLoss, two_way_loss

__all__ = [
    "ANCHOR_KINDS",
    "DB_LOSS_PRESETS",
    "UNKNOWN_TARGET",
    "ASLSingleLabel",
    "AsymmetricLoss",
    "DistributionBalancedLoss",
    "LogitAdjustedLoss",
    "LogitAdjustment",
    "PromptAnchorLoss",
    "TwoWayLoss",
    "adjust_logits",
    "asymmetric_loss",
    "logit_adjustment_offset",
    "prompt_anchor_loss",
    "two_way_loss",
]
