"""timm registration of CPRFL: the ``cprfl*`` entrypoints and the builder behind them.

``timm.create_model("cprfl_resnet101", class_names=...)``, ``"hf-hub:..."`` and ``"local-dir:..."``
reach :class:`~cprfl_zoo.model.CPRFL` through these entrypoints, which compute the class
embeddings (unless given or loaded) and check saved configs and weights on the way.
"""

from __future__ import annotations

import functools
from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .checkpoint import check_saved_model_args, pretrained_filter, saved_config_name
from .head_config import MODEL_ARGS, upgrade_legacy_args
from .model import CPRFL

__all__ = ["cprfl", "cprfl_resnet50", "cprfl_resnet101", "cprfl_vit_base_patch16_224"]

# The CPRFL arguments an entrypoint takes (anything else goes to the backbone): the model's,
# the head record, and the 0.1.0 name of the head width.
_CPRFL_KWARGS = MODEL_ARGS | {"head_cfg", "dim"}


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "num_classes": None,
        "input_size": None,
        "mean": None,
        "std": None,
        "interpolation": None,
        "crop_pct": None,
        "classifier": None,
        "first_conv": None,
        "license": "apache-2.0",
        "paper_ids": "arXiv:2408.08125",
        "paper_name": "Category-Prompt Refined Feature Learning for Long-Tailed Multi-Label "
        "Image Classification",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "cprfl": _cfg(),
        "cprfl_resnet50": _cfg(input_size=(3, 448, 448), first_conv="backbone.conv1"),
        "cprfl_resnet101": _cfg(input_size=(3, 448, 448), first_conv="backbone.conv1"),
        "cprfl_vit_base_patch16_224": _cfg(first_conv="backbone.patch_embed.proj"),
    }
)


def _has_weight_source(cfg: dict[str, Any]) -> bool:
    return any(cfg.get(k) for k in ("hf_hub_id", "url", "file", "state_dict"))


def _create_cprfl(variant: str, pretrained: bool = False, **kwargs: Any) -> CPRFL:
    """Build a CPRFL model through timm's builder, so hub configs and weights load as usual.

    ``pretrained=True`` loads complete CPRFL weights (class embeddings included) from the
    resolved pretrained config; ``pretrained_backbone=True`` only loads the backbone's weights.
    Otherwise the class embeddings are computed (see :func:`cprfl_zoo.text.prepare_text_inputs`)
    unless given; ``text_encoder``, ``text_pretrained``, ``templates``, ``normalize_embeddings``
    and ``embed_cache_dir`` choose how.
    """
    from .text import pop_text_encoder_kwargs, prepare_text_inputs

    text_kwargs = pop_text_encoder_kwargs(kwargs)
    verify_checksum = bool(kwargs.pop("verify_checksum", True))
    build_args = {
        k: kwargs.pop(k)
        for k in ("pretrained_cfg", "pretrained_cfg_overlay", "pretrained_model_args", "cache_dir")
        if k in kwargs
    }
    if "pretrained_model_args" in build_args:  # timm read them from a saved config.json
        saved = build_args["pretrained_model_args"]
        check_saved_model_args(saved, saved_config_name(build_args.get("pretrained_cfg")))
        _upgrade_saved_args(kwargs, saved)
    model_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _CPRFL_KWARGS}
    if kwargs:
        backbone_kwargs = dict(model_kwargs.get("backbone_kwargs") or {})
        backbone_kwargs.update(kwargs)
        model_kwargs["backbone_kwargs"] = backbone_kwargs
    if pretrained:
        model_kwargs["pretrained_backbone"] = False
    prepare_text_inputs(model_kwargs, text_kwargs, pretrained=pretrained)
    model = build_model_with_cfg(
        CPRFL,
        variant,
        pretrained,
        pretrained_strict=True,
        pretrained_filter_fn=functools.partial(
            pretrained_filter,
            cache_dir=build_args.get("cache_dir"),
            verify_checksum=verify_checksum,
        ),
        **build_args,
        **model_kwargs,
    )
    cfg = dict(model.pretrained_cfg)
    if not _has_weight_source(cfg):
        data = model.backbone_data_config()
        for key, value in data.items():
            if cfg.get(key) is None or key == "fixed_input_size":
                cfg[key] = value
        model.pretrained_cfg = model.default_cfg = cfg
    return model


@register_model
def cprfl(pretrained: bool = False, **kwargs: Any) -> CPRFL:
    """CPRFL on any timm backbone, given as ``backbone="<timm model name>"``."""
    if "backbone" not in kwargs:
        raise ValueError("the generic 'cprfl' model needs backbone='<timm model name>'")
    return _create_cprfl("cprfl", pretrained=pretrained, **kwargs)


@register_model
def cprfl_resnet50(pretrained: bool = False, **kwargs: Any) -> CPRFL:
    """CPRFL on ResNet-50 at 448 px."""
    kwargs.setdefault("backbone", "resnet50")
    return _create_cprfl("cprfl_resnet50", pretrained=pretrained, **kwargs)


@register_model
def cprfl_resnet101(pretrained: bool = False, **kwargs: Any) -> CPRFL:
    """CPRFL on ResNet-101 at 448 px, the paper's setting."""
    kwargs.setdefault("backbone", "resnet101")
    return _create_cprfl("cprfl_resnet101", pretrained=pretrained, **kwargs)


@register_model
def cprfl_vit_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> CPRFL:
    """CPRFL on ViT-B/16."""
    kwargs.setdefault("backbone", "vit_base_patch16_224")
    return _create_cprfl("cprfl_vit_base_patch16_224", pretrained=pretrained, **kwargs)


def _upgrade_saved_args(kwargs: dict[str, Any], saved: dict[str, Any]) -> None:
    """Rename, in place, the 0.1.0 head widths that timm copied from a saved config.

    timm merges a saved ``model_args`` into the keyword arguments; a value the caller passed
    is kept (and translated, with a warning, by :class:`~cprfl_zoo.model.CPRFL`).
    """
    if "dim" not in saved:
        return
    upgraded = upgrade_legacy_args(saved, warn=False)
    for key in ("dim", "embed_dim"):
        if key in kwargs and kwargs[key] is saved.get(key):
            del kwargs[key]
    if "dim" not in kwargs:
        for key in ("embed_dim", "text_dim"):
            kwargs.setdefault(key, upgraded[key])
