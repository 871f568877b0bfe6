"""Heads the accuracy benchmarks train (a linear baseline and CPRFL's head) and their loss."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cprfl_zoo.backbone import backbone_tokens


class PooledLinear(nn.Module):
    """Global average pool over tokens + Linear: the standard linear baseline."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(tokens.mean(1))


class PooledCosineLinear(nn.Module):
    """Global average pool + a weight-normalised linear classifier with a learned scale.

    ``logit_i = s · cos(f, w_i) + b``: the linear head's counterpart of CPRFL's
    ``cosine_classifier=True`` (one learned scale s, stored as its log and initially
    ``init_scale``, and one learned bias b shared by the classes, as there).
    """

    def __init__(self, in_features: int, num_classes: int, init_scale: float = 10.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's initialisation
        self.logit_scale = nn.Parameter(torch.tensor(float(init_scale)).log())
        self.logit_bias = nn.Parameter(torch.zeros(()))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = F.normalize(tokens.mean(1), dim=-1, eps=1e-6)
        w = F.normalize(self.weight, dim=-1, eps=1e-6).to(x.dtype)
        return self.logit_scale.exp() * (x @ w.T) + self.logit_bias


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


class TopOnFeatures(nn.Module):
    """The top of an EfficientNet backbone and a token head, on the frozen bottom's features.

    The top is ``blocks[start:]``, ``conv_head`` and ``bn2`` (timm's ``forward_features``
    after ``blocks[:start]``); the bottom's parameters are frozen, so only the top and the head
    train. ``backbone`` may be the backbone of a CPRFL model whose head is ``head``: its
    parameters are then named ``backbone.*`` here.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, start: int) -> None:
        super().__init__()
        self.backbone, self.head, self.start = backbone, head, start
        for name, p in backbone.named_parameters():
            top = name.startswith(("conv_head.", "bn2.")) or (
                name.startswith("blocks.") and int(name.split(".")[1]) >= start
            )
            p.requires_grad_(top)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = b.bn2(b.conv_head(b.blocks[self.start :](features)))
        return self.head(backbone_tokens(b, x))


@torch.no_grad()
def bottom_features(backbone: nn.Module, x: torch.Tensor, start: int) -> torch.Tensor:
    """The features of ``x`` after an EfficientNet's stem and ``blocks[:start]`` (eval mode)."""
    backbone.eval()
    return backbone.blocks[:start](backbone.bn1(backbone.conv_stem(x)))


def make_loss(method: str) -> nn.Module:
    """BCE for ``*-BCE`` methods, ASL (γ- = 4, γ+ = 0, clip 0.05) for the others."""
    from cprfl_zoo import AsymmetricLoss

    if method.endswith("BCE"):
        return nn.BCEWithLogitsLoss()
    return AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05, reduction="mean")


def head_spec(width: int, num_heads: int, head_dim: int, mlp_hidden_dim: int) -> dict[str, int]:
    """CPRFL head arguments of ``create_cprfl`` (the one place that spells the width's name)."""
    return {
        "embed_dim": width,
        "num_heads": num_heads,
        "head_dim": head_dim,
        "mlp_hidden_dim": mlp_hidden_dim,
    }


def head_width(head: dict[str, int]) -> int:
    """The head width of a :func:`head_spec` (also as saved in older results files)."""
    return head["dim"] if "dim" in head else head["embed_dim"]


SMALL_HEAD = head_spec(256, 4, 64, 512)  # the CPU benchmarks' head
PAPER_HEAD = head_spec(2048, 8, 512, 2048)  # the paper's head sizes


def make_cprfl(
    backbone_name: str,
    backbone_state: dict[str, torch.Tensor],
    class_names: Sequence[str],
    head: dict[str, int],
    *,
    text_encoder: Callable[[list[str]], torch.Tensor] | None = None,
    text_embeddings: torch.Tensor | None = None,
    **options: Any,
) -> nn.Module:
    """A CPRFL model on a (pretrained) backbone state, embeddings from a callable or given."""
    from cprfl_zoo import create_cprfl

    kwargs: dict[str, Any] = {**head, **options}
    if text_encoder is not None:
        kwargs["text_encoder"] = text_encoder
    model = create_cprfl(
        backbone_name,
        class_names=list(class_names),
        text_embeddings=text_embeddings,
        pretrained=False,
        **kwargs,
    )
    model.backbone.load_state_dict(backbone_state, strict=True)
    return model
