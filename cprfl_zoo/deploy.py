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
With the opt-in cosine classifier, P' itself is computed (its norm is needed) and the classifier
vectors are the normalised prompts times the learned scale.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import backbone_tokens, check_images, check_tokens
from .head_config import COSINE_EPS

if TYPE_CHECKING:
    from .model import CPRFL

_logger = logging.getLogger(__name__)

__all__ = ["DeployedCPRFL", "deploy_cprfl"]

# Largest prompt-to-prompt score block (elements) computed at once while deploying.
_MAX_BLOCK = 2**25

# Architecture arguments (CPRFL._arch_args) the deploy path handles. Any other option that is
# set (a later head variant) is refused by name rather than deployed with the wrong logits.
_NEUTRAL_OPTIONS = frozenset(
    {
        "backbone",
        "backbone_kwargs",
        "text_dim",
        "embed_dim",
        "num_heads",
        "head_dim",
        "mlp_hidden_dim",
        "qkv_bias",
        "pi_mlp_ratio",
        "pi_linear",
        "detach_classifier_prompts",
        "detach_refined_features",
        "in_chans",
        "img_size",
        "trainable_text_encoder",
        "thresholds",
        "cosine_classifier",
    }
)


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

    def __init__(self, model: CPRFL) -> None:
        super().__init__()
        _check_supported(model)
        vsi = model.vsi
        attn, mlp = vsi.attn, vsi.mlp
        self.class_names: list[str] = list(model.class_names)
        self.num_classes = len(self.class_names)
        self.in_chans = model.in_chans
        self.num_heads = attn.num_heads
        self.head_dim = attn.head_dim
        self.pretrained_cfg: dict[str, Any] = copy.deepcopy(dict(model.pretrained_cfg))
        self.default_cfg = self.pretrained_cfg

        self.backbone = copy.deepcopy(model.backbone)
        self.visual_proj = copy.deepcopy(model.visual_proj)
        self.norm1 = copy.deepcopy(vsi.norm1)
        inner = attn.inner_dim
        kv_bias = attn.qkv.bias is not None
        self.token_kv = nn.Linear(attn.qkv.in_features, 2 * inner, bias=kv_bias)
        self.proj = copy.deepcopy(attn.proj)
        self.norm2 = copy.deepcopy(vsi.norm2)
        self.fc1 = copy.deepcopy(mlp.fc1)
        self.act = copy.deepcopy(mlp.act)
        self.hidden_norm = copy.deepcopy(mlp.norm)
        # The cosine classifier needs |p'_i|, so P' is computed (fc2 kept); otherwise fc2 is folded.
        self.cosine_classifier = bool(getattr(model, "cosine_classifier", False))
        self.fc2 = copy.deepcopy(mlp.fc2) if self.cosine_classifier else None

        params = next(model.parameters())
        with torch.no_grad():
            self.token_kv.weight.copy_(attn.qkv.weight[inner:])
            if kv_bias:
                self.token_kv.bias.copy_(attn.qkv.bias[inner:])
            buffers = _precompute(model)
        for name, value in buffers.items():
            self.register_buffer(name, value.to(params.device, params.dtype).contiguous())
        self.register_buffer("thresholds", model.get_thresholds().to(params.device))
        self.requires_grad_(False)
        super().train(False)

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
        check_tokens(x, self.visual_proj.in_features)
        x = self.visual_proj(x)
        batch, num_tokens = x.shape[0], x.shape[1]
        kv = self.token_kv(self.norm1(x))  # (B, v, 2·inner)
        kv = kv.reshape(batch, num_tokens, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = self.prompt_queries @ kv[0].transpose(-2, -1)  # (B, h, C, v)
        lse = self.prompt_lse  # (h, C, 1)
        shift = torch.maximum(scores.amax(dim=-1, keepdim=True), lse)
        weights = torch.exp(scores - shift)
        prompt_weight = torch.exp(lse - shift)  # (B, h, C, 1)
        out = weights @ kv[1] + prompt_weight * self.prompt_values
        out = out / (weights.sum(dim=-1, keepdim=True) + prompt_weight)  # (B, h, C, hd)
        out = out.transpose(1, 2).flatten(2)  # (B, C, inner)
        hidden = self.hidden_norm(self.act(self.fc1(self.norm2(self.proj(out)))))
        if self.fc2 is None:
            return (hidden * self.classifier_weight).sum(dim=-1) + self.classifier_bias
        refined = self.fc2(hidden)  # P' (B, C, d); classifier_weight holds s · p_i / |p_i|
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


def deploy_cprfl(model: CPRFL) -> DeployedCPRFL:
    """Build the inference-only module of ``model`` for its current label set.

    Args:
        model: A CPRFL model (any mode; it is left unchanged).

    Returns:
        A :class:`DeployedCPRFL` in eval mode, on the model's device and dtype.
    """
    return DeployedCPRFL(model)


def _check_supported(model: nn.Module) -> None:
    # CPRFL itself imports this module, so the check is on what the deploy path reads.
    if not all(
        hasattr(model, name) for name in ("_arch_args", "prompt_init", "vsi", "visual_proj")
    ):
        raise TypeError(f"deploy needs a CPRFL model, got {type(model).__name__}")
    for option, value in getattr(model, "_arch_args", {}).items():
        if option not in _NEUTRAL_OPTIONS and value not in (None, False):
            raise ValueError(
                f"deploying a CPRFL model with {option}={value!r} is not supported: the deploy "
                "path implements the paper's head (dot-product classifier, residual-free VSI)"
            )
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
def _precompute(model: CPRFL) -> dict[str, torch.Tensor]:
    """Everything image-independent, computed with the model in eval mode (restored after)."""
    modes = [(m, m.training) for m in model.modules()]
    _set_training(model, [(m, False) for m, _ in modes])
    try:
        prompts = model.get_prompts()  # (C, d); a trainable text tower encodes the names here
        attn = model.vsi.attn
        h, hd = attn.num_heads, attn.head_dim
        qkv = F.linear(model.vsi.norm1(prompts), attn.qkv.weight, attn.qkv.bias)  # (C, 3·inner)
        q, k, v = qkv.reshape(-1, 3, h, hd).permute(1, 2, 0, 3)  # each (h, C, hd)
        q = q * attn.scale
        num_classes = q.shape[1]
        chunk = max(1, _MAX_BLOCK // (h * num_classes))
        lse, out = [], []
        for start in range(0, num_classes, chunk):
            scores = q[:, start : start + chunk] @ k.transpose(-2, -1)  # (h, c, C)
            lse.append(torch.logsumexp(scores, dim=-1, keepdim=True))
            out.append(torch.softmax(scores, dim=-1) @ v)
        fc2 = model.vsi.mlp.fc2
        if getattr(model, "cosine_classifier", False):
            norm = prompts.norm(dim=-1, keepdim=True).clamp_min(COSINE_EPS)
            classifier_weight = model.logit_scale.exp() * prompts / norm  # (C, d)
            classifier_bias = model.logit_bias.expand(num_classes).clone()
        else:
            classifier_weight = prompts @ fc2.weight  # (C, hidden): W₂ᵀ p_i
            if fc2.bias is not None:
                classifier_bias = prompts @ fc2.bias
            else:
                classifier_bias = prompts.new_zeros(num_classes)
    finally:
        _set_training(model, modes)
    return {
        "prompt_queries": q,
        "prompt_lse": torch.cat(lse, dim=1),
        "prompt_values": torch.cat(out, dim=1),
        "classifier_weight": classifier_weight,
        "classifier_bias": classifier_bias,
    }
