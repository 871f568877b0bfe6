"""Tests for cprfl_zoo.losses.two_way: the two-way multi-label loss against its formula, written
out set by set, and against the official masking procedure."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import value_and_grad

from cprfl_zoo.losses import UNKNOWN_TARGET, TwoWayLoss, two_way_loss


def one_term(pos_logits, neg_logits, tp, tn):
    """softplus(Tn log sum_n exp(x_n/Tn) + Tp log sum_p exp(-x_p/Tp)) for explicit sets."""
    neg = tn * torch.log(torch.exp(neg_logits / tn).sum())
    pos = tp * torch.log(torch.exp(-pos_logits / tp).sum())
    return F.softplus(neg + pos)


def formula_loss(x, y, tp=4.0, tn=1.0, reduction="mean"):
    """The paper's loss, looping over samples and classes: a value > 0 is positive, 0 negative."""
    sample_terms, class_terms = [], []
    for row_x, row_y in zip(x, y, strict=True):
        if (row_y > 0).any():
            if (row_y == 0).any():
                sample_terms.append(one_term(row_x[row_y > 0], row_x[row_y == 0], tp, tn))
            else:
                sample_terms.append(x.sum() * 0)
    for col_x, col_y in zip(x.T, y.T, strict=True):
        if (col_y > 0).any():
            if (col_y == 0).any():
                class_terms.append(one_term(col_x[col_y > 0], col_x[col_y == 0], tp, tn))
            else:
                class_terms.append(x.sum() * 0)
    s, c = torch.stack(sample_terms), torch.stack(class_terms)
    if reduction == "sum":
        return s.sum() + c.sum()
    return s.mean() + c.mean()


def official_procedure(x, y, tp=4.0, tn=1.0):
    """The official masking: excluded labels get -100 added to their scaled logit."""
    class_mask = (y > 0).any(dim=0)
    sample_mask = (y > 0).any(dim=1)
    pmask = torch.where(y > 0, 0.0, -100.0)
    nmask = torch.where(y == 0, 0.0, -100.0)
    p_class = tp * torch.logsumexp(-x / tp + pmask, dim=0)[class_mask]
    p_sample = tp * torch.logsumexp(-x / tp + pmask, dim=1)[sample_mask]
    n_class = tn * torch.logsumexp(x / tn + nmask, dim=0)[class_mask]
    n_sample = tn * torch.logsumexp(x / tn + nmask, dim=1)[sample_mask]
    return F.softplus(n_class + p_class).mean() + F.softplus(n_sample + p_sample).mean()


def make_batch(shape=(8, 6), seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=dtype) * 3).requires_grad_()
    y = (torch.rand(shape, generator=gen) < 0.35).to(dtype)
    y[1] = 0.0  # a sample without positives: left out of the sample-wise mean
    y[2] = 1.0  # a sample without negatives: contributes 0
    y[:, 4] = 0.0  # a class without positives: left out of the class-wise mean
    y[3, 4] = 0.0
    return x, y


@pytest.mark.parametrize("temps", [(4.0, 1.0), (1.0, 1.0), (2.5, 0.5)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_values_and_gradients_match_formula(temps, reduction):
    tp, tn = temps
    x, y = make_batch()
    got, got_grad = value_and_grad(TwoWayLoss(tp, tn, reduction=reduction), x, y)
    want, want_grad = value_and_grad(lambda a, b: formula_loss(a, b, tp, tn, reduction), x, y)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-12)


def test_matches_the_official_procedure():
    x, y = make_batch(shape=(16, 10), seed=3)
    got, got_grad = value_and_grad(TwoWayLoss(), x, y)
    want, want_grad = value_and_grad(official_procedure, x, y)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(two_way_loss(x, y, tp=4, tn=1), got, rtol=0, atol=0)


def test_unknown_labels_are_neither_positive_nor_negative():
    x, y = make_batch()
    known = torch.rand(y.shape, generator=torch.Generator().manual_seed(5)) > 0.25
    y_marked = torch.where(known, y, torch.full_like(y, UNKNOWN_TARGET))
    by_marker, grad_marker = value_and_grad(TwoWayLoss(), x, y_marked)
    by_mask, grad_mask = value_and_grad(lambda a, b: TwoWayLoss()(a, b, mask=known), x, y)
    want, want_grad = value_and_grad(formula_loss, x, y_marked)  # -1: neither > 0 nor == 0
    for got, got_grad in ((by_marker, grad_marker), (by_mask, grad_mask)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-12)
        assert (got_grad[~known] == 0).all()


def test_degenerate_batches_give_zero_without_nan():
    x = torch.randn(4, 3, requires_grad=True)
    for y in (torch.zeros(4, 3), torch.ones(4, 3), torch.full((4, 3), -1.0)):
        loss = TwoWayLoss()(x, y)
        (grad,) = torch.autograd.grad(loss, x)
        assert loss.item() == 0.0 and (grad == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_and_extreme_logits(dtype):
    x, y = make_batch(dtype=torch.float32)
    xh = x.detach().to(dtype).requires_grad_()
    got, got_grad = value_and_grad(TwoWayLoss(), xh, y)
    want, want_grad = value_and_grad(TwoWayLoss(), xh.detach().float().requires_grad_(), y)
    assert got.dtype == torch.float32 and got_grad.dtype == dtype
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_grad.float(), want_grad, rtol=1e-2, atol=1e-3)
    big = torch.tensor([[6e4, -6e4, 0.0], [-6e4, 6e4, 1.0]], dtype=dtype, requires_grad=True)
    loss = TwoWayLoss()(big, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]))
    (grad,) = torch.autograd.grad(loss, big)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert loss.item() > 1e4  # a confidently wrong pair keeps a large loss


def test_autocast():
    x, y = make_batch(dtype=torch.float32)
    layer = torch.nn.Linear(6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = TwoWayLoss()(layer(x.detach()), y)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()


def test_bad_input():
    with pytest.raises(ValueError, match="tp must be a finite number > 0"):
        TwoWayLoss(tp=0)
    with pytest.raises(ValueError, match="tn must be a finite number > 0"):
        two_way_loss(torch.zeros(2, 3), torch.zeros(2, 3), tn=float("nan"))
    with pytest.raises(ValueError, match="reduction must be one of"):
        TwoWayLoss(reduction="none")
    with pytest.raises(ValueError, match=r"must be \(batch, num_classes\)"):
        TwoWayLoss()(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="targets shape"):
        TwoWayLoss()(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"got values in \[0, 3\]"):
        TwoWayLoss(validate=True)(torch.zeros(2, 3), torch.tensor([[0.0, 3.0, 1.0]] * 2))
    assert repr(TwoWayLoss()) == "TwoWayLoss(tp=4, tn=1, reduction='mean')"


@pytest.mark.parametrize("shape", [(0, 5), (4, 0), (0, 0)])
def test_empty_batch_gives_zero(shape):
    x = torch.randn(shape, requires_grad=True)
    for reduction in ("mean", "sum"):
        loss = TwoWayLoss(reduction=reduction)(x, torch.zeros(shape))
        (grad,) = torch.autograd.grad(loss, x)
        assert loss.item() == 0.0 and grad.shape == shape
