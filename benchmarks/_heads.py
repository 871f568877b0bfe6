"""Heads the accuracy benchmarks train (a linear baseline and CPRFL's head) and their loss."""

from __future__ import annotations

import torch
from torch import nn

from cprfl_zoo.backbone import backbone_tokens


class PooledLinear(nn.Module):
    """Global average pool over tokens + Linear: the standard linear baseline."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(tokens.mean(1))


class CPRFLOnTokens(nn.Module):
    """A CPRFL model's head (φ, PI, VSI, classifier) applied to cached backbone tokens."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(tokens)


class OnImages(nn.Module):
    """Backbone + token head, for end-to-end fine-tuning."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(backbone_tokens(self.backbone, self.backbone.forward_features(x)))


def make_loss(method: str) -> nn.Module:
    """BCE for ``*-BCE`` methods, ASL (γ- = 4, γ+ = 0, clip 0.05) for the others."""
    from cprfl_zoo import AsymmetricLoss

    if method.endswith("BCE"):
        return nn.BCEWithLogitsLoss()
    return AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05, reduction="mean")
