"""The prompt-initialisation network (cprfl_zoo/prompt_init.py) against its equations."""

from __future__ import annotations

import math

import pytest
import torch

from cprfl_zoo.prompt_init import PromptInit


def _gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU from its definition, x * Phi(x) with the exact normal CDF."""
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def test_default_is_linear_gelu_linear_with_hidden_width_tau_d() -> None:
    torch.manual_seed(0)
    pi = PromptInit(in_dim=6, dim=8)  # tau = 0.5: hidden width 4
    w = torch.randn(5, 6, dtype=torch.float64)
    pi = pi.double()
    fc1, fc2 = pi.net.fc1, pi.net.fc2
    assert (fc1.in_features, fc1.out_features, fc2.out_features) == (6, 4, 8)
    expected = _gelu(w @ fc1.weight.T + fc1.bias) @ fc2.weight.T + fc2.bias
    torch.testing.assert_close(pi(w), expected, rtol=1e-12, atol=1e-12)
    assert not pi.linear and pi.in_dim == 6 and pi.dim == 8


def test_mlp_ratio_sets_the_hidden_width() -> None:
    assert PromptInit(6, 8, mlp_ratio=1.5).net.fc1.out_features == 12
    assert PromptInit(6, 8, mlp_ratio=0.2).net.fc1.out_features == 1  # int(1.6)


def test_linear_variant_is_one_affine_map() -> None:
    torch.manual_seed(1)
    pi = PromptInit(in_dim=6, dim=8, linear=True).double()
    assert isinstance(pi.net, torch.nn.Linear) and pi.linear
    assert sum(p.numel() for p in pi.parameters()) == 6 * 8 + 8
    w = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(pi(w), w @ pi.net.weight.T + pi.net.bias, rtol=1e-12, atol=1e-12)
    # mlp_ratio does not matter for the linear variant, even one that gives no hidden width
    assert isinstance(PromptInit(6, 8, mlp_ratio=0.01, linear=True).net, torch.nn.Linear)


@pytest.mark.parametrize("ratio", [0.1, 0.0, -1.0])
def test_no_hidden_width_is_refused(ratio: float) -> None:
    with pytest.raises(ValueError, match=r"PI hidden width dim\*mlp_ratio must be positive, got"):
        PromptInit(6, 8, mlp_ratio=ratio)  # int(8 * 0.1) = 0


@pytest.mark.parametrize("linear", [False, True])
def test_embedding_width_is_checked(linear: bool) -> None:
    pi = PromptInit(6, 8, linear=linear)
    with pytest.raises(
        ValueError, match="class embeddings have width 5 but the PI network expects 6"
    ):
        pi(torch.zeros(3, 5))
    assert pi(torch.zeros(0, 6)).shape == (0, 8)  # no class: no prompt
