"""timm registration of CPRFL: the ``cprfl*`` entrypoints and the builder behind them.

``timm.create_model("cprfl_resnet101", class_names=...)``, ``"hf-hub:..."`` and ``"local-dir:..."``
reach :class:`~cprfl_zoo.model.CPRFL` through these entrypoints, which compute the class
embeddings (unless given or loaded) and check saved configs and weights on the way.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._builder import pretrained_cfg_for_features, resolve_pretrained_cfg
from timm.models._features import FeatureGetterNet

from .checkpoint import (
    check_state_dict,
    pretrained_filter,
    read_saved_weights,
    saved_config_name,
)
from .config import CPRFLConfig, check_data_config, split_create_kwargs
from .head_config import upgrade_legacy_args
from .model import CPRFL
from .text import prepare_text_inputs

__all__ = [
    "build_cprfl",
    "cprfl",
    "cprfl_resnet50",
    "cprfl_resnet101",
    "cprfl_vit_base_patch16_224",
]

_SAVED_SOURCES = ("local-dir", "hf-hub")


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


# No CPRFL weights are registered, so num_classes and classifier stay None here (timm would
# drop "classifier" weights of a registered file whose class count differs). A built model's
# pretrained_cfg has its own (see _complete_pretrained_cfg). The generic "cprfl" takes its
# input size from the backbone; (3, 224, 224) is timm's nominal default.
default_cfgs = generate_default_cfgs(
    {
        "cprfl": _cfg(input_size=(3, 224, 224)),
        "cprfl_resnet50": _cfg(
            input_size=(3, 448, 448), pool_size=(14, 14), first_conv="backbone.conv1"
        ),
        "cprfl_resnet101": _cfg(
            input_size=(3, 448, 448), pool_size=(14, 14), first_conv="backbone.conv1"
        ),
        "cprfl_vit_base_patch16_224": _cfg(
            input_size=(3, 224, 224),
            pool_size=(14, 14),
            fixed_input_size=True,
            first_conv="backbone.patch_embed.proj",
        ),
    }
)

_FEATURE_ARGS = ("features_only", "out_indices", "feature_cls", "feature_cfg")


def _has_weight_source(cfg: dict[str, Any]) -> bool:
    return any(cfg.get(k) for k in ("hf_hub_id", "url", "file", "state_dict"))


def build_cprfl(variant: str, pretrained: bool = False, **kwargs: Any) -> CPRFL:
    """The one builder behind every door: ``create_cprfl``, the entrypoints, loading, train.py.

    ``pretrained`` means what it means in timm: ``False`` downloads nothing; ``True`` loads
    the model's own weights where its pretrained config has a source (a saved folder, a Hub
    repository, a registered file), and otherwise the backbone's pretrained weights, with the
    CPRFL head initialised, as ``timm.create_model("resnet50", pretrained=True,
    num_classes=10)`` does. Every keyword is checked before anything is built (see
    :func:`~cprfl_zoo.config.split_create_kwargs`); a saved config is checked by
    :meth:`~cprfl_zoo.config.CPRFLConfig.from_model_args` and its weights by
    :func:`~cprfl_zoo.checkpoint.read_saved_weights` before the model is allocated.

    Args:
        variant: The registered architecture (``"cprfl"``, ``"cprfl_resnet101"``, ...).
        pretrained: Load weights, as above.
        **kwargs: Arguments of :class:`~cprfl_zoo.model.CPRFL`, the text keywords of
            :func:`~cprfl_zoo.create_cprfl`, timm's builder arguments (``pretrained_cfg``,
            ``pretrained_cfg_overlay``, ``cache_dir``), ``verify_checksum``, and the backbone
            options accepted by name (``drop_path_rate``, ...).

    Returns:
        The model, in training mode as timm returns models.

    Raises:
        TypeError: For an unknown keyword, naming the closest valid one.
        ValueError: For a bad argument or saved config, naming the field.
    """
    features = _pop_feature_args(kwargs, variant)
    saved_args = kwargs.pop("pretrained_model_args", None)
    saved_config = None
    if saved_args is not None:  # timm read a config.json and merged its model_args into kwargs
        where = saved_config_name(kwargs.get("pretrained_cfg"))
        saved_config = CPRFLConfig.from_model_args(saved_args, where)
    model_kwargs, text_kwargs, build = split_create_kwargs(kwargs, where=variant)
    legacy = model_kwargs.pop("pretrained_backbone", None)
    if legacy is not None:
        warnings.warn(
            "pretrained_backbone= is deprecated and will be removed in 0.3.0: pretrained=True "
            "loads the backbone's pretrained weights when the model has no weights of its own, "
            "as in timm",
            FutureWarning,
            stacklevel=4,
        )
    verify_checksum = bool(build.pop("verify_checksum", True))
    pretrained_cfg = resolve_pretrained_cfg(
        variant,
        pretrained_cfg=build.pop("pretrained_cfg", None),
        pretrained_cfg_overlay=build.pop("pretrained_cfg_overlay", None),
    ).to_dict(remove_null=False)
    cache_dir = build.pop("cache_dir", None)
    from_saved = pretrained_cfg.get("source") in _SAVED_SOURCES
    has_source = _has_weight_source(pretrained_cfg)
    if saved_args is not None:
        _load_saved_args(model_kwargs, saved_args, pretrained_cfg)
    model_kwargs["pretrained_backbone"] = bool(legacy) or (pretrained and not has_source)
    prepare_text_inputs(model_kwargs, text_kwargs, pretrained=pretrained and has_source)
    weights = None
    if pretrained and from_saved:
        if saved_config is None:  # a saved source names the folder, so timm read its config
            saved_config = CPRFLConfig.from_model_args({}, saved_config_name(pretrained_cfg))
        weights = read_saved_weights(
            pretrained_cfg,
            saved_args or {},
            saved_config,
            cache_dir=cache_dir,
            verify_checksum=verify_checksum,
        )
    model = build_model_with_cfg(
        CPRFL,
        variant,
        pretrained and has_source and not from_saved,
        pretrained_cfg=pretrained_cfg,
        pretrained_strict=True,
        pretrained_filter_fn=pretrained_filter,
        **({"cache_dir": cache_dir} if cache_dir is not None else {}),
        **model_kwargs,
    )
    if weights is not None:
        state = weights.load()
        check_state_dict(state, model, weights.where)
        weights.verify_checksum()
        model.load_state_dict(state, strict=True)
    _complete_pretrained_cfg(model, variant, from_backbone=not has_source)
    if features is not None:
        return _feature_getter(model, features)
    return model


def _feature_getter(model: CPRFL, feature_cfg: dict[str, Any]) -> FeatureGetterNet:
    """Wrap a built model as timm's builder does for ``features_only=True`` (getter kind)."""
    wrapper = FeatureGetterNet(model, **feature_cfg)
    wrapper.in_chans = model.in_chans
    wrapper._traits = dict(model._traits)
    wrapper.pretrained_cfg = pretrained_cfg_for_features(model.pretrained_cfg)
    wrapper.default_cfg = wrapper.pretrained_cfg
    return wrapper


def _pop_feature_args(kwargs: dict[str, Any], variant: str) -> dict[str, Any] | None:
    """Timm's ``features_only`` arguments, for its feature wrapper over the backbone's features.

    CPRFL adds nothing to the backbone's feature maps, so ``features_only=True`` gives timm's
    ``FeatureGetterNet`` over :meth:`~cprfl_zoo.model.CPRFL.forward_intermediates` (the
    backbone's), with the head pruned. timm's other wrappers walk the model's module tree,
    which the backbone's modules are nested in, so only ``feature_cls="getter"`` is offered.
    """
    args = {k: kwargs.pop(k) for k in _FEATURE_ARGS if k in kwargs}
    if not args.pop("features_only", False):
        if args:
            raise TypeError(f"{variant}() got {sorted(args)} without features_only=True")
        return None
    feature_cfg = dict(args.pop("feature_cfg", None) or {})
    feature_cls = args.pop("feature_cls", feature_cfg.pop("feature_cls", "getter"))
    if feature_cls != "getter":
        raise ValueError(
            f"{variant}(features_only=True, feature_cls={feature_cls!r}): a CPRFL model gives "
            "its backbone's features through forward_intermediates, so only "
            "feature_cls='getter' applies; for timm's other wrappers create the backbone "
            "itself with timm.create_model(<backbone>, features_only=True)"
        )
    feature_cfg["out_indices"] = args.pop("out_indices", (0, 1, 2, 3, 4))  # timm's default
    if "num_classes" not in kwargs and "class_names" not in kwargs:
        kwargs["num_classes"] = 0  # the head is pruned: no classes are needed
    return feature_cfg


def _complete_pretrained_cfg(model: CPRFL, variant: str, *, from_backbone: bool) -> None:
    """Fill the model's ``pretrained_cfg`` with what timm's tools read, from the built model.

    ``num_classes`` and ``classifier`` (the PI layer that outputs the classifier vectors) are
    the model's; ``first_conv``, ``fixed_input_size`` and, for the generic ``cprfl`` or a given
    ``img_size``, ``input_size`` and the preprocessing are the backbone's (a registered variant
    keeps its own size); the channels follow ``in_chans``; ``pool_size`` is the backbone's
    token grid at ``input_size``.
    """
    cfg = dict(model.pretrained_cfg)
    if from_backbone:
        own_size = variant == "cprfl" or model.config.img_size is not None
        for key, value in model.backbone_data_config().items():
            if cfg.get(key) is None or key == "fixed_input_size" or own_size:
                cfg[key] = value
    size = cfg.get("input_size")
    if size is not None:
        cfg["input_size"] = (model.in_chans, *tuple(size)[1:])
        for key in ("mean", "std"):  # one value per channel; other counts get the average
            values = cfg.get(key)
            if values is not None and len(values) != model.in_chans:
                cfg[key] = (sum(values) / len(values),) * model.in_chans
        grid = _token_grid(model, cfg["input_size"][1:])
        if grid is not None:
            cfg["pool_size"] = grid
    if model._traits.get("first_conv") is not None:
        cfg["first_conv"] = model._traits["first_conv"]
    if "fixed_input_size" in model._traits:
        cfg["fixed_input_size"] = bool(model._traits["fixed_input_size"])
    cfg["num_classes"] = model.num_classes
    linear = isinstance(model.prompt_init.net, torch.nn.Linear)
    cfg["classifier"] = "prompt_init.net" if linear else "prompt_init.net.fc2"
    model.pretrained_cfg = model.default_cfg = cfg


def _token_grid(model: CPRFL, size: tuple[int, ...]) -> tuple[int, int] | None:
    """The backbone's final feature grid at an input size: its last ``reduction``."""
    info = model.feature_info
    reduction = info[-1].get("reduction") if info else None
    if not isinstance(reduction, int) or reduction <= 0 or len(size) != 2:
        return None
    return (math.ceil(size[0] / reduction), math.ceil(size[1] / reduction))


def _load_saved_args(
    model_kwargs: dict[str, Any], saved: dict[str, Any], pretrained_cfg: dict[str, Any]
) -> None:
    """Check a saved ``model_args`` (which timm merged into the arguments) and its data config."""
    where = saved_config_name(pretrained_cfg)
    check_data_config(pretrained_cfg, f"{where}: pretrained_cfg")
    _upgrade_saved_args(model_kwargs, saved)
    text_cfg = model_kwargs.get("text_encoder_cfg")
    if text_cfg is not None and text_cfg is saved.get("text_encoder_cfg"):
        from .config import upgrade_text_encoder_cfg

        model_kwargs["text_encoder_cfg"] = upgrade_text_encoder_cfg(text_cfg)


@register_model
def cprfl(pretrained: bool = False, **kwargs: Any) -> CPRFL:
    """CPRFL on any timm backbone, given as ``backbone="<timm model name>"``."""
    if "backbone" not in kwargs:
        raise ValueError("the generic 'cprfl' model needs backbone='<timm model name>'")
    return build_cprfl("cprfl", pretrained=pretrained, **kwargs)


@register_model
def cprfl_resnet50(pretrained: bool = False, **kwargs: Any) -> CPRFL:
    """CPRFL on ResNet-50 at 448 px."""
    kwargs.setdefault("backbone", "resnet50")
    return build_cprfl("cprfl_resnet50", pretrained=pretrained, **kwargs)


@register_model
def cprfl_resnet101(pretrained: bool = False, **kwargs: Any) -> CPRFL:
    """CPRFL on ResNet-101 at 448 px, the paper's setting."""
    kwargs.setdefault("backbone", "resnet101")
    return build_cprfl("cprfl_resnet101", pretrained=pretrained, **kwargs)


@register_model
def cprfl_vit_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> CPRFL:
    """CPRFL on ViT-B/16."""
    kwargs.setdefault("backbone", "vit_base_patch16_224")
    return build_cprfl("cprfl_vit_base_patch16_224", pretrained=pretrained, **kwargs)


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
