"""``create_cprfl``: the one-call way to put a CPRFL head on a timm backbone."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import timm
import torch
from torch import nn

from .hub import load_pretrained
from .model import CPRFL

_logger = logging.getLogger(__name__)

__all__ = ["create_cprfl"]

_HUB_PREFIXES = ("hf-hub:", "local-dir:")


def create_cprfl(
    model_name: str | nn.Module,
    class_names: Sequence[str] | None = None,
    text_embeddings: torch.Tensor | None = None,
    *,
    pretrained: bool = False,
    pretrained_backbone: bool | None = None,
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
            a registered CPRFL entrypoint (``"cprfl_resnet101"``), a saved model
            (``"hf-hub:user/repo"``, ``"hf-hub:user/repo@revision"``, ``"local-dir:/path"``), or
            a backbone module with timm's contract (``forward_features`` returning unpooled
            features and an integer ``num_features``), used as it is. A model on a module
            cannot be saved with ``save_pretrained``: its config needs a timm name.
        class_names: Class names in logit order (not used when loading a saved model).
        text_embeddings: Class text embeddings (C, m). When omitted, they are computed from the
            class names with CLIP's text encoder and cached on disk.
        pretrained: As in timm: ``False`` (the default) downloads nothing and initialises
            every weight; ``True`` loads the backbone's pretrained weights (timm's default tag,
            or the tag in the name) and initialises the CPRFL head, or, for a registered CPRFL
            entrypoint with weights of its own, loads those. A saved model (``hf-hub:``,
            ``local-dir:``) always loads its own weights. A module backbone keeps its weights.
        pretrained_backbone: Deprecated alias of ``pretrained=True`` for the backbone (until
            0.3.0).
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
        **kwargs: Arguments of :class:`~cprfl_zoo.model.CPRFL`: the head's fields
            (``embed_dim``, ``num_heads``, ``drop_rate``, ...), ``img_size``, ``in_chans``,
            ``thresholds``, and ``backbone_kwargs={...}`` for any other option of the backbone
            (``drop_path_rate`` and a few more of timm's common options are accepted by name).
            An unknown name is a ``TypeError`` naming the closest valid one, raised before
            anything is built.

    Returns:
        The model, in training mode as timm returns models.

    Raises:
        TypeError: For an unknown keyword argument.
        BackboneWeightsError: If ``pretrained=True`` cannot load the backbone's weights (an
            ``OSError`` naming the weights and how to provide them).
        ValueError: For an unknown backbone name, a module without timm's contract, backbone
            arguments given with a module, a ``model_name`` that is neither a string nor a
            module, or bad class names or embeddings.
    """
    if isinstance(model_name, nn.Module):
        return _create_on_module(
            model_name,
            class_names,
            text_embeddings,
            text_kwargs={
                "text_encoder": text_encoder,
                "text_pretrained": text_pretrained,
                "templates": templates,
                "normalize_embeddings": normalize_embeddings,
                "embed_cache_dir": embed_cache_dir,
            },
            trainable_text_encoder=trainable_text_encoder,
            **kwargs,
        )
    if not isinstance(model_name, str):
        raise ValueError(
            "model_name must be a timm model name, a saved model ('hf-hub:...', "
            "'local-dir:...') or a backbone nn.Module with forward_features() and "
            f"num_features, got {type(model_name).__name__}"
        )
    if not model_name:
        raise ValueError("model_name must be a non-empty string, got ''")
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
    if pretrained_backbone is not None:
        kwargs["pretrained_backbone"] = pretrained_backbone
    if model_name.startswith(_HUB_PREFIXES):
        if class_names is not None or text_embeddings is not None:
            raise ValueError(
                f"{model_name} is a saved model with its own classes; load it, then call "
                "model.set_classes(names, embeddings) to change them"
            )
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
        pretrained=pretrained,
        class_names=class_names,
        text_embeddings=text_embeddings,
        **kwargs,
    )


def _create_on_module(
    module: nn.Module,
    class_names: Sequence[str] | None,
    text_embeddings: torch.Tensor | None,
    *,
    text_kwargs: dict[str, Any],
    trainable_text_encoder: bool,
    **kwargs: Any,
) -> CPRFL:
    """Build the generic ``cprfl`` entrypoint on a user's backbone module."""
    if class_names is None:
        raise ValueError("class_names is required to create a CPRFL model")
    if "backbone" in kwargs:
        raise ValueError(
            f"the backbone is given twice: as the module {type(module).__name__} and as "
            f"backbone={kwargs['backbone']!r}"
        )
    for key in ("img_size", "in_chans"):
        if key in kwargs:
            raise ValueError(
                f"{key} builds a timm backbone by name; the module {type(module).__name__} is "
                f"used as it is, so create it with that {key} instead"
            )
    kwargs.update({k: v for k, v in text_kwargs.items() if v is not None})
    if trainable_text_encoder:
        kwargs["trainable_text_encoder"] = True
    return timm.create_model(
        "cprfl",
        backbone=module,
        class_names=class_names,
        text_embeddings=text_embeddings,
        **kwargs,
    )
