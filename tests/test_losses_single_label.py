"""Tests for cprfl_zoo.losses.single_label: ASLSingleLabel against its formula, and edge cases."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import value_and_grad

from cprfl_zoo.losses import ASLSingleLabel


def formula_single_label(x, target, gamma_pos, gamma_neg, eps, reduction):
    num_classes = x.shape[-1]
    log_p = torch.log_softmax(x, dim=-1)
    p = log_p.exp()
    onehot = torch.nn.functional.one_hot(target, num_classes).to(x.dtype)
    weight = onehot * (1 - p) ** gamma_pos + (1 - onehot) * p**gamma_neg
    smoothed = onehot * (1 - eps) + eps / num_classes
    loss = -(smoothed * weight * log_p).sum(-1)
    return {"mean": loss.mean(), "sum": loss.sum(), "none": loss}[reduction]


@pytest.mark.parametrize(
    ("gamma_pos", "gamma_neg", "eps", "reduction"),
    list(itertools.product([0.0, 1.0, 0.5], [4.0, 0.0], [0.1, 0.0], ["mean", "sum", "none"])),
)
def test_single_label_matches_formula(gamma_pos, gamma_neg, eps, reduction):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(5, 7, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    target = torch.randint(0, 7, (5,), generator=gen)
    loss_fn = ASLSingleLabel(gamma_pos, gamma_neg, eps, reduction)
    got, got_grad = value_and_grad(loss_fn, x, target)
    want, want_grad = value_and_grad(
        lambda a, b: formula_single_label(a, b, gamma_pos, gamma_neg, eps, reduction), x, target
    )
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-9, atol=1e-9)


def test_single_label_defaults_and_reduction_override():
    loss_fn = ASLSingleLabel()
    assert (loss_fn.gamma_pos, loss_fn.gamma_neg, loss_fn.eps, loss_fn.reduction) == (
        0,
        4,
        0.1,
        "mean",
    )
    x = torch.randn(4, 3, dtype=torch.float64)
    target = torch.tensor([0, 2, 1, 2])
    per_sample = loss_fn(x, target, reduction="none")
    assert per_sample.shape == (4,)
    torch.testing.assert_close(loss_fn(x, target), per_sample.mean(), rtol=0, atol=1e-15)


def test_single_label_half_precision_extreme_logits():
    x = torch.tensor([[100.0, -100.0, 0.0], [-100.0, 100.0, 50.0]], dtype=torch.float16)
    x.requires_grad_()
    for target in (torch.tensor([0, 1]), torch.tensor([1, 0])):
        loss = ASLSingleLabel(gamma_pos=0.5)(x, target)
        (grad,) = torch.autograd.grad(loss, x)
        assert loss.dtype == torch.float32
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_single_label_bad_inputs():
    loss_fn = ASLSingleLabel(validate=True)
    x = torch.randn(3, 4)
    with pytest.raises(TypeError, match="target must hold class indices"):
        loss_fn(x, torch.zeros(3))
    with pytest.raises(ValueError, match=r"target class indices must be in \[0, 4\)"):
        loss_fn(x, torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match=r"target shape \(2,\) does not match batch size 3"):
        loss_fn(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"shape \(batch, num_classes\)"):
        loss_fn(x[0], torch.tensor(0))
    x_bad = x.clone()
    x_bad[1, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        loss_fn(x_bad, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="reduction must be one of"):
        loss_fn(x, torch.tensor([0, 1, 2]), reduction="batchmean")
    with pytest.raises(ValueError, match=r"eps \(label smoothing\) must be in \[0, 1\]"):
        ASLSingleLabel(eps=1.5)
    # Without validate the shape and dtype checks still run, the value checks do not.
    unchecked = ASLSingleLabel()
    with pytest.raises(ValueError, match=r"target shape \(2,\) does not match batch size 3"):
        unchecked(x, torch.tensor([0, 1]))
    assert torch.isnan(unchecked(x_bad, torch.tensor([0, 1, 2])))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("validate", [False, True])
def test_single_label_empty_batch(reduction, validate):
    # reduction="mean" used to return NaN (0 / 0)
    x = torch.randn(0, 4, requires_grad=True)
    loss_fn = ASLSingleLabel(reduction=reduction, validate=validate)
    loss = loss_fn(x, torch.zeros(0, dtype=torch.long))
    if reduction == "none":
        assert loss.shape == (0,)
    else:
        assert loss.shape == () and loss.item() == 0.0
    loss.sum().backward()
    assert x.grad.shape == (0, 4) and not x.grad.isnan().any()


def test_single_label_without_classes_is_an_error():
    with pytest.raises(ValueError, match=r"logits have no classes \(shape \(0, 0\)\)"):
        ASLSingleLabel(validate=True)(torch.randn(0, 0), torch.zeros(0, dtype=torch.long))
