"""Helpers of CPRFL's timm model contract: FX tracing, parameter groups, features, traits.

timm's tooling (``create_feature_extractor``, layer decay, ``features_only``, the data config)
reads a model's hooks. CPRFL delegates them to its backbone, under the ``backbone.`` prefix;
these functions do the renaming and the FX-safe token extraction.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from .backbone import backbone_tokens

__all__ = [
    "backbone_traits",
    "check_fx_leaf",
    "fx_tracing",
    "prefixed_feature_info",
    "prefixed_matcher_fn",
    "traced_tokens",
    "under_backbone",
]


def fx_tracing() -> bool:
    """Whether ``torch.fx`` is tracing: inputs are then Proxies, whose values cannot be checked."""
    return torch.fx._symbolic_trace.is_fx_symbolic_tracing()


def traced_tokens(features: torch.Tensor, width: int, layout: str, prefix: int) -> torch.Tensor:
    """:func:`backbone_tokens` for ``torch.fx``: one graph node, the backbone described by value.

    The layout of ``forward_features`` is decided from its number of dimensions, which a
    symbolic trace does not know; the backbone module cannot be a node argument.
    """
    stand_in = SimpleNamespace(num_features=width, output_fmt=layout, num_prefix_tokens=prefix)
    return backbone_tokens(stand_in, features)  # type: ignore[arg-type]


def check_fx_leaf(x: Any, attention: nn.Module) -> None:
    """Say why a symbolic trace that would step into the prompt attention cannot go on."""
    tracer = getattr(x, "tracer", None)
    if tracer is not None and not tracer.is_leaf_module(attention, "vsi.attn"):
        raise RuntimeError(
            "torch.fx cannot trace into CPRFL's PromptAttention, which picks its attention "
            "kernel from the inputs' device and sizes; trace with timm's settings, which keep "
            "it whole: timm.models.create_feature_extractor(model, return_nodes), or "
            "tracer_kwargs={'leaf_modules': timm.layers.get_notrace_modules(), "
            "'autowrap_functions': timm.layers.get_notrace_functions()}"
        )


def under_backbone(regex: str) -> str:
    """Move a backbone's parameter-group regex under the ``backbone.`` prefix.

    timm's patterns are matched at the start of a name and may be alternations
    (``"^conv1|bn1|maxpool"``); each alternative is anchored after ``backbone.``.
    """
    inner = re.sub(r"(^|\|)\^", r"\1", regex)
    return rf"^backbone\.(?:{inner})"


def prefixed_matcher_fn(fn: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap a backbone's group-matcher function for names under ``backbone.``.

    Args:
        fn: The backbone's matcher, for its own parameter names.

    Returns:
        A matcher for CPRFL's names; the head's parameters sort after every backbone group.
    """

    def match(name: str) -> Any:
        if name.startswith("backbone."):
            return fn(name.removeprefix("backbone."))
        return (float("inf"),)

    return match


def prefixed_feature_info(backbone: nn.Module) -> list[dict[str, Any]]:
    """The backbone's ``feature_info`` with module names under ``backbone.`` (empty if none)."""
    info = getattr(backbone, "feature_info", None)
    if info is None:
        return []
    entries = getattr(info, "info", info)  # a FeatureInfo or timm's list of dicts
    out = []
    for entry in entries:
        entry = dict(entry)
        if isinstance(entry.get("module"), str):
            entry["module"] = f"backbone.{entry['module']}"
        out.append(entry)
    return out


def backbone_traits(backbone: nn.Module) -> dict[str, Any]:
    """Timm's input traits of the model: the backbone's, its first conv under ``backbone.``."""
    traits = dict(getattr(backbone, "_traits", None) or {})
    first_conv = traits.get("first_conv")
    if first_conv is None:
        first_conv = (getattr(backbone, "pretrained_cfg", None) or {}).get("first_conv")
    if isinstance(first_conv, str):
        traits["first_conv"] = f"backbone.{first_conv}"
    elif isinstance(first_conv, (list, tuple)):
        traits["first_conv"] = tuple(f"backbone.{name}" for name in first_conv)
    else:
        traits.pop("first_conv", None)
    traits.pop("in_chans", None)
    traits.pop("num_classes", None)
    return traits
