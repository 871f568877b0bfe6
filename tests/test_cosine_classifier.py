"""The opt-in cosine classifier of CPRFL (``cosine_classifier=True``, issue 10)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_cprfl

from cprfl_zoo import create_cprfl

NAMES = ["cat", "dog", "fox", "owl"]


def _model(**kwargs) -> torch.nn.Module:
    return tiny_cprfl(NAMES, text_dim=12, **kwargs)


def test_default_model_is_the_papers_dot_product():
    model = _model()
    assert model.model_args["cosine_classifier"] is False
    assert not any("logit_" in n for n, _ in model.named_parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.forward_features(x)
        refined = model.forward_refined(tokens)
        expected = torch.einsum("bcd,cd->bc", refined, model.get_prompts())
        torch.testing.assert_close(model(x), expected)


def test_cosine_logits_match_the_formula():
    model = _model(cosine_classifier=True)
    assert float(model.logit_scale.detach().exp()) == pytest.approx(10.0)
    assert float(model.logit_bias.detach()) == 0.0
    with torch.no_grad():
        model.logit_scale.fill_(math.log(3.0))
        model.logit_bias.fill_(-0.5)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        refined = model.forward_refined(model.forward_features(x))
        prompts = model.get_prompts()
        cos = (refined / refined.norm(dim=-1, keepdim=True)) @ (
            prompts / prompts.norm(dim=-1, keepdim=True)
        ).T
        expected = 3.0 * torch.diagonal(cos, dim1=-2, dim2=-1) - 0.5
        logits = model(x)
    # cos[b] is (C, C) for image b; its diagonal pairs p'_i with p_i.
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert logits.abs().max() <= 3.5 + 1e-5  # bounded by s + |b|


def test_cosine_scale_and_bias_learn():
    model = _model(cosine_classifier=True).train()
    loss = F.binary_cross_entropy_with_logits(
        model(torch.randn(2, 3, 32, 32)), torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]])
    )
    loss.backward()
    assert model.logit_scale.grad is not None and model.logit_bias.grad is not None
    assert float(model.logit_bias.grad.abs()) > 0


def test_cosine_option_round_trips_through_save_and_load(tmp_path):
    model = _model(cosine_classifier=True)
    with torch.no_grad():
        model.logit_scale.fill_(1.7)
        model.logit_bias.fill_(0.3)
    model.save_pretrained(tmp_path / "m")
    loaded = create_cprfl(f"local-dir:{tmp_path / 'm'}").eval()
    assert loaded.cosine_classifier and loaded.model_args["cosine_classifier"] is True
    assert float(loaded.logit_scale.detach()) == pytest.approx(1.7)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_deploy_supports_the_cosine_classifier():
    model = _model(cosine_classifier=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.deploy()(x), model(x), rtol=1e-5, atol=1e-5)
