"""Class lists: the one check of class names (and their text embeddings) used everywhere.

A leaf module (it imports nothing from the package), so the model, the text encoders, the
hub loader and the converter can all share it without import circles.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["validate_class_inputs"]


def validate_class_inputs(
    class_names: Sequence[str], text_embeddings: torch.Tensor | None = None
) -> list[str]:
    """Check class names (and their embeddings) and return the names as a list.

    Args:
        class_names: The class names, in logit order.
        text_embeddings: Optional (C, m) embeddings, one row per name.

    Returns:
        The names as a list.

    Raises:
        ValueError: On empty, duplicate or non-string names, or embeddings of the wrong shape.
        TypeError: If ``class_names`` is a bare string or embeddings are not a tensor.
    """
    if isinstance(class_names, (str, bytes, bytearray)) or not isinstance(class_names, Sequence):
        raise TypeError(
            f"class_names must be a sequence of strings, got {type(class_names).__name__}"
        )
    names = list(class_names)
    if not names:
        raise ValueError("class_names is empty: CPRFL needs at least one class")
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise ValueError(f"class_names[{i}] is {type(name).__name__} {name!r}, not a string")
        if not name.strip():
            raise ValueError(f"class_names[{i}] is an empty or blank string")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ValueError(
                f"duplicate class name {name!r} at positions {seen[name]} and {i}; "
                "class names must be unique"
            )
        seen[name] = i
    if text_embeddings is not None:
        if not isinstance(text_embeddings, torch.Tensor):
            raise TypeError(
                f"text_embeddings must be a torch.Tensor, got {type(text_embeddings).__name__}"
            )
        if text_embeddings.is_complex():
            raise TypeError(
                f"text_embeddings must be a real (float) tensor, got dtype {text_embeddings.dtype}"
            )
        if text_embeddings.is_meta:
            raise ValueError(
                "text_embeddings are on the meta device and hold no values; pass a tensor with "
                "values (on the CPU or an accelerator)"
            )
        if text_embeddings.ndim != 2:
            raise ValueError(
                f"text_embeddings must have shape (num_classes, text_dim), got "
                f"{tuple(text_embeddings.shape)}"
            )
        if text_embeddings.shape[0] != len(names):
            raise ValueError(
                f"text_embeddings has {text_embeddings.shape[0]} rows but there are "
                f"{len(names)} class names; expected one embedding per class"
            )
        if text_embeddings.shape[1] == 0:
            raise ValueError(
                f"text_embeddings have width 0 (shape {tuple(text_embeddings.shape)}); expected "
                "(num_classes, text_dim) with text_dim >= 1"
            )
        # The model stores float32: a float64 value beyond float32's range becomes inf there.
        if not torch.isfinite(text_embeddings.detach().to(torch.float32)).all():
            raise ValueError(
                "text_embeddings contains NaN or infinite values (checked as float32, the "
                "model's storage type: float64 values beyond about 3.4e38 overflow to inf)"
            )
    return names
