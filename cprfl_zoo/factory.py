"""``create_cprfl``: the one-call way to put a CPRFL head on a timm backbone."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import timm
import torch

from .model import CPRFL

_logger = logging.getLogger(__name__)

__all__ = ["create_cprfl"]

_HUB_PREFIXES = ("hf-hub:", "local-dir:")


def create_cprfl(
    model_name: str,
    class_names: Sequence[str] | None = None,
    text_embeddings: torch.Tensor | None = None,
    *,
    pretrained_backbone: bool = True,
    text_encoder: str | Callable[[list[str]], torch.Tensor] | None = None,
    text_pretrained: str | os.PathLike[str] | None = None,
    templates: str | Sequence[str] | None = None,
    normalize_embeddings: bool | None = None,
    embed_cache_dir: str | os.PathLike[str] | None = None,
    trainable_text_encoder: bool = False,
    **kwargs: Any,
) -> CPRFL:
    """Create a CPRFL model on a timm backbone, or load a saved one.

    Args:
        model_name: A timm backbone name (``"resnet101"``, ``"vit_base_patch16_224.augreg_in21k"``),
            a registered CPRFL entrypoint (``"cprfl_resnet101"``), or a saved model
            (``"hf-hub:user/repo"``, ``"hf-hub:user/repo@revision"``, ``"local-dir:/path"``).
        class_names: Class names in logit order (not used when loading a saved model).
        text_embeddings: Class text embeddings (C, m). When omitted, they are computed from the
            class names with CLIP's text encoder and cached on disk.
        pretrained_backbone: Load timm's pretrained weights for the backbone (ignored when
            loading a saved model, whose file holds every weight).
        text_encoder: What computes the class embeddings when ``text_embeddings`` is omitted:
            an open_clip model name (default ``"RN50-quickgelu"``, as the official code), an
            ``hf-hub:`` id, a ``local-dir:`` folder, or a callable mapping a list of names to a
            (C, m) tensor (recorded as ``"custom:<qualname>"``, never cached).
        text_pretrained: Pretrained tag or local checkpoint of an open_clip model name
            (default ``"openai"`` where the model has it).
        templates: Prompt template(s) with one ``{}`` (default ``"a photo of a {}."``).
        normalize_embeddings: L2-normalise the embeddings (default: only when several templates
            are averaged).
        embed_cache_dir: Folder of the embedding cache (default under ``$CPRFL_ZOO_CACHE``, else
            ``$XDG_CACHE_HOME/cprfl_zoo``, else ``~/.cache/cprfl_zoo``).
        trainable_text_encoder: Keep CLIP's text tower in the model and fine-tune it,
            re-encoding the prompts on every training step, as the official code does (frozen,
            cached embeddings are the default).
        **kwargs: Head arguments of :class:`~cprfl_zoo.model.CPRFL` (``dim``, ``drop_rate``...);
            anything else is passed to ``timm.create_model`` for the backbone (``img_size=448``).

    Returns:
        The model, in training mode as timm returns models.

    Raises:
        ValueError: For an unknown backbone name, bad class names or embeddings.
    """
    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"model_name must be a non-empty string, got {model_name!r}")
    text_kwargs = {
        "text_encoder": text_encoder,
        "text_pretrained": text_pretrained,
        "templates": templates,
        "normalize_embeddings": normalize_embeddings,
        "embed_cache_dir": embed_cache_dir,
    }
    kwargs.update({k: v for k, v in text_kwargs.items() if v is not None})
    if trainable_text_encoder:
        kwargs["trainable_text_encoder"] = True
    if model_name.startswith(_HUB_PREFIXES):
        if class_names is not None or text_embeddings is not None:
            raise ValueError(
                f"{model_name} is a saved model with its own classes; load it, then call "
                "model.set_classes(names, embeddings) to change them"
            )
        from .hub import load_pretrained  # checks config.json and names a broken weights file

        return load_pretrained(model_name, **kwargs)
    if class_names is None:
        raise ValueError("class_names is required to create a CPRFL model")
    arch, backbone = model_name, None
    if not (model_name.startswith("cprfl") and timm.is_model(model_name.split(".", 1)[0])):
        arch, backbone = "cprfl", model_name
    if backbone is not None:
        kwargs["backbone"] = backbone
    return timm.create_model(
        arch,
        class_names=class_names,
        text_embeddings=text_embeddings,
        pretrained_backbone=pretrained_backbone,
        **kwargs,
    )
