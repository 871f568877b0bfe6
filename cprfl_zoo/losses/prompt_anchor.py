r"""Prompt anchoring: a penalty that keeps each category prompt near its text initialisation.

CPRFL builds its category prompts from the class text embeddings, :math:`P = \mathrm{PI}(W)`,
and uses them as the classifier. During training the prompts drift away from that start, and
with it from the meaning of the class names (see the accuracy page's diagnosis). Anchoring adds
a penalty on the distance between the current prompts :math:`P` and the prompts at
initialisation :math:`A = P_0` (computed once before the first step and detached):

* ``kind="l2"``: the mean squared difference over all :math:`C \times d` entries,
  :math:`\frac{1}{Cd}\sum_{i,k}(p_{ik} - a_{ik})^2`, i.e. the mean over classes of
  :math:`\lVert p_i - a_i\rVert^2 / d` (so a weight carries over between prompt widths d);
* ``kind="cosine"``: the mean over classes of :math:`1 - \cos(p_i, a_i)`, which leaves the
  prompts' norms free and penalises only a change of direction. A norm below ``eps`` counts as
  ``eps`` (a zero prompt has cosine 0 with anything).

The training loss becomes ``task_loss + weight * anchor_loss``; ``examples/train.py`` exposes it as
``--anchor-weight`` and ``--anchor-kind``. Half-precision prompts are compared in float32 and the
result is float32 (float64 for float64 prompts), like the other losses here.

* :func:`prompt_anchor_loss`: the functional form.
* :class:`PromptAnchorLoss`: a module holding the anchor as a buffer (saved in ``state_dict``),
  built from a model's prompts with :meth:`PromptAnchorLoss.from_model`.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from ._common import _compute_dtype

__all__ = ["ANCHOR_KINDS", "PromptAnchorLoss", "prompt_anchor_loss"]

AnchorKind = Literal["l2", "cosine"]
ANCHOR_KINDS: tuple[str, ...] = get_args(AnchorKind)
"""The distances :func:`prompt_anchor_loss` offers: ``"l2"`` and ``"cosine"``."""


def _check_kind(kind: str) -> None:
    if kind not in ANCHOR_KINDS:
        raise ValueError(f"kind must be one of {ANCHOR_KINDS}, got {kind!r}")


def _check_eps(eps: float) -> float:
    eps = float(eps)
    if not (eps > 0 and eps != float("inf")):
        raise ValueError(f"eps must be a finite number > 0, got {eps}")
    return eps


def _check_pair(prompts: torch.Tensor, anchor: torch.Tensor) -> None:
    for name, t in (("prompts", prompts), ("anchor", anchor)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            what = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise TypeError(f"{name} must be a floating-point tensor, got {what}")
    if prompts.ndim < 1 or prompts.shape != anchor.shape:
        raise ValueError(
            f"prompts have shape {tuple(prompts.shape)} but the anchor has "
            f"{tuple(anchor.shape)}; both must be (num_classes, dim), the anchor taken from the "
            "same model's get_prompts() before training"
        )
    if prompts.device != anchor.device:
        raise ValueError(
            f"prompts are on {prompts.device} but the anchor is on {anchor.device}; move the "
            "anchor (PromptAnchorLoss.to(device))"
        )


def prompt_anchor_loss(
    prompts: torch.Tensor,
    anchor: torch.Tensor,
    kind: AnchorKind = "l2",
    *,
    eps: float = 1e-8,
) -> torch.Tensor:
    r"""Distance of the prompts from their anchor, averaged over the classes.

    Args:
        prompts: Current category prompts (C, d), e.g. ``model.get_prompts()``; any floating
            dtype (half precision is compared in float32).
        anchor: The prompts at initialisation (C, d); no gradient flows into it (it is detached).
        kind: ``"l2"``: mean over the C·d entries of :math:`(p - a)^2`; ``"cosine"``: mean
            over classes of :math:`1 - \cos(p_i, a_i)`.
        eps: Smallest norm the cosine divides by.

    Returns:
        The scalar penalty, float32 (float64 for float64 prompts); 0 when the prompts equal the
        anchor.

    Raises:
        TypeError: If an input is not a floating-point tensor.
        ValueError: If the shapes or devices differ, ``kind`` is unknown or ``eps`` is not
            positive.

    Example:
        >>> anchor = model.get_prompts().detach()            # before the first step
        >>> loss = task_loss + 0.1 * prompt_anchor_loss(model.get_prompts(), anchor, "cosine")
    """
    _check_kind(kind)
    eps = _check_eps(eps)
    _check_pair(prompts, anchor)
    dtype = _compute_dtype(prompts.dtype)
    p = prompts.to(dtype)
    a = anchor.detach().to(dtype)
    if p.numel() == 0:
        return p.sum()
    if kind == "l2":
        return (p - a).square().mean()
    dot = (p * a).sum(dim=-1)
    norms = p.norm(dim=-1).clamp(min=eps) * a.norm(dim=-1).clamp(min=eps)
    return (1.0 - dot / norms).mean()


class PromptAnchorLoss(nn.Module):
    r"""Penalty keeping category prompts near a fixed anchor (their text initialisation).

    ``forward(prompts)`` returns :func:`prompt_anchor_loss` of ``prompts`` against the stored
    anchor: ``"l2"`` is the mean squared difference over all entries, ``"cosine"`` the mean over
    classes of one minus the cosine similarity. The anchor is a persistent float32 buffer (saved
    with ``state_dict``, so a resumed run keeps the anchor of its first start), moved with
    ``.to(device)``.

    Args:
        anchor: The prompts at initialisation (C, d); detached and copied.
        kind: ``"l2"`` or ``"cosine"``.
        eps: Smallest norm the cosine divides by.

    Raises:
        TypeError: If ``anchor`` is not a floating-point tensor.
        ValueError: If ``anchor`` is not finite, ``kind`` is unknown or ``eps`` is not positive.

    Example:
        >>> anchor_loss = PromptAnchorLoss.from_model(model, kind="l2")   # before training
        >>> loss = criterion(model(images), targets) + 0.1 * anchor_loss(model.get_prompts())
    """

    anchor: torch.Tensor

    def __init__(self, anchor: torch.Tensor, kind: AnchorKind = "l2", eps: float = 1e-8) -> None:
        super().__init__()
        _check_kind(kind)
        self.kind = kind
        self.eps = _check_eps(eps)
        if not isinstance(anchor, torch.Tensor) or not anchor.is_floating_point():
            what = anchor.dtype if isinstance(anchor, torch.Tensor) else type(anchor).__name__
            raise TypeError(f"anchor must be a floating-point tensor, got {what}")
        if not bool(torch.isfinite(anchor).all()):
            raise ValueError("anchor must be finite (the prompts at initialisation)")
        self.register_buffer("anchor", anchor.detach().float().clone())

    @classmethod
    @torch.no_grad()
    def from_model(
        cls, model: nn.Module, kind: AnchorKind = "l2", eps: float = 1e-8
    ) -> PromptAnchorLoss:
        """Anchor at ``model.get_prompts()`` now (call it before the first training step).

        Args:
            model: A CPRFL model (anything with ``get_prompts()``); unwrap DDP first.
            kind: ``"l2"`` or ``"cosine"``.
            eps: Smallest norm the cosine divides by.

        Returns:
            The loss, its anchor on the model's device.

        Raises:
            TypeError: If ``model`` has no ``get_prompts()``.
        """
        get_prompts = getattr(model, "get_prompts", None)
        if not callable(get_prompts):
            raise TypeError(
                f"{type(model).__name__} has no get_prompts(); pass a CPRFL model (unwrap "
                "DistributedDataParallel or torch.compile first)"
            )
        return cls(get_prompts(), kind=kind, eps=eps)

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        """Return the penalty of ``prompts`` (C, d); see :func:`prompt_anchor_loss`."""
        return prompt_anchor_loss(prompts, self.anchor, self.kind, eps=self.eps)

    def extra_repr(self) -> str:
        """Summarise the anchor."""
        return f"num_classes={self.anchor.shape[0]}, kind={self.kind!r}"
