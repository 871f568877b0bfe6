"""Tests for cprfl_zoo.losses.distribution_balanced: the DB loss against the official ResampleLoss
formula (written out here independently), with and without the init-bias fix."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import value_and_grad

from cprfl_zoo.losses import DB_LOSS_PRESETS, UNKNOWN_TARGET, DistributionBalancedLoss

COUNTS = [400.0, 150.0, 60.0, 20.0, 8.0, 3.0]
NUM_SAMPLES = 500


def official_procedure(
    x,
    y,
    counts,
    num_samples,
    *,
    alpha,
    beta,
    mu,
    neg_scale,
    init_bias,
    gamma=2.0,
    balance=2.0,
    fix_init_bias=False,
):
    """The official ResampleLoss forward (rebalance weights, logit_reg, focal), per label.

    Follows the steps of wutong16/DistributionBalancedLoss ``ResampleLoss.forward`` with
    ``reweight_func='rebalance'``: the weight from the labels, the bias added to the logits, the
    negatives' logits and weights scaled, BCE with the weight, ``pt = exp(-BCE)`` without it.
    """
    counts = torch.as_tensor(counts, dtype=x.dtype)
    freq_inv = 1.0 / counts
    repeat_rate = (y * freq_inv).sum(dim=1, keepdim=True)
    pos_weight = freq_inv.unsqueeze(0) / repeat_rate
    weight = torch.sigmoid(beta * (pos_weight - mu)) + alpha
    bias = -torch.log(num_samples / counts - 1) * init_bias
    if not fix_init_bias:
        bias = bias / neg_scale
    logits = x + bias
    logits = logits * (1 - y) * neg_scale + logits * y
    weight = weight / neg_scale * (1 - y) + weight * y
    logpt = -F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    pt = torch.exp(logpt)
    loss = F.binary_cross_entropy_with_logits(logits, y, weight=weight, reduction="none")
    return balance * (1 - pt) ** gamma * loss


def hand_computed_label(z, y, n_i, inv_sum, num_samples, alpha, beta, mu, lam, kappa, fix):
    """One label's DB loss with the math module, from the paper's equations."""
    r = (1 / n_i) / inv_sum
    w = 1 / (1 + math.exp(-beta * (r - mu))) + alpha
    b = -kappa * math.log(num_samples / n_i - 1) / (1 if fix else lam)
    if y == 1:
        zz = z + b
        bce = math.log1p(math.exp(-zz))
    else:
        zz = lam * (z + b)
        bce = math.log1p(math.exp(zz))
        w = w / lam
    pt = math.exp(-bce)
    return 2.0 * (1 - pt) ** 2 * w * bce


def make_batch(shape=(7, 6), seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=dtype) * 3).requires_grad_()
    y = (torch.rand(shape, generator=gen) < 0.35).to(dtype)
    y[0, 5] = 1.0  # the rarest class has a positive
    return x, y


@pytest.mark.parametrize("preset", sorted(DB_LOSS_PRESETS))
@pytest.mark.parametrize("fix", [False, True], ids=["official-bias", "fixed-bias"])
def test_matches_the_official_formula(preset, fix):
    x, y = make_batch()
    y[3] = 0.0  # a sample without positives: weight 1 + alpha in the official code
    params = DB_LOSS_PRESETS[preset]
    loss_fn = DistributionBalancedLoss.from_preset(preset, COUNTS, NUM_SAMPLES, fix_init_bias=fix)
    got, got_grad = value_and_grad(loss_fn, x, y)
    want, want_grad = value_and_grad(
        lambda a, b: official_procedure(
            a, b, COUNTS, NUM_SAMPLES, fix_init_bias=fix, **params
        ).mean(),
        x,
        y,
    )
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-6, atol=1e-8)
    per_label = DistributionBalancedLoss.from_preset(
        preset, COUNTS, NUM_SAMPLES, fix_init_bias=fix, reduction="none"
    )(x, y)
    torch.testing.assert_close(
        per_label,
        official_procedure(x, y, COUNTS, NUM_SAMPLES, fix_init_bias=fix, **params).detach(),
        rtol=1e-6,
        atol=1e-9,
    )


@pytest.mark.parametrize("fix", [False, True])
def test_one_label_by_hand(fix):
    # Sample with classes 1 and 4 present; check a positive (class 4) and a negative (class 0).
    counts = torch.tensor(COUNTS)
    y = torch.zeros(1, 6, dtype=torch.float64)
    y[0, 1] = y[0, 4] = 1.0
    x = torch.tensor([[0.7, -0.3, 1.1, -2.0, -0.4, 0.2]], dtype=torch.float64)
    inv_sum = 1 / COUNTS[1] + 1 / COUNTS[4]
    loss = DistributionBalancedLoss(
        counts, NUM_SAMPLES, mu=0.3, neg_scale=5.0, fix_init_bias=fix, reduction="none"
    )(x, y)
    for cls, label in ((4, 1), (0, 0)):
        want = hand_computed_label(
            x[0, cls].item(),
            label,
            COUNTS[cls],
            inv_sum,
            NUM_SAMPLES,
            0.1,
            10.0,
            0.3,
            5.0,
            0.05,
            fix,
        )
        assert loss[0, cls].item() == pytest.approx(want, rel=1e-6)  # float32 class statistics


def test_bias_fix_multiplies_the_bias_by_neg_scale():
    official = DistributionBalancedLoss(COUNTS, NUM_SAMPLES, neg_scale=5.0)
    fixed = DistributionBalancedLoss(COUNTS, NUM_SAMPLES, neg_scale=5.0, fix_init_bias=True)
    prior = torch.tensor(COUNTS, dtype=torch.float64) / NUM_SAMPLES
    # b = kappa * logit(prior): the fixed form is the paper's; the official divides it by lambda.
    torch.testing.assert_close(fixed.bias.double(), 0.05 * torch.logit(prior), rtol=1e-6, atol=0)
    torch.testing.assert_close(fixed.bias, official.bias * 5.0, rtol=1e-6, atol=0)
    x, y = make_batch()
    assert not torch.allclose(official(x, y), fixed(x, y))


def test_presets_are_the_official_configs():
    assert DB_LOSS_PRESETS["coco-lt"] == {
        "alpha": 0.1,
        "beta": 10.0,
        "mu": 0.2,
        "neg_scale": 2.0,
        "init_bias": 0.05,
    }
    assert DB_LOSS_PRESETS["voc-lt"] == {
        "alpha": 0.1,
        "beta": 10.0,
        "mu": 0.3,
        "neg_scale": 5.0,
        "init_bias": 0.05,
    }
    loss_fn = DistributionBalancedLoss.from_preset("voc-lt", COUNTS, NUM_SAMPLES, mu=0.5)
    assert (loss_fn.mu, loss_fn.neg_scale, loss_fn.focal_gamma, loss_fn.balance_param) == (
        0.5,
        5.0,
        2.0,
        2.0,
    )
    assert loss_fn.reduction == "mean" and loss_fn.fix_init_bias is False
    with pytest.raises(ValueError, match="unknown DB loss preset 'lvis'"):
        DistributionBalancedLoss.from_preset("lvis", COUNTS, NUM_SAMPLES)


@pytest.mark.parametrize("reduction", ["sum", "batchmean", "mean"])
def test_reductions(reduction):
    x, y = make_batch()
    per_label = DistributionBalancedLoss(COUNTS, NUM_SAMPLES, reduction="none")(x, y)
    got = DistributionBalancedLoss(COUNTS, NUM_SAMPLES, reduction=reduction)(x, y)
    want = {"sum": per_label.sum(), "batchmean": per_label.sum() / 7, "mean": per_label.mean()}
    torch.testing.assert_close(got, want[reduction], rtol=1e-12, atol=0)


def test_unknown_labels_drop_out_of_the_loss_and_the_weights():
    x, y = make_batch()
    known = torch.ones_like(y, dtype=torch.bool)
    known[1, 2] = known[4, 0] = False
    y_marked = torch.where(known, y, torch.full_like(y, UNKNOWN_TARGET))
    loss_fn = DistributionBalancedLoss(COUNTS, NUM_SAMPLES, reduction="none")
    by_marker, grad_marker = value_and_grad(loss_fn, x, y_marked)
    by_mask, grad_mask = value_and_grad(lambda a, b: loss_fn(a, b, mask=known), x, y)
    # Reference: the official formula with the unknown labels taken as negatives in the weight
    # sum (they contribute nothing to it: y = 0), then zeroed.
    y_zero = torch.where(known, y, torch.zeros_like(y))
    want, want_grad = value_and_grad(
        lambda a, b: torch.where(
            known, official_procedure(a, b, COUNTS, NUM_SAMPLES, **DB_LOSS_PRESETS["coco-lt"]), 0
        ),
        x,
        y_zero,
    )
    for got, got_grad in ((by_marker, grad_marker), (by_mask, grad_mask)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-6, atol=1e-9)
        assert got[1, 2] == 0 and got_grad[1, 2] == 0
    mean = DistributionBalancedLoss(COUNTS, NUM_SAMPLES)(x, y_marked)
    torch.testing.assert_close(mean, by_marker.sum() / known.sum(), rtol=1e-12, atol=0)


def test_class_weight_multiplies_each_class():
    x, y = make_batch()
    weight = torch.linspace(0.0, 2.0, 6)
    plain = DistributionBalancedLoss(COUNTS, NUM_SAMPLES, reduction="none")(x, y)
    weighted = DistributionBalancedLoss(
        COUNTS, NUM_SAMPLES, reduction="none", class_weight=weight.tolist()
    )(x, y)
    torch.testing.assert_close(weighted, plain * weight.double(), rtol=1e-6, atol=1e-12)


def test_half_precision_and_autocast_compute_in_float32():
    x, y = make_batch(dtype=torch.float32)
    loss_fn = DistributionBalancedLoss(COUNTS, NUM_SAMPLES)
    for dtype in (torch.float16, torch.bfloat16):
        xh = x.detach().to(dtype).requires_grad_()
        got, got_grad = value_and_grad(loss_fn, xh, y)
        want, want_grad = value_and_grad(loss_fn, xh.detach().float().requires_grad_(), y)
        assert got.dtype == torch.float32 and got_grad.dtype == dtype
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(got_grad.float(), want_grad, rtol=1e-2, atol=1e-3)
    layer = torch.nn.Linear(6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x.detach())
        assert logits.dtype == torch.bfloat16
        loss = loss_fn(logits, y)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_extreme_logits_finite(dtype):
    x = torch.tensor([[100.0, -100.0, 30.0, -30.0, 0.0, 6e4]], dtype=dtype).repeat(2, 1)
    x.requires_grad_()
    y = torch.tensor([[1, 1, 0, 0, 1, 0], [0, 0, 1, 1, 0, 1]])
    for fix in (False, True):
        loss = DistributionBalancedLoss(COUNTS, NUM_SAMPLES, fix_init_bias=fix)(x, y)
        (grad,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_state_and_buffers():
    loss_fn = DistributionBalancedLoss(COUNTS, NUM_SAMPLES, class_weight=[1.0] * 6)
    assert loss_fn.state_dict() == {}  # the counts are configuration, rebuilt from the list
    assert loss_fn.to(torch.float64).bias.dtype == torch.float64
    assert "fix_init_bias=False" in repr(loss_fn) and loss_fn.num_classes == 6


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "num_samples", "match"),
    [
        ([3.0, 0.0, 5.0], 10, r"classes \[1\] have \[0.0\]"),
        ([3.0, 10.0, 5.0], 10, r"strictly between 0 and num_samples=10"),
        ([[3.0, 1.0]], 10, "1-D sequence"),
        ([3.0, float("nan")], 10, "must be finite"),
        ([3.0, 1.0], 1, "num_samples must be an int >= 2"),
    ],
)
def test_bad_counts(counts, num_samples, match):
    with pytest.raises(ValueError, match=match):
        DistributionBalancedLoss(counts, num_samples)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"neg_scale": 0.0}, "neg_scale must be"),
        ({"focal_gamma": -1.0}, "focal_gamma must be"),
        ({"beta": float("inf")}, "beta must be finite"),
        ({"reduction": "avg"}, "reduction must be one of"),
        ({"class_weight": [1.0, -1.0, 1, 1, 1, 1]}, "class_weight must be finite and non-neg"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistributionBalancedLoss(COUNTS, NUM_SAMPLES, **kwargs)


def test_bad_shapes():
    loss_fn = DistributionBalancedLoss(COUNTS, NUM_SAMPLES, validate=True)
    with pytest.raises(ValueError, match=r"logits have 5 classes .* built from 6 class counts"):
        loss_fn(torch.zeros(2, 5), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="targets shape"):
        loss_fn(torch.zeros(2, 6), torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"got values in \[2, 2\]"):
        loss_fn(torch.zeros(2, 6), torch.full((2, 6), 2.0))


def test_target_dtypes_give_the_same_loss():
    x, y = make_batch()
    loss_fn = DistributionBalancedLoss(COUNTS, NUM_SAMPLES)
    want = loss_fn(x, y)
    for targets in (y.bool(), y.long(), y.to(torch.uint8), y.half()):
        torch.testing.assert_close(loss_fn(x, targets), want, rtol=0, atol=0)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum", "batchmean"])
def test_empty_batch_gives_zero(reduction):
    x = torch.randn(0, 6, requires_grad=True)
    loss = DistributionBalancedLoss(COUNTS, NUM_SAMPLES, reduction=reduction)(x, torch.zeros(0, 6))
    loss.sum().backward()
    assert x.grad.shape == (0, 6)
    assert loss.shape == ((0, 6) if reduction == "none" else ()) and loss.sum().item() == 0.0
