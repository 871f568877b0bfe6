"""Tests for cprfl_zoo.losses.asymmetric: ASL against its formula, the reference procedure, and
edge cases."""

from __future__ import annotations

import pytest
import torch
from conftest import value_and_grad

import cprfl_zoo.losses.asymmetric
from cprfl_zoo.losses import UNKNOWN_TARGET, ASLSingleLabel, AsymmetricLoss, asymmetric_loss

REDUCTIONS = ("sum", "mean", "batchmean", "none")
# (gamma_pos, gamma_neg, clip): reference and CPRFL defaults, plain BCE with and without the
# margin, no margin with focusing, non-integer exponents, a wide margin.
SETTINGS = [
    (1.0, 4.0, 0.05),
    (0.0, 4.0, 0.05),
    (0.0, 0.0, 0.0),
    (0.0, 0.0, 0.05),
    (2.0, 3.0, 0.0),
    (1.5, 2.5, 0.1),
    (4.0, 1.0, 0.2),
]


def formula_loss(x, y, gamma_pos, gamma_neg, clip, detach, reduction, weight=None, known=None):
    """The ASL definition written out: p = σ(x), p_m = max(p - m, 0)."""
    p = torch.sigmoid(x)
    p_m = torch.clamp(p - clip, min=0)
    w_pos = (1 - p) ** gamma_pos
    w_neg = p_m**gamma_neg
    if detach:
        w_pos, w_neg = w_pos.detach(), w_neg.detach()
    per_label = -(y * w_pos * torch.log(p) + (1 - y) * w_neg * torch.log(1 - p_m))
    if weight is not None:
        per_label = per_label * weight
    if known is not None:
        per_label = torch.where(known, per_label, torch.zeros_like(per_label))
    if reduction == "none":
        return per_label
    if reduction == "sum":
        return per_label.sum()
    if reduction == "batchmean":
        return per_label.sum() / x.shape[0]
    count = x.numel() if known is None else known.sum().clamp(min=1)
    return per_label.sum() / count


def reference_procedure(x, y, gamma_neg, gamma_pos, clip, eps=1e-8):
    """The reference repository's computation (clamped logs, weight built without gradient)."""
    xs_pos = torch.sigmoid(x)
    xs_neg = 1 - xs_pos
    if clip is not None and clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    loss = y * torch.log(xs_pos.clamp(min=eps)) + (1 - y) * torch.log(xs_neg.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        with torch.no_grad():
            pt = xs_pos * y + xs_neg * (1 - y)
            w = torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
        loss = loss * w
    return -loss.sum()


def make_batch(shape=(6, 9), seed=0, dtype=torch.float64, soft=True):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=dtype) * 3).requires_grad_()
    y = (torch.rand(shape, generator=gen) < 0.4).to(dtype)
    if soft:
        y[0] = torch.rand(shape[1:], generator=gen, dtype=dtype)
    return x, y


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("detach", [True, False], ids=["detached-weight", "full-grad"])
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: "gp{}-gn{}-m{}".format(*s))
def test_values_and_gradients_match_formula(setting, detach, reduction):
    gamma_pos, gamma_neg, clip = setting
    x, y = make_batch()
    loss_fn = AsymmetricLoss(
        gamma_neg=gamma_neg,
        gamma_pos=gamma_pos,
        clip=clip,
        disable_torch_grad_focal_loss=detach,
        reduction=reduction,
    )
    want, want_grad = value_and_grad(
        lambda a, b: formula_loss(a, b, gamma_pos, gamma_neg, clip, detach, reduction), x, y
    )
    # validate=True reads that no label is unknown and skips the marker mask; both paths agree.
    for validate in (False, True):
        loss_fn.validate = validate
        got, got_grad = value_and_grad(loss_fn, x, y)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-6, atol=1e-6)


def test_detached_and_full_gradients_differ():
    x, y = make_batch(soft=False)
    grads = [
        value_and_grad(AsymmetricLoss(disable_torch_grad_focal_loss=d), x, y)[1]
        for d in (True, False)
    ]
    assert (grads[0] - grads[1]).abs().max() > 1e-3


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: "gp{}-gn{}-m{}".format(*s))
def test_matches_reference_procedure_for_hard_targets(setting):
    gamma_pos, gamma_neg, clip = setting
    x, y = make_batch(soft=False)
    got, got_grad = value_and_grad(
        AsymmetricLoss(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip), x, y
    )
    want, want_grad = value_and_grad(
        lambda a, b: reference_procedure(a, b, gamma_neg, gamma_pos, clip), x, y
    )
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-9, atol=1e-9)


def test_reference_signature_and_defaults():
    loss_fn = AsymmetricLoss(4, 1, 0.05, 1e-8, True)
    default = AsymmetricLoss()
    for m in (loss_fn, default):
        assert (m.gamma_neg, m.gamma_pos, m.clip, m.eps) == (4, 1, 0.05, 1e-8)
        assert m.disable_torch_grad_focal_loss is True
        assert m.reduction == "sum"
    # clip=None, as the reference allows, means no margin.
    x, y = make_batch(soft=False)
    torch.testing.assert_close(
        AsymmetricLoss(clip=None)(x, y), AsymmetricLoss(clip=0)(x, y), rtol=0, atol=0
    )


def test_float32_matches_float64():
    x64, y64 = make_batch(shape=(16, 40))
    x32 = x64.detach().float().requires_grad_()
    for loss_fn in (AsymmetricLoss(), AsymmetricLoss(0, 0, 0), AsymmetricLoss(reduction="mean")):
        got, got_grad = value_and_grad(loss_fn, x32, y64.float())
        want, want_grad = value_and_grad(loss_fn, x64, y64)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_grad.double(), want_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("clip", [0.05, 0.0])
@pytest.mark.parametrize("target_value", [0.0, 1.0])
def test_extreme_logits_finite(dtype, clip, target_value):
    x = torch.tensor([[100.0, -100.0, 30.0, -30.0, 0.0, 3e4, -3e4]], dtype=dtype).repeat(3, 1)
    x.requires_grad_()
    y = torch.full(x.shape, target_value)
    for detach in (True, False):
        loss = AsymmetricLoss(clip=clip, disable_torch_grad_focal_loss=detach)(x, y)
        (grad,) = torch.autograd.grad(loss, x)
        assert loss.dtype == torch.float32
        assert torch.isfinite(loss)
        assert torch.isfinite(grad).all()
        assert grad.dtype == dtype
    if dtype == torch.float32 and target_value == 1.0 and clip == 0.05:
        # A confidently wrong positive (x = -100) keeps its full gradient -(1-p)^γ·(1-p) ≈ -1
        # and its loss 100; the reference's log(p.clamp(eps)) would give 18.4 and no gradient.
        loss = AsymmetricLoss(gamma_pos=1)(x[:1], y[:1])
        (grad,) = torch.autograd.grad(loss, x)
        assert grad[0, 1].item() == pytest.approx(-1.0)
        assert loss.item() > 100.0


def test_half_precision_matches_float32():
    x, y = make_batch(shape=(8, 20), dtype=torch.float32)
    for dtype in (torch.float16, torch.bfloat16):
        xh = x.detach().to(dtype).requires_grad_()
        got, got_grad = value_and_grad(AsymmetricLoss(), xh, y)
        want, want_grad = value_and_grad(AsymmetricLoss(), xh.detach().float().requires_grad_(), y)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_grad.float(), want_grad, rtol=1e-2, atol=1e-2)


def test_autocast_computes_in_float32():
    x, y = make_batch(shape=(4, 8), dtype=torch.float32, soft=False)
    layer = torch.nn.Linear(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x)
        assert logits.dtype == torch.bfloat16
        loss = AsymmetricLoss(reduction="mean")(logits, y)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()
    want = AsymmetricLoss(reduction="mean")(logits.detach().float(), y)
    torch.testing.assert_close(loss.detach(), want, rtol=0, atol=0)


def test_target_dtypes_give_the_same_loss():
    x, y = make_batch(soft=False)
    want, want_grad = value_and_grad(AsymmetricLoss(), x, y)
    for targets in (y.bool(), y.long(), y.to(torch.uint8), y.float(), y.half()):
        got, got_grad = value_and_grad(AsymmetricLoss(), x, targets)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_unknown_labels_by_marker_and_by_mask(reduction):
    x, y = make_batch(soft=False)
    known = torch.rand(y.shape, generator=torch.Generator().manual_seed(3)) > 0.3
    y_marked = torch.where(known, y, torch.full_like(y, UNKNOWN_TARGET))
    loss_fn = AsymmetricLoss(reduction=reduction)
    by_marker, grad_marker = value_and_grad(loss_fn, x, y_marked)
    by_mask, grad_mask = value_and_grad(lambda a, b: loss_fn(a, b, mask=known), x, y)
    want, want_grad = value_and_grad(
        lambda a, b: formula_loss(a, b, 1, 4, 0.05, True, reduction, known=known), x, y
    )
    for got, got_grad in ((by_marker, grad_marker), (by_mask, grad_mask)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-9, atol=1e-9)
        assert (got_grad[~known] == 0).all()
    # Integer targets with the marker behave the same.
    by_int, _ = value_and_grad(loss_fn, x, y_marked.long())
    torch.testing.assert_close(by_int, want, rtol=1e-9, atol=1e-9)


def test_mean_over_known_labels_equals_mean_over_the_known_subset():
    x, y = make_batch(soft=False)
    known = torch.zeros_like(y, dtype=torch.bool)
    known[:, :4] = True
    masked = AsymmetricLoss(reduction="mean")(x, y, mask=known)
    subset = AsymmetricLoss(reduction="mean")(x[:, :4], y[:, :4])
    torch.testing.assert_close(masked, subset, rtol=1e-12, atol=1e-12)


def test_broadcast_mask_and_nothing_known():
    x, y = make_batch(soft=False)
    row_mask = torch.tensor([True, False, True, True, False, True]).unsqueeze(1)
    got = AsymmetricLoss()(x, y, mask=row_mask)
    want = AsymmetricLoss()(x[row_mask[:, 0]], y[row_mask[:, 0]])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    loss = AsymmetricLoss(reduction="mean")(x, torch.full_like(y, UNKNOWN_TARGET))
    assert loss.item() == 0.0
    (grad,) = torch.autograd.grad(loss, x)
    assert (grad == 0).all()


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_class_weights(reduction):
    x, y = make_batch()
    weight = torch.linspace(0.0, 2.0, x.shape[1], dtype=torch.float64)
    loss_fn = AsymmetricLoss(reduction=reduction, class_weight=weight.tolist())
    got, got_grad = value_and_grad(loss_fn, x, y)
    want, want_grad = value_and_grad(
        lambda a, b: formula_loss(a, b, 1, 4, 0.05, True, reduction, weight=weight), x, y
    )
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-6, atol=1e-6)
    # The weights are a non-persistent buffer: they follow .to() but stay out of state_dict.
    assert "class_weight" not in loss_fn.state_dict()
    assert loss_fn.to(torch.float64).class_weight is not None


def test_soft_targets_weight_the_two_terms():
    x = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    y_soft = torch.tensor([[0.25, 0.7]], dtype=torch.float64)
    loss_fn = AsymmetricLoss(reduction="none")
    pos = loss_fn(x, torch.ones_like(x))
    neg = loss_fn(x, torch.zeros_like(x))
    torch.testing.assert_close(
        loss_fn(x, y_soft), y_soft * pos + (1 - y_soft) * neg, rtol=1e-12, atol=1e-12
    )


def test_no_state_kept_between_calls():
    loss_fn = AsymmetricLoss()
    x, y = make_batch()
    loss_fn(x, y).backward()
    tensors = [k for k, v in vars(loss_fn).items() if isinstance(v, torch.Tensor)]
    assert tensors == []
    assert all(v is None for v in loss_fn._buffers.values())
    assert loss_fn.state_dict() == {}


def test_no_grad_stays_in_force():
    x, y = make_batch()
    for detach in (True, False):
        loss_fn = AsymmetricLoss(disable_torch_grad_focal_loss=detach)
        with torch.no_grad():
            loss = loss_fn(x, y)
            assert not torch.is_grad_enabled()
        assert not loss.requires_grad
        assert torch.is_grad_enabled()
        loss_fn(x, y)
        assert torch.is_grad_enabled()


def test_torch_compile_matches_eager():
    torch._dynamo.reset()
    x, y = make_batch(shape=(4, 6), dtype=torch.float32)
    mask = torch.ones_like(y, dtype=torch.bool)
    mask[0, 0] = False
    loss_fn = AsymmetricLoss(gamma_pos=0, reduction="mean")
    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    got, got_grad = value_and_grad(lambda a, b: compiled(a, b, mask=mask), x, y)
    want, want_grad = value_and_grad(lambda a, b: loss_fn(a, b, mask=mask), x, y)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-6, atol=1e-6)


def test_functional_form_matches_module():
    x, y = make_batch()
    got = asymmetric_loss(x, y, gamma_pos=0, reduction="batchmean")
    want = AsymmetricLoss(gamma_pos=0, reduction="batchmean")(x, y)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_trailing_dimensions():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    y = (torch.rand(2, 3, 5, generator=gen) > 0.5).double()
    got = AsymmetricLoss(reduction="batchmean", class_weight=[1, 2, 3, 4, 5])(x, y)
    want = formula_loss(x, y, 1, 4, 0.05, True, "sum", weight=torch.arange(1, 6)) / 2
    torch.testing.assert_close(got, want.double(), rtol=1e-9, atol=1e-9)


def test_double_backward_is_refused():
    # The analytic backward is not itself differentiable; asking for it fails loudly.
    x, y = make_batch()
    loss = AsymmetricLoss(reduction="none")(x, y)
    upstream = torch.ones_like(loss, requires_grad=True)
    (grad,) = torch.autograd.grad(loss, x, upstream, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gamma_neg": -1}, "gamma_neg must be"),
        ({"gamma_pos": float("nan")}, "gamma_pos must be"),
        ({"clip": 1.0}, r"clip must be in \[0, 1\)"),
        ({"clip": -0.1}, r"clip must be in \[0, 1\)"),
        ({"eps": -1e-8}, "eps must be"),
        ({"reduction": "avg"}, "reduction must be one of"),
        ({"class_weight": [[1.0, 2.0]]}, "class_weight must be a 1-D"),
        ({"class_weight": [1.0, -2.0]}, "class_weight must be finite and non-negative"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AsymmetricLoss(**kwargs)


@pytest.mark.parametrize("weight", ["abc", [1.0, "x"], object()])
def test_class_weight_of_the_wrong_type_names_it(weight):
    # "abc" used to fail inside torch with "new(): invalid data type 'str'"
    with pytest.raises(TypeError, match="class_weight must be a tensor or a sequence"):
        AsymmetricLoss(class_weight=weight)


@pytest.mark.parametrize("validate", [False, True])
def test_bad_shapes_and_dtypes_always_raise(validate):
    loss_fn = AsymmetricLoss(validate=validate)
    x = torch.randn(3, 4)
    y = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"targets shape \(3, 5\) does not match logits shape"):
        loss_fn(x, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        loss_fn(x[0], y[0])
    with pytest.raises(TypeError, match="logits must be a floating-point tensor"):
        loss_fn(x.long(), y)
    with pytest.raises(TypeError, match="logits and targets must be tensors"):
        loss_fn(x, y.tolist())
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        loss_fn(x, y, mask=torch.ones(3, 4))
    with pytest.raises(ValueError, match=r"mask shape \(2, 4\) does not broadcast"):
        loss_fn(x, y, mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="class_weight has shape"):
        AsymmetricLoss(class_weight=[1.0, 2.0], validate=validate)(x, y)


def test_bad_values_raise_with_validate():
    loss_fn = AsymmetricLoss(validate=True)
    x = torch.randn(3, 4)
    y = torch.zeros(3, 4)
    bad = y.clone()
    bad[2, 3] = 1.5
    with pytest.raises(ValueError, match=r"got values in \[0, 1.5\]"):
        loss_fn(x, bad)
    bad[2, 3] = -2.0
    with pytest.raises(ValueError, match=r"got values in \[-2, 0\]"):
        loss_fn(x, bad)
    bad = y.clone()
    bad[1, 2] = -0.5
    with pytest.raises(ValueError, match=r"1 value\(s\) in \(-1, 0\), e.g. -0.5"):
        loss_fn(x, bad)
    with pytest.raises(ValueError, match="targets contain NaN"):
        loss_fn(x, torch.full((3, 4), float("nan")))
    for value in (float("nan"), float("inf"), float("-inf")):
        x_bad = x.clone()
        x_bad[0, 0] = value
        with pytest.raises(ValueError, match=r"logits contain 1 non-finite value\(s\)"):
            loss_fn(x_bad, y)
    with pytest.raises(ValueError, match=r"got values in \[2, 2\]"):
        asymmetric_loss(x, torch.full((3, 4), 2.0), validate=True)


def test_large_finite_logits_are_not_reported_as_non_finite():
    # Their sum overflows float32; the fallback check must still accept them.
    x = torch.full((2, 4), 3.0e38)
    assert torch.isfinite(AsymmetricLoss(validate=True)(x, torch.zeros(2, 4)))


def test_value_checks_are_opt_in(monkeypatch):
    """By default no value is read (no host sync per step); the loss is the same either way."""
    x = torch.randn(3, 4, requires_grad=True)
    y = torch.tensor([[1, 0, -1, 0], [0, 1, 0, 0], [-1, -1, 1, 0]])
    checked = AsymmetricLoss(reduction="mean", validate=True)(x, y)
    (g_checked,) = torch.autograd.grad(checked, x)
    assert AsymmetricLoss().validate is False and ASLSingleLabel().validate is False
    assert "validate" not in repr(AsymmetricLoss())
    assert "validate=True" in repr(AsymmetricLoss(validate=True))

    def read_values(*args, **kwargs):
        raise AssertionError("a value check ran with validate=False")

    monkeypatch.setattr(cprfl_zoo.losses.asymmetric, "_check_multilabel_values", read_values)
    loss = AsymmetricLoss(reduction="mean")(x, y)
    torch.testing.assert_close(loss, checked)
    torch.testing.assert_close(torch.autograd.grad(loss, x)[0], g_checked)
    torch.testing.assert_close(asymmetric_loss(x, y, reduction="mean"), checked)
    # Out-of-range targets are not caught without validate: a silent wrong value, no error.
    assert torch.isfinite(AsymmetricLoss()(x.detach(), torch.full((3, 4), 1.5)))
    with pytest.raises(AssertionError, match="a value check ran"):
        AsymmetricLoss(validate=True)(x, y)


# ---------------------------------------------------------------- issue 13: empty batches
@pytest.mark.parametrize("shape", [(0, 5), (4, 0), (0, 0), (0, 3, 5)])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum", "batchmean"])
@pytest.mark.parametrize("setting", [{}, {"clip": 0}, {"gamma_pos": 1, "gamma_neg": 2}])
@pytest.mark.parametrize("validate", [False, True])
def test_empty_batch_gives_zero_with_a_gradient_of_the_right_shape(
    shape, reduction, setting, validate
):
    # a filtered last batch: used to crash in aminmax ("cannot compute aminmax over an empty
    # dimension"); the sum over no labels is 0, and so is the gradient (of shape (0, C))
    for targets, mask in (
        (torch.zeros(shape), None),
        (torch.full(shape, float(UNKNOWN_TARGET)), None),
        (torch.zeros(shape, dtype=torch.bool), torch.ones(shape, dtype=torch.bool)),
    ):
        x = torch.randn(shape, requires_grad=True)
        loss = AsymmetricLoss(reduction=reduction, validate=validate, **setting)(x, targets, mask)
        if reduction == "none":
            assert loss.shape == shape
        else:
            assert loss.shape == () and loss.item() == 0.0
        loss.sum().backward()
        assert x.grad is not None and x.grad.shape == shape
    x = torch.randn(shape, requires_grad=True)
    asymmetric_loss(x, torch.zeros(shape), reduction=reduction, validate=validate).sum().backward()
    assert x.grad.shape == shape
