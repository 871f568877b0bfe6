"""An inference-only CPRFL for a fixed label set, with the image-independent work done once.

In eval mode everything on the prompt side of the VSI depends only on the class embeddings: the
prompts P = PI(W), norm1(P), the prompts' queries, keys and values, and even the attention of
the prompts to the prompts (the last C columns of each prompt row). :class:`DeployedCPRFL`
computes all of it once and keeps it as buffers. Per image it computes the backbone, φ, norm1 and
keys/values of the image's v tokens, attention scores of the C prompt queries against those v
keys, merged with the stored prompt-to-prompt part by its log-sum-exp, then proj, norm2, the FFN's
first layer and the classifier.

The split softmax is exact: for a prompt row with scores s over the v image tokens and t over the
C prompts, softmax([s, t]) · [V; V_P] = (Σ e^(s-m) V + e^(L-m) O) / (Σ e^(s-m) + e^(L-m)), with
L = logsumexp(t), O = softmax(t) · V_P and m any shift. The FFN's last linear layer and the
classifier are folded as well: p_i · (W₂ h + b₂) = (W₂ᵀ p_i) · h + b₂ · p_i. So an image costs
O(C·v) attention instead of O(C·(v + C)), and no per-class work is repeated across images.
The classifier vectors and biases come from the model's own
:meth:`~cprfl_zoo.model.CPRFL.classifier_weights` (the paper's p_i, the τ-normalised
p_i / |p_i|^τ, or the cosine classifier's s · p_i / |p_i|, with the logit adjustment in the
bias), so the deployed logits follow every head option with one copy of the maths. With the
cosine classifier, P' itself is computed (its norm is needed) and fc2 is not folded.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .backbone import backbone_tokens, check_images, check_tokens
from .head_config import COSINE_EPS

_logger = logging.getLogger(__name__)

__all__ = ["DeployedCPRFL", "deploy_cprfl"]

# Largest prompt-to-prompt score block (elements) computed at once while deploying.
_MAX_BLOCK = 2**25


class DeployedCPRFL(nn.Module):
    """CPRFL for inference on a fixed label set; build it with :meth:`CPRFL.deploy`.

    It gives the logits of the model it was built from in eval mode, with every per-class
    quantity precomputed (see the module docstring). It holds its own copies of the backbone and
    the head's weights, so later changes to the original model do not reach it: to change the
    classes, call ``model.set_classes(...)`` on the original model and ``model.deploy()`` again.
    It is eval-only: ``train()`` raises, and no parameter requires a gradient.

    Attributes:
        class_names: The class names, in logit order.
        num_classes: Their number C.
        pretrained_cfg: The original model's preprocessing config (``input_size``, ``mean``,
            ``std``, ...), as timm's ``resolve_data_config`` reads it.
        thresholds: Per-class decision thresholds on the probabilities (buffer (C,), float32;
            0.5 where the model has none).

    Args:
        model: The CPRFL model to deploy (left unchanged).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        _check_supported(model)
        self.class_names: list[str] = list(model.class_names)
        self.num_classes = len(self.class_names)
        self.in_chans = model.in_chans
        self.pretrained_cfg: dict[str, Any] = copy.deepcopy(dict(model.pretrained_cfg))
        self.default_cfg = self.pretrained_cfg
        self.backbone = copy.deepcopy(model.backbone)
        self.visual_proj = copy.deepcopy(model.visual_proj)
        # The model's own VSI: its norm1, token keys/values, output projection, norm2 and FFN
        # are what run per image; the prompt side below is computed once, by the same module.
        self.vsi = copy.deepcopy(model.vsi)
        # The cosine classifier needs |p'_i|, so P' is computed (fc2 kept); otherwise fc2 is folded.
        self.cosine_classifier = bool(model.head_cfg.cosine_classifier)
        with torch.no_grad():
            buffers = _precompute(model)
        for name, value in buffers.items():
            self.register_buffer(name, value.contiguous())
        device = model.class_embeddings.device
        self.register_buffer("thresholds", model.get_thresholds().to(device))
        self.requires_grad_(False)
        super().train(False)

    def _apply(self, fn: Any, recurse: bool = True) -> DeployedCPRFL:
        # .half() and friends must not round the decision thresholds: they stay float32.
        thresholds = self.thresholds
        super()._apply(fn, recurse)
        self.thresholds = thresholds.to(self.thresholds.device, torch.float32)
        return self

    @property
    def num_heads(self) -> int:
        """Attention heads of the VSI."""
        return self.vsi.attn.num_heads

    @property
    def head_dim(self) -> int:
        """Width of each VSI head."""
        return self.vsi.attn.head_dim

    # ------------------------------------------------------------------ eval only
    def train(self, mode: bool = True) -> DeployedCPRFL:
        """Stay in eval mode; asking for training mode raises.

        Args:
            mode: Must be ``False``.

        Returns:
            The module.

        Raises:
            RuntimeError: If ``mode`` is true.
        """
        if mode:
            raise RuntimeError(
                "DeployedCPRFL is inference-only (its prompt side is precomputed for a fixed "
                "label set); train the original CPRFL model and call model.deploy() again"
            )
        return super().train(False)

    def set_classes(self, *args: Any, **kwargs: Any) -> None:
        """Not available: the prompt side is fixed; see the class docstring.

        Raises:
            RuntimeError: Always.
        """
        raise RuntimeError(
            "a deployed CPRFL has a fixed label set: call set_classes(...) on the original "
            "CPRFL model, then model.deploy() again"
        )

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: torch.Tensor) -> None:
        if not torch.fx._symbolic_trace.is_fx_symbolic_tracing():  # FX gives Proxies, not tensors
            check_images(x, self.in_chans, self.visual_proj.weight.dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Compute the backbone's local tokens, as :meth:`CPRFL.forward_features` does.

        Args:
            x: Images (B, in_chans, H, W).

        Returns:
            Backbone tokens (B, v, d0), d0 = the backbone's ``num_features``.
        """
        self._check_input(x)
        return backbone_tokens(self.backbone, self.backbone.forward_features(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Project the backbone tokens (φ) and score every class with the stored prompt side.

        Args:
            x: Backbone tokens (B, v, d0) from :meth:`forward_features`.

        Returns:
            Logits (B, C).

        Raises:
            ValueError: If ``x`` is not (B, v, d0).
        """
        if not torch.fx._symbolic_trace.is_fx_symbolic_tracing():
            check_tokens(x, self.visual_proj.in_features)
        vsi = self.vsi
        k, v = vsi.attn.token_kv(vsi.norm1(self.visual_proj(x)))  # each (B, h, v, hd)
        scores = self.prompt_queries @ k.transpose(-2, -1)  # (B, h, C, v)
        lse = self.prompt_lse  # (h, C, 1)
        shift = torch.maximum(scores.amax(dim=-1, keepdim=True), lse)
        weights = torch.exp(scores - shift)
        prompt_weight = torch.exp(lse - shift)  # (B, h, C, 1)
        out = weights @ v + prompt_weight * self.prompt_values
        out = out / (weights.sum(dim=-1, keepdim=True) + prompt_weight)  # (B, h, C, hd)
        mlp = vsi.mlp
        hidden = mlp.norm(mlp.act(mlp.fc1(vsi.norm2(vsi.attn.merge_heads(out)))))
        if not self.cosine_classifier:
            return (hidden * self.classifier_weight).sum(dim=-1) + self.classifier_bias
        refined = mlp.fc2(hidden)  # P' (B, C, d); classifier_weight holds s · p_i / |p_i|
        norm = refined.norm(dim=-1).clamp_min(COSINE_EPS)
        return (refined * self.classifier_weight).sum(dim=-1) / norm + self.classifier_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute raw logits; ``torch.sigmoid`` of them are the class probabilities.

        Args:
            x: Images (B, in_chans, H, W).

        Returns:
            Logits (B, C).
        """
        return self.forward_head(self.forward_features(x))

    def extra_repr(self) -> str:
        """Summarise the label set in ``repr``."""
        return f"num_classes={self.num_classes}, num_heads={self.num_heads}"


def deploy_cprfl(model: nn.Module) -> DeployedCPRFL:
    """Build the inference-only module of ``model`` for its current label set.

    Args:
        model: A CPRFL model (any mode; it is left unchanged).

    Returns:
        A :class:`DeployedCPRFL` in eval mode, on the model's device and dtype.
    """
    return DeployedCPRFL(model)


def _check_supported(model: nn.Module) -> None:
    needed = (
        "head_cfg",
        "prompt_init",
        "vsi",
        "visual_proj",
        "get_prompts",
        "get_thresholds",
        "classifier_weights",
    )
    if not all(hasattr(model, name) for name in needed):
        raise TypeError(f"deploy needs a CPRFL model, got {type(model).__name__}")
    mlp = model.vsi.mlp
    if not all(hasattr(mlp, name) for name in ("fc1", "act", "norm", "fc2")):
        raise ValueError(
            f"deploy expects the VSI FFN to be timm's Mlp (fc1, act, norm, fc2), got "
            f"{type(mlp).__name__}"
        )


def _set_training(model: nn.Module, modes: Sequence[tuple[nn.Module, bool]]) -> None:
    for module, mode in modes:
        module.training = mode


@torch.no_grad()
def _precompute(model: nn.Module) -> dict[str, torch.Tensor]:
    """Everything image-independent, computed with the model in eval mode (restored after)."""
    modes = [(m, m.training) for m in model.modules()]
    _set_training(model, [(m, False) for m, _ in modes])
    try:
        prompts = model.get_prompts()  # (C, d); a trainable text tower encodes the names here
        attn = model.vsi.attn
        q, k, v = attn.prompt_qkv(model.vsi.norm1(prompts))  # each (h, C, hd)
        q = q * attn.scale
        h, num_classes = q.shape[0], q.shape[1]
        chunk = max(1, _MAX_BLOCK // (h * num_classes))
        lse, out = [], []
        for start in range(0, num_classes, chunk):
            scores = q[:, start : start + chunk] @ k.transpose(-2, -1)  # (h, c, C)
            lse.append(torch.logsumexp(scores, dim=-1, keepdim=True))
            out.append(torch.softmax(scores, dim=-1) @ v)
        fc2 = model.vsi.mlp.fc2
        weight, bias = model.classifier_weights(prompts.to(fc2.weight.dtype))  # (C, d), (C,)
        if model.head_cfg.cosine_classifier:
            classifier_weight, classifier_bias = weight, bias
        else:
            classifier_weight = weight @ fc2.weight  # (C, hidden): W₂ᵀ w_i
            classifier_bias = bias if fc2.bias is None else weight @ fc2.bias + bias
    finally:
        _set_training(model, modes)
    return {
        "prompt_queries": q,
        "prompt_lse": torch.cat(lse, dim=1),
        "prompt_values": torch.cat(out, dim=1),
        "classifier_weight": classifier_weight,
        "classifier_bias": classifier_bias,
    }
