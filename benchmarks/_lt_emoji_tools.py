"""The long-tail tools of the emoji benchmark ``lt_emoji.py``: every method as a spec.

A method is a head (``linear`` or ``cprfl``) with a loss, a sampler and head options, named
``<head>-<loss>[-<option>...]``. Both heads get the same tools (best against best, issue 21):

* losses: BCE, ASL (γ- = 4, γ+ = 0, clip 0.05; the baseline), the Distribution-Balanced loss
  (:class:`cprfl_zoo.losses.DistributionBalancedLoss`, ``"coco-lt"`` preset) and ASL with
  loss-time logit adjustment (:class:`cprfl_zoo.losses.LogitAdjustedLoss`, τ = 1);
* samplers: class-aware (:class:`cprfl_zoo.data.ClassAwareSampler`, 3 images per class visit)
  and repeat-factor (:class:`cprfl_zoo.data.RepeatFactorSampler`, threshold
  :data:`REPEAT_THRESHOLD`);
* normalised classifiers: CPRFL's ``cosine_classifier=True``, and for the linear head
  :class:`_heads.PooledCosineLinear` (weight-normalised, learned scale);
* CPRFL only: prompt anchoring (:class:`cprfl_zoo.losses.PromptAnchorLoss`, ``"l2"``), its
  weight chosen on validation from ``EmojiConfig.anchor_weights``.

Class counts and priors are read from the training targets (``cprfl_zoo.data.class_counts``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

Head = Literal["linear", "cprfl"]
LossName = Literal["bce", "asl", "db", "asl-la"]
SamplerName = Literal["random", "class-aware", "repeat-factor"]

REPEAT_THRESHOLD = 0.05
"""Repeat-factor threshold t: classes in fewer than 5 % of the training canvases (about the
head threshold, 100 of ~2,190) are repeated by sqrt(t / f); LVIS's 0.001 repeats nothing here."""


@dataclass(frozen=True)
class MethodSpec:
    """What one method trains: head, loss, sampler and options."""

    head: Head
    loss: LossName
    sampler: SamplerName = "random"
    cosine: bool = False
    anchor: bool = False
    random_text: bool = False


def _spec(name: str) -> MethodSpec:
    head_name, loss_name, *options = name.split("-")
    loss = {"BCE": "bce", "ASL": "asl", "DB": "db"}[loss_name]
    if "LA" in options:
        loss = "asl-la"
    sampler = "class-aware" if "CAS" in options else "random"
    sampler = "repeat-factor" if "RFS" in options else sampler
    return MethodSpec(
        head="linear" if head_name == "linear" else "cprfl",
        loss=loss,  # type: ignore[arg-type]
        sampler=sampler,  # type: ignore[arg-type]
        cosine="cosine" in options,
        anchor="anchor" in options,
        random_text="random" in options,
    )


_TOOLS = ("DB", "ASL-LA", "ASL-CAS", "ASL-RFS", "ASL-cosine", "ASL-RFS-cosine", "DB-RFS")
LINEAR_METHODS = ("linear-BCE", "linear-ASL", *(f"linear-{t}" for t in _TOOLS))
CPRFL_METHODS = (
    "CPRFL-ASL",
    "CPRFL-ASL-random",
    *(f"CPRFL-{t}" for t in _TOOLS),
    "CPRFL-ASL-anchor",
    "CPRFL-ASL-cosine-anchor",
    "CPRFL-ASL-RFS-anchor",
)
SPECS: dict[str, MethodSpec] = {m: _spec(m) for m in (*LINEAR_METHODS, *CPRFL_METHODS)}
"""Every method of the benchmark, by name."""


def spec_of(method: str) -> MethodSpec:
    """The spec of a method name (a key of :data:`SPECS`).

    Raises:
        ValueError: For an unknown name (the message lists the known ones).
    """
    if method not in SPECS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(SPECS)}")
    return SPECS[method]


def anchor_base(method: str) -> str | None:
    """The method whose chosen learning rate an anchored method reuses (None if not anchored)."""
    return method.removesuffix("-anchor") if spec_of(method).anchor else None


def make_task_loss(spec: MethodSpec, train_targets: torch.Tensor) -> nn.Module:
    """The classification loss of a spec, counts and priors read from the training targets."""
    from cprfl_zoo import AsymmetricLoss
    from cprfl_zoo.data import class_counts
    from cprfl_zoo.losses import DistributionBalancedLoss, LogitAdjustedLoss

    asl = AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05, reduction="mean")
    if spec.loss == "bce":
        return nn.BCEWithLogitsLoss()
    if spec.loss == "asl":
        return asl
    counts, n = class_counts(train_targets), len(train_targets)
    if spec.loss == "db":
        return DistributionBalancedLoss.from_preset("coco-lt", counts, n)
    return LogitAdjustedLoss.from_counts(counts, n, tau=1.0, base_loss=asl)


class AnchoredLoss(nn.Module):
    """``task(logits, targets) + weight * anchor(model.get_prompts())``.

    The anchor is the model's prompts when this is built (before training).
    """

    def __init__(self, task: nn.Module, model: nn.Module, weight: float) -> None:
        super().__init__()
        from cprfl_zoo.losses import PromptAnchorLoss

        self.task, self.weight = task, float(weight)
        self.anchor = PromptAnchorLoss.from_model(model, kind="l2")
        self._model = [model]  # not a submodule: its parameters stay the model's

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        prompts = self._model[0].get_prompts().float()
        return self.task(logits, targets) + self.weight * self.anchor(prompts)


def make_sampler(spec: MethodSpec, train_targets: torch.Tensor, seed: int):
    """The training sampler of a spec (None: a seeded permutation per epoch)."""
    from cprfl_zoo.data import ClassAwareSampler, RepeatFactorSampler

    if spec.sampler == "class-aware":
        return ClassAwareSampler(train_targets, seed=seed, num_replicas=1, rank=0)
    if spec.sampler == "repeat-factor":
        return RepeatFactorSampler(
            train_targets, REPEAT_THRESHOLD, seed=seed, num_replicas=1, rank=0
        )
    return None
