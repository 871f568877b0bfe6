"""Tests for cprfl_zoo.losses.logit_adjustment: post-hoc and loss-time logit adjustment against
Menon et al.'s equations and their binary (multi-label) reading."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import value_and_grad

from cprfl_zoo.losses import (
    UNKNOWN_TARGET,
    AsymmetricLoss,
    LogitAdjustedLoss,
    LogitAdjustment,
    adjust_logits,
    logit_adjustment_offset,
)

PRIORS = [0.5, 0.2, 0.05, 0.01, 0.9]


def make_batch(shape=(6, 5), seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=dtype) * 3).requires_grad_()
    y = (torch.rand(shape, generator=gen) < 0.4).to(dtype)
    return x, y


@pytest.mark.parametrize("tau", [1.0, 0.5, 2.0, 0.0])
def test_offset_is_tau_times_the_log_odds_of_the_prior(tau):
    got = logit_adjustment_offset(PRIORS, tau)
    want = torch.tensor([tau * math.log(p / (1 - p)) for p in PRIORS], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    single = logit_adjustment_offset(PRIORS, tau, multi_label=False)
    torch.testing.assert_close(
        single, torch.tensor([tau * math.log(p) for p in PRIORS], dtype=torch.float64)
    )


def test_multi_label_offset_is_the_two_class_softmax_adjustment():
    # Menon et al. adjust each softmax logit by tau * log(prior). A sigmoid logit f is a
    # two-class softmax over (f, 0) with priors (pi, 1 - pi); adjusting both and taking the
    # probability of "present" must equal the sigmoid of the multi-label adjusted logit.
    x, _ = make_batch()
    x = x.detach()
    pi = torch.tensor(PRIORS, dtype=torch.float64)
    tau = 1.3
    two_class = torch.stack(
        [x - tau * torch.log(pi), torch.zeros_like(x) - tau * torch.log(1 - pi)], dim=-1
    )
    want = torch.softmax(two_class, dim=-1)[..., 0]
    got = torch.sigmoid(adjust_logits(x, PRIORS, tau))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_adjusting_a_bayes_posterior_gives_the_balanced_classifier():
    # Two unit-variance Gaussians at +1 (present, prior pi) and -1 (absent): the posterior
    # log-odds is logit(pi) + 2x and the balanced (equal-prior) log-odds is 2x.
    x = torch.linspace(-3, 3, 13, dtype=torch.float64).unsqueeze(1)
    pi = 0.03
    posterior_logit = math.log(pi / (1 - pi)) + 2 * x
    torch.testing.assert_close(adjust_logits(posterior_logit, [pi]), 2 * x, rtol=0, atol=1e-12)


def test_module_matches_the_function_and_keeps_the_dtype():
    adjust = LogitAdjustment(PRIORS, tau=0.7)
    x, _ = make_batch(dtype=torch.float32)
    x = x.detach()
    torch.testing.assert_close(adjust(x), adjust_logits(x, PRIORS, 0.7), rtol=1e-6, atol=1e-6)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        out = adjust(x.to(dtype))
        assert out.dtype == dtype
        want = x.double() - 0.7 * torch.logit(torch.tensor(PRIORS, dtype=torch.float64))
        tol = {torch.float16: 1e-2, torch.bfloat16: 5e-2, torch.float64: 1e-6}[dtype]
        torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)
    x3 = torch.randn(2, 3, 5)  # extra leading dimensions
    torch.testing.assert_close(adjust(x3), x3 - adjust.offset, rtol=0, atol=0)


def test_module_offset_travels_with_the_state_dict():
    adjust = LogitAdjustment(PRIORS, tau=1.0)
    state = adjust.state_dict()
    assert list(state) == ["offset"] and state["offset"].dtype == torch.float32
    restored = LogitAdjustment(torch.full((5,), 0.5))
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.offset, adjust.offset, rtol=0, atol=0)
    from_offset = LogitAdjustment.from_offset(adjust.offset)
    torch.testing.assert_close(from_offset.offset, adjust.offset, rtol=0, atol=0)
    assert from_offset.num_classes == 5
    assert "num_classes=5, tau=1, multi_label=True" in repr(adjust)


def test_from_counts_uses_the_positive_rate():
    counts = [50, 20, 5, 1, 90]
    adjust = LogitAdjustment.from_counts(counts, 100, tau=1.0)
    torch.testing.assert_close(adjust.offset, LogitAdjustment(PRIORS).offset, rtol=0, atol=0)
    single = LogitAdjustment.from_counts(counts, 100, multi_label=False)
    freqs = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    torch.testing.assert_close(single.offset.double(), torch.log(freqs), rtol=1e-6, atol=1e-6)


def test_tau_zero_is_the_identity():
    x, _ = make_batch(dtype=torch.float32)
    assert torch.equal(LogitAdjustment(PRIORS, tau=0)(x), x)


# --- loss-time form -------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_default_loss_is_bce_on_shifted_logits(tau):
    x, y = make_batch()
    offset = tau * torch.log(torch.tensor(PRIORS, dtype=torch.float64))
    offset = offset - tau * torch.log1p(-torch.tensor(PRIORS, dtype=torch.float64))
    got, got_grad = value_and_grad(LogitAdjustedLoss(PRIORS, tau), x, y)
    want, want_grad = value_and_grad(
        lambda a, b: F.binary_cross_entropy_with_logits(a + offset, b), x, y
    )
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-6, atol=1e-7)


def test_wraps_any_loss_and_passes_extra_arguments():
    x, y = make_batch()
    known = torch.rand(y.shape, generator=torch.Generator().manual_seed(2)) > 0.3
    base = AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05, reduction="mean")
    loss_fn = LogitAdjustedLoss(PRIORS, 1.0, base_loss=base)
    offset = LogitAdjustment(PRIORS).offset.double()
    torch.testing.assert_close(
        loss_fn(x, y, mask=known), base(x + offset, y, mask=known), rtol=1e-6, atol=1e-7
    )
    marked = torch.where(known, y, torch.full_like(y, UNKNOWN_TARGET))
    torch.testing.assert_close(loss_fn(x, marked), base(x + offset, marked), rtol=1e-6, atol=1e-7)
    assert isinstance(loss_fn.base_loss, AsymmetricLoss) and loss_fn.state_dict() == {}


def test_single_label_form_is_menons_loss():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(8, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (8,), generator=gen)
    priors = [0.6, 0.25, 0.1, 0.05]
    loss_fn = LogitAdjustedLoss(
        priors, 1.0, base_loss=torch.nn.CrossEntropyLoss(), multi_label=False
    )
    # Menon et al., eq. (10): -log softmax(f(x) + tau * log pi)_y.
    log_pi = torch.log(torch.tensor(priors, dtype=torch.float64))
    want = -(torch.log_softmax(x + log_pi, dim=1)[torch.arange(8), target]).mean()
    torch.testing.assert_close(loss_fn(x, target), want, rtol=1e-6, atol=1e-7)


def test_loss_under_autocast_and_half_precision():
    x, y = make_batch(dtype=torch.float32)
    loss_fn = LogitAdjustedLoss(PRIORS)
    layer = torch.nn.Linear(5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x.detach())
        loss = loss_fn(logits, y)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()
    xh = torch.tensor([[60000.0, -60000.0, 0.0, 3.0, -3.0]], dtype=torch.float16).requires_grad_()
    loss = loss_fn(xh, torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0]]))
    (grad,) = torch.autograd.grad(loss, xh)
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and grad.dtype == torch.float16


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("priors", "match"),
    [
        ([0.2, 0.0, 0.5], r"classes \[1\] have \[0.0\].*smooth the counts"),
        ([0.2, 1.0], r"strictly between 0 and 1"),
        ([[0.2, 0.3]], "1-D sequence"),
        ([0.2, float("nan")], "must be finite"),
    ],
)
def test_bad_priors(priors, match):
    with pytest.raises(ValueError, match=match):
        LogitAdjustment(priors)
    with pytest.raises(ValueError, match=match):
        LogitAdjustedLoss(priors)


def test_bad_inputs():
    with pytest.raises(ValueError, match="tau must be a finite number"):
        LogitAdjustment(PRIORS, tau=float("inf"))
    with pytest.raises(ValueError, match="priors must be positive"):
        logit_adjustment_offset([0.0, 1.0], multi_label=False)
    with pytest.raises(ValueError, match=r"logits have shape \(2, 4\) but the adjustment has 5"):
        LogitAdjustment(PRIORS)(torch.zeros(2, 4))
    with pytest.raises(TypeError, match="logits must be a floating-point tensor"):
        adjust_logits(torch.zeros(2, 5, dtype=torch.long), PRIORS)
    with pytest.raises(TypeError, match="base_loss must be callable"):
        LogitAdjustedLoss(PRIORS, base_loss="bce")
    with pytest.raises(ValueError, match=r"class_counts must be in \[0, num_samples=10\]"):
        LogitAdjustment.from_counts([3, 11], 10)
    with pytest.raises(TypeError, match="priors must be real numbers"):
        LogitAdjustment(torch.tensor([True, False]))


def test_module_exports_with_a_dynamic_batch():
    # predict / deploy / export carry the module: torch.export keeps the offset as a constant
    adjust = LogitAdjustment(PRIORS, tau=0.5)
    x = torch.randn(4, 5)
    batch = torch.export.Dim("batch")
    program = torch.export.export(adjust, (x,), dynamic_shapes={"logits": {0: batch}})
    for rows in (4, 9):
        x = torch.randn(rows, 5)
        torch.testing.assert_close(program.module()(x), adjust(x), rtol=0, atol=0)


def test_empty_batch_gives_zero():
    x = torch.randn(0, 5, requires_grad=True)
    loss = LogitAdjustedLoss(PRIORS)(x, torch.zeros(0, 5))
    (grad,) = torch.autograd.grad(loss, x)
    assert loss.item() == 0.0 and grad.shape == (0, 5)
    assert LogitAdjustment(PRIORS)(torch.zeros(0, 5)).shape == (0, 5)
