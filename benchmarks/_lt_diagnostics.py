"""Diagnostics of a trained head for the long-tailed benchmarks: logit scale, ASL's push, prompts.

Recorded with every run of ``lt_emoji.py`` (``diag_test``, ``diag_train``, ``prompts``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from _heads import CPRFLOnTokens, TopOnFeatures
from torch import nn


def cprfl_model(module: nn.Module) -> nn.Module | None:
    """The CPRFL model inside a method's module, or None for a linear head."""
    from cprfl_zoo.model import CPRFL

    if isinstance(module, CPRFL):
        return module
    if isinstance(module, CPRFLOnTokens):
        return module.model
    if isinstance(module, TopOnFeatures):
        return cprfl_model(module.head)
    return None


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12))


def _offdiag_cos(x: torch.Tensor) -> torch.Tensor:
    x = F.normalize(x.double(), dim=-1)
    sim = x @ x.T
    i, j = torch.triu_indices(len(x), len(x), 1)
    return sim[i, j]


def logit_diagnostics(
    logits: torch.Tensor, targets: torch.Tensor, groups: dict[str, list[int]]
) -> dict[str, Any]:
    """Logit scale on positives / negatives, and ASL's push on each group's logits.

    ``push_down_share`` is the share of the total gradient magnitude of the ASL loss (summed over
    samples) on a group's logits that comes from its negatives: 1 means the loss only pushes that
    group's logits down.
    """
    from cprfl_zoo import AsymmetricLoss

    z = logits.double().clone().requires_grad_(True)
    loss = AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05, reduction="sum")(z, targets.double())
    (grad,) = torch.autograd.grad(loss, z)
    out: dict[str, Any] = {}
    for name, idx in groups.items():
        if not idx:
            continue
        t, lg, g = targets[:, idx].bool(), logits[:, idx].double(), grad[:, idx].abs()
        out[name] = {
            "pos_logit": round(float(lg[t].mean()), 3) if t.any() else math.nan,
            "neg_logit": round(float(lg[~t].mean()), 3),
            "logit_std": round(float(lg.std()), 3),
            "push_down_share": round(float(g[~t].sum() / g.sum().clamp_min(1e-12)), 4),
        }
    return out


def prompt_diagnostics(
    model: nn.Module, prompts_init: torch.Tensor, groups: dict[str, list[int]]
) -> dict[str, Any]:
    """How far each group's prompts moved, and whether their similarities follow the text's."""
    with torch.no_grad():
        prompts = model.get_prompts().float().cpu()
    text = model.class_embeddings.float().cpu()
    drift = (prompts - prompts_init).norm(dim=-1) / prompts_init.norm(dim=-1).clamp_min(1e-12)
    tcos = _offdiag_cos(text)
    return {
        "prompt_norm": {
            k: round(float(prompts[v].norm(dim=-1).mean()), 3) for k, v in groups.items()
        },
        "prompt_drift": {k: round(float(drift[v].mean()), 4) for k, v in groups.items()},
        "text_prompt_cos_corr_init": round(_pearson(tcos, _offdiag_cos(prompts_init)), 4),
        "text_prompt_cos_corr": round(_pearson(tcos, _offdiag_cos(prompts)), 4),
    }
