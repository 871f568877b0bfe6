"""Tests for cprfl_zoo.losses.prompt_anchor against the distances written out with ``math``."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_cprfl

from cprfl_zoo.losses import ANCHOR_KINDS, PromptAnchorLoss, prompt_anchor_loss


def formula(prompts: list[list[float]], anchor: list[list[float]], kind: str) -> float:
    """Mean over entries of (p - a)^2, or mean over classes of 1 - cos(p_i, a_i), in Python."""
    if kind == "l2":
        diffs = [
            (p - a) ** 2
            for row_p, row_a in zip(prompts, anchor, strict=True)
            for p, a in zip(row_p, row_a, strict=True)
        ]
        return sum(diffs) / len(diffs)
    terms = []
    for row_p, row_a in zip(prompts, anchor, strict=True):
        dot = sum(p * a for p, a in zip(row_p, row_a, strict=True))
        norm_p = math.sqrt(sum(p * p for p in row_p))
        norm_a = math.sqrt(sum(a * a for a in row_a))
        terms.append(1 - dot / (max(norm_p, 1e-8) * max(norm_a, 1e-8)))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("kind", ["l2", "cosine"])
def test_value_matches_the_formula(kind):
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    a = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    expected = formula(p.tolist(), a.tolist(), kind)
    assert prompt_anchor_loss(p, a, kind).item() == pytest.approx(expected, rel=1e-12)
    assert PromptAnchorLoss(a, kind)(p.float()).item() == pytest.approx(expected, rel=1e-5)
    assert prompt_anchor_loss(a, a, kind).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("kind", ["l2", "cosine"])
def test_gradient_matches_finite_differences_and_spares_the_anchor(kind):
    gen = torch.Generator().manual_seed(1)
    p = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    a = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    prompt_anchor_loss(p, a, kind).backward()
    assert a.grad is None  # the anchor is detached
    h, base = 1e-6, p.detach()
    numeric = torch.zeros_like(base)
    for idx in torch.cartesian_prod(torch.arange(4), torch.arange(3)).tolist():
        up, down = base.clone(), base.clone()
        up[tuple(idx)] += h
        down[tuple(idx)] -= h
        f_up = formula(up.tolist(), a.detach().tolist(), kind)
        f_down = formula(down.tolist(), a.detach().tolist(), kind)
        numeric[tuple(idx)] = (f_up - f_down) / (2 * h)
    torch.testing.assert_close(p.grad, numeric, rtol=1e-5, atol=1e-8)


def test_cosine_ignores_the_norm_and_l2_does_not():
    a = torch.randn(3, 8)
    assert prompt_anchor_loss(4.0 * a, a, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert prompt_anchor_loss(4.0 * a, a, "l2").item() == pytest.approx(
        9.0 * a.square().mean().item(), rel=1e-5
    )
    # a zero prompt has cosine 0 with its anchor: penalty 1, no NaN
    zero = torch.zeros(3, 8, requires_grad=True)
    value = prompt_anchor_loss(zero, a, "cosine")
    value.backward()
    assert value.item() == pytest.approx(1.0) and torch.isfinite(zero.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ANCHOR_KINDS)
def test_half_precision_is_compared_in_float32(dtype, kind):
    a = torch.randn(6, 16) * 300  # squares overflow float16
    p = (a + torch.randn(6, 16) * 50).to(dtype)
    value = PromptAnchorLoss(a, kind)(p)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    expected = formula(p.float().tolist(), a.tolist(), kind)
    assert value.item() == pytest.approx(expected, rel=1e-4)


def test_from_model_anchors_the_current_prompts_and_is_saved():
    model = tiny_cprfl(["cat", "dog", "bird"])
    loss = PromptAnchorLoss.from_model(model, kind="l2")
    assert loss.anchor.shape == model.get_prompts().shape
    assert loss(model.get_prompts()).item() == 0.0
    with torch.no_grad():
        for p in model.prompt_init.parameters():
            p.add_(0.1)
    drifted = loss(model.get_prompts())
    assert drifted.item() > 0 and drifted.requires_grad
    restored = PromptAnchorLoss(torch.zeros_like(loss.anchor), "l2")
    restored.load_state_dict(loss.state_dict())
    assert torch.equal(restored.anchor, loss.anchor)
    assert "kind='l2'" in repr(loss)


def test_bad_inputs_name_the_problem():
    a = torch.randn(3, 4)
    with pytest.raises(ValueError, match="kind must be one of"):
        prompt_anchor_loss(a, a, "l1")
    with pytest.raises(
        ValueError, match=r"prompts have shape \(3, 5\) but the anchor has \(3, 4\)"
    ):
        prompt_anchor_loss(torch.randn(3, 5), a)
    with pytest.raises(TypeError, match="prompts must be a floating-point tensor"):
        prompt_anchor_loss(torch.ones(3, 4, dtype=torch.long), a)
    with pytest.raises(ValueError, match="anchor must be finite"):
        PromptAnchorLoss(torch.full((3, 4), math.nan))
    with pytest.raises(ValueError, match="eps must be"):
        PromptAnchorLoss(a, eps=0)
    with pytest.raises(TypeError, match="has no get_prompts"):
        PromptAnchorLoss.from_model(torch.nn.Linear(2, 2))
