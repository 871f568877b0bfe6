"""Prompt-initialisation (PI) network: class text embeddings to category prompts."""

from __future__ import annotations

import torch
from timm.layers import Mlp
from torch import nn

__all__ = ["PromptInit"]


class PromptInit(nn.Module):
    """Maps class embeddings W (C, m) to category prompts P (C, d).

    The default is the paper's non-linear network ``Linear(m, τ·d) → GELU → Linear(τ·d, d)`` with
    τ = ``mlp_ratio`` = 0.5; ``linear=True`` gives the single ``Linear(m, d)`` variant.

    Args:
        in_dim: Width m of the class embeddings (the text encoder's output width).
        dim: Width d of the prompts.
        mlp_ratio: Hidden width as a fraction of ``dim`` (τ).
        linear: Use one linear layer instead of the two-layer network.
    """

    def __init__(self, in_dim: int, dim: int, mlp_ratio: float = 0.5, linear: bool = False) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.dim = dim
        self.linear = linear
        if linear:
            self.net: nn.Module = nn.Linear(in_dim, dim)
        else:
            hidden = int(dim * mlp_ratio)
            if hidden <= 0:
                raise ValueError(f"PI hidden width dim*mlp_ratio must be positive, got {hidden}")
            self.net = Mlp(in_dim, hidden_features=hidden, out_features=dim, act_layer=nn.GELU)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Compute the category prompts.

        Args:
            embeddings: Class embeddings (C, m).

        Returns:
            Prompts P (C, d).
        """
        if embeddings.shape[-1] != self.in_dim:
            raise ValueError(
                f"class embeddings have width {embeddings.shape[-1]} but the PI network "
                f"expects {self.in_dim}"
            )
        return self.net(embeddings)
