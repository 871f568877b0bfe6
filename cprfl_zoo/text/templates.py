"""Prompt templates: checking them, filling them with class names, averaging their features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_TEMPLATES",
    "TEXT_TRANSFORM",
    "build_prompts",
    "check_templates",
    "combine_templates",
]

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
# Recorded in cache keys and configs: how a class name is turned into the text of a prompt.
TEXT_TRANSFORM = "underscores-to-spaces"


def check_templates(templates: str | Sequence[str] | None) -> tuple[str, ...]:
    """Validate prompt templates and return them as a tuple.

    Args:
        templates: One template, several, or ``None`` for :data:`DEFAULT_TEMPLATES`.

    Returns:
        The templates, each with exactly one ``{}``.

    Raises:
        ValueError: For an empty sequence, a non-string, or a template without exactly one
            ``{}`` (or with other braces).
    """
    if templates is None:
        return DEFAULT_TEMPLATES
    if isinstance(templates, str):
        templates = (templates,)
    if not isinstance(templates, Sequence) or not templates:
        raise ValueError(f"templates must be a non-empty sequence of strings, got {templates!r}")
    out = []
    for t in templates:
        if not isinstance(t, str):
            raise ValueError(f"template {t!r} is not a string")
        try:
            ok = t.count("{}") == 1 and bool(t.format("x"))
        except (IndexError, KeyError, ValueError):
            ok = False
        if not ok:
            raise ValueError(
                f"template {t!r} must contain exactly one '{{}}' where the class name goes, and "
                "no other braces"
            )
        out.append(t)
    return tuple(out)


def build_prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Fill every template with every class name, template-major.

    Underscores in the names become spaces, as in the official code (``"traffic_light"`` gives
    ``"a photo of a traffic light."``).

    Args:
        class_names: The C class names.
        templates: The T templates, each with one ``{}``.

    Returns:
        T*C prompts: all names with the first template, then all with the second, ...
    """
    return [t.format(name.replace("_", " ")) for t in templates for name in class_names]


def combine_templates(features: torch.Tensor, num_templates: int, normalize: bool) -> torch.Tensor:
    """Reduce per-prompt features (T*C, m), template-major, to class embeddings (C, m).

    With ``normalize`` every feature is L2-normalised, the templates are averaged and the mean is
    normalised again (open_clip's zero-shot classifier recipe); without it (one template only)
    the raw features are returned.

    Args:
        features: (T*C, m) text features.
        num_templates: T.
        normalize: Whether to L2-normalise (required when T > 1).

    Returns:
        (C, m) class embeddings.
    """
    if not normalize:
        if num_templates != 1:
            raise ValueError("averaging several templates needs normalize=True")
        return features
    feats = F.normalize(features, dim=-1)
    feats = feats.view(num_templates, -1, feats.shape[-1]).mean(0)
    return F.normalize(feats, dim=-1)
