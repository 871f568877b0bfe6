"""Backbone adapter: any timm model (or a module with timm's contract) as a source of local tokens.

CPRFL needs the backbone's *local* visual tokens F of shape (B, v, d0), not a pooled vector. timm
models return their unpooled features from ``forward_features`` in one of three layouts:

* ``NCHW`` feature maps (ResNet, EfficientNet, ConvNeXt),
* ``NHWC`` feature maps (Swin, MambaOut; the model's ``output_fmt`` says so),
* ``NLC`` token sequences (ViT, DeiT, EVA), which may start with class, distillation or
  register tokens (:func:`num_prefix_tokens`) that are not local tokens and are dropped.

Families whose ``forward_features`` keeps no map of local tokens (PiT, CrossViT, EfficientViM)
are refused when created, with the reason; docs/src/backbones.md lists the families tested.
"""

from __future__ import annotations

import logging
from typing import Any

import timm
import torch
from torch import nn

_logger = logging.getLogger(__name__)

# timm model modules whose forward_features gives no map of num_features-wide local tokens.
_UNSUPPORTED: dict[str, str] = {
    "pit": (
        "its forward_features returns only the class (and distillation) tokens; the local "
        "tokens are pooled away inside the model (PiT)"
    ),
    "crossvit": (
        "its forward_features returns two token branches of different widths whose class "
        "tokens the head concatenates, not one map of num_features-wide local tokens"
    ),
    "efficientvim": (
        "its forward_features returns per-stage hidden-state buffers, (B, C, N) each, that its "
        "head concatenates, not one map of num_features-wide local tokens"
    ),
}
# Modules that these model classes apply after pooling, in forward_head, and that
# pretrained_cfg["classifier"] does not name.
_HEAD_ONLY_MODULES: dict[str, tuple[str, ...]] = {
    "MobileNetV3": ("conv_head", "norm_head"),
    "GhostNet": ("conv_head",),
    "RepGhostNet": ("conv_head",),
    "FasterNet": ("conv_head",),
    "LCNetV2": ("conv_head",),
}
# Model classes that lead their token sequence with class tokens but declare neither
# ``num_prefix_tokens`` nor a ``cls_token`` attribute.
_PREFIX_TOKENS: dict[str, int] = {"CoaT": 1}

__all__ = [
    "BackboneWeightsError",
    "backbone_tokens",
    "check_images",
    "check_tokens",
    "create_backbone",
    "create_backbone_checked",
    "feature_layout",
    "num_prefix_tokens",
]


def create_backbone(
    backbone: str | nn.Module,
    pretrained: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Create a timm backbone without classifier, or check a user-supplied module.

    Args:
        backbone: A timm model name, with optional pretrained tag
            (``"vit_base_patch16_224.augreg_in21k"``), or an ``nn.Module`` that provides
            ``forward_features(x)`` and an integer ``num_features``.
        pretrained: Load timm's pretrained (e.g. ImageNet) weights for a named backbone.
        **kwargs: Extra arguments for ``timm.create_model`` (``img_size=448``...).

    Returns:
        The backbone module.

    Raises:
        ValueError: If the name is not a timm model, or the module lacks the timm contract.
    """
    if isinstance(backbone, nn.Module):
        if kwargs:
            raise ValueError(
                f"backbone kwargs {sorted(kwargs)} can only be used with a timm model name, "
                f"not with a module instance ({type(backbone).__name__})"
            )
        _check_contract(backbone)
        _check_supported(backbone, type(backbone).__name__)
        return backbone
    if not isinstance(backbone, str) or not backbone:
        raise ValueError(f"backbone must be a timm model name or an nn.Module, got {backbone!r}")
    arch = backbone.split(".", 1)[0]
    if not backbone.startswith(("hf-hub:", "local-dir:")) and not timm.is_model(arch):
        close = timm.list_models(f"*{arch[:6]}*")[:5]
        hint = f"; similar names: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown backbone {backbone!r}: not a timm model name{hint}")
    for module, reason in _UNSUPPORTED.items():
        if timm.models.is_model_in_modules(arch, [module]):
            _raise_unsupported(backbone, module, reason)
    if "global_pool" in kwargs:
        model = timm.create_model(backbone, pretrained=pretrained, num_classes=0, **kwargs)
    else:
        model = _create_unpooled(backbone, pretrained, kwargs)
    _check_contract(model)
    _check_supported(model, backbone)
    _freeze_head_only_modules(model)
    return model


def _create_unpooled(name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    """Create a timm model whose ``forward_features`` ends as with ``global_pool=""``.

    The model is built with its own pooling, so that pretrained weights load as they were
    trained (a pooled-feature norm included), then stripped of it. A model that cannot be
    built with its default pooling under ``kwargs`` (ViT with ``class_token=False`` and
    token pooling) is built with ``global_pool=""``.
    """
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
    except AssertionError as default_error:
        try:
            model = timm.create_model(
                name, pretrained=pretrained, num_classes=0, global_pool="", **kwargs
            )
        except Exception:
            raise default_error from None
    _remove_pooling(model)
    return model


def _remove_pooling(model: nn.Module) -> None:
    """Make ``forward_features`` end as it does in a model built with ``global_pool=""``.

    ``reset_classifier(0, "")`` drops attention pooling (ViT ``map`` heads); models that cannot
    run unpooled (EfficientViT, CoaT, distilled DeiT...) keep their pooling, which
    ``forward_features`` does not use. Models that normalise the *pooled* features (``fc_norm``,
    ViT and EVA with ``global_pool="avg"``) get that norm moved to the end of
    ``forward_features`` (``norm``), where a model built with ``global_pool=""`` has it: the
    tokens are normalised, and pretrained ``fc_norm`` weights are kept rather than dropped.
    """
    try:
        model.reset_classifier(0, "")
    except (AssertionError, NotImplementedError, TypeError, ValueError) as e:
        _logger.debug("%s keeps its pooling (%s)", type(model).__name__, e)
    norm, fc_norm = getattr(model, "norm", None), getattr(model, "fc_norm", None)
    if (
        isinstance(norm, nn.Identity)
        and isinstance(fc_norm, nn.Module)
        and next(fc_norm.parameters(), None) is not None
    ):
        model.norm, model.fc_norm = fc_norm, nn.Identity()


def _check_supported(model: nn.Module, name: str) -> None:
    module = type(model).__module__.rsplit(".", 1)[-1]
    if module in _UNSUPPORTED and type(model).__module__.startswith("timm."):
        _raise_unsupported(name, module, _UNSUPPORTED[module])


def _raise_unsupported(name: str, module: str, reason: str) -> None:
    raise ValueError(
        f"backbone {name!r} (timm family {module!r}) cannot be used by CPRFL: {reason}. Choose "
        "a backbone whose forward_features keeps its local tokens; docs/src/backbones.md "
        "lists the families tested"
    )


def _freeze_head_only_modules(model: nn.Module) -> None:
    """Freeze what only ``forward_head`` uses (e.g. ConvNeXt's head norm, MobileNetV3's conv_head).

    timm names the classifier in ``pretrained_cfg["classifier"]``; when it lives inside a head
    module (``"head.fc"``, ``"head.classifier.4"``), the rest of that top-level module
    (pre-logits norm, MLP, conv) is not reached by ``forward_features`` either. The models in
    ``_HEAD_ONLY_MODULES`` apply more layers after pooling. Frozen, these parameters stay in the
    state dict but stay out of the optimiser and of DistributedDataParallel's gradient
    bookkeeping.
    """
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    names = [classifier] if isinstance(classifier, str) else list(classifier or ())
    heads = {name.split(".", 1)[0] for name in names if isinstance(name, str) and "." in name}
    heads.update(_HEAD_ONLY_MODULES.get(type(model).__name__, ()))
    frozen = []
    for head in sorted(heads):
        module = getattr(model, head, None)
        if not isinstance(module, nn.Module):
            continue
        frozen += [f"{head}.{n}" for n, p in module.named_parameters() if p.requires_grad]
        module.requires_grad_(False)
    if frozen:
        _logger.info("backbone head parameters unused by forward_features, frozen: %s", frozen)


def _check_contract(module: nn.Module) -> None:
    if not callable(getattr(module, "forward_features", None)):
        raise ValueError(
            f"backbone {type(module).__name__} has no forward_features(); a CPRFL backbone must "
            "follow timm's contract (forward_features returning unpooled features, num_features)"
        )
    num_features = getattr(module, "num_features", None)
    if not isinstance(num_features, int) or num_features <= 0:
        raise ValueError(
            f"backbone {type(module).__name__} needs a positive integer `num_features` "
            f"(the channel width of forward_features), got {num_features!r}"
        )


def feature_layout(backbone: nn.Module) -> str:
    """Return the declared layout of ``forward_features``: ``"NCHW"``, ``"NHWC"`` or ``"NLC"``.

    Args:
        backbone: A timm backbone.

    Returns:
        The layout name. Models that declare nothing are treated as ``NCHW`` for 4-D outputs
        and ``NLC`` for 3-D outputs.
    """
    fmt = getattr(backbone, "output_fmt", None)
    fmt = getattr(fmt, "value", fmt)
    if isinstance(fmt, str) and fmt.upper() in ("NCHW", "NHWC", "NLC"):
        return fmt.upper()
    return "NCHW"


def num_prefix_tokens(backbone: nn.Module) -> int:
    """Return how many class / distillation / register tokens lead a backbone's token sequence.

    timm's ``num_prefix_tokens`` when the model declares it (ViT: 1, distilled DeiT: 2, ViT with
    4 registers: 5, ViT without class token: 0); otherwise one per ``cls_token`` and
    ``dist_token`` the model holds (VOLO, PiT), and 1 for CoaT.

    Args:
        backbone: A timm backbone.

    Returns:
        The number of leading tokens that are not local (image-position) tokens.
    """
    declared = getattr(backbone, "num_prefix_tokens", None)
    if isinstance(declared, int):
        return declared
    if type(backbone).__name__ in _PREFIX_TOKENS:
        return _PREFIX_TOKENS[type(backbone).__name__]
    return sum(
        isinstance(getattr(backbone, name, None), torch.Tensor)
        for name in ("cls_token", "dist_token")
    )


def backbone_tokens(backbone: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Turn ``forward_features`` output into local tokens of shape (B, v, d0).

    Args:
        backbone: The module that produced ``features``.
        features: Its ``forward_features`` output.

    Returns:
        Tokens (B, v, d0) with prefix (class / register) tokens removed.

    Raises:
        ValueError: If the output shape does not match the backbone's ``num_features``.
    """
    width = backbone.num_features
    if isinstance(features, (list, tuple)):
        features = features[-1]
    if features.ndim == 4:
        layout = feature_layout(backbone)
        if layout == "NHWC" or (features.shape[1] != width and features.shape[-1] == width):
            tokens = features.flatten(1, 2)
        else:
            tokens = features.flatten(2).transpose(1, 2)
    elif features.ndim == 3:
        prefix = num_prefix_tokens(backbone)
        tokens = features[:, prefix:] if prefix else features
    else:
        raise ValueError(
            f"backbone {type(backbone).__name__}.forward_features returned shape "
            f"{tuple(features.shape)}; expected a 4-D feature map or a 3-D token sequence"
        )
    if tokens.shape[-1] != width:
        raise ValueError(
            f"backbone {type(backbone).__name__} declares num_features={width} but "
            f"forward_features gave features of shape {tuple(features.shape)}"
        )
    if tokens.shape[1] == 0:
        raise ValueError(f"backbone {type(backbone).__name__} produced no local tokens")
    return tokens


def check_images(x: torch.Tensor, in_chans: int, weight_dtype: torch.dtype) -> None:
    """Check a batch of images by type, dtype and shape only (no tensor value is read).

    Args:
        x: The images given to the model.
        in_chans: The number of channels the model expects.
        weight_dtype: The dtype of the model's weights; other float dtypes need autocast.

    Raises:
        TypeError: For a non-tensor, a non-float dtype, or a dtype that differs from the weights'
            outside autocast.
        ValueError: For a shape other than (B, in_chans, H, W) with H, W > 0.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"images must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}; "
            "convert with torch.as_tensor(...) or use timm's transforms"
        )
    if not x.is_floating_point():
        raise TypeError(
            f"images must be a floating-point tensor, got dtype {x.dtype}; timm's transforms "
            "give float32 (for uint8 pixels: x.float() / 255, then normalise with the "
            "model's mean and std)"
        )
    if x.dtype != weight_dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(
            f"images are {x.dtype} but the model's weights are {weight_dtype}; cast them "
            f"with x.to({weight_dtype}) or run under torch.autocast"
        )
    if x.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(
            f"images have {x.shape[1]} channels but the model expects {in_chans} "
            f"(input shape {tuple(x.shape)})"
        )
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"images have an empty spatial size: shape {tuple(x.shape)}")


def check_tokens(x: torch.Tensor, width: int) -> None:
    """Check backbone tokens given to a head by type and shape only (no tensor value is read).

    Args:
        x: The tokens given to ``forward_head``.
        width: The backbone's ``num_features``.

    Raises:
        TypeError: For a non-tensor.
        ValueError: For a shape other than (B, v, width).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"forward_head takes a tensor of backbone tokens, got {type(x).__name__}")
    if x.ndim != 3 or x.shape[-1] != width:
        raise ValueError(
            f"forward_head takes backbone tokens of shape (B, v, {width}) (forward_features "
            f"output; {width} = the backbone's num_features), got {tuple(x.shape)}"
        )


def create_backbone_checked(
    backbone: str | nn.Module, pretrained: bool, backbone_kwargs: dict[str, Any]
) -> nn.Module:
    """:func:`create_backbone`, where a failed weight download names the weights and the fix.

    With ``pretrained`` the download runs in huggingface_hub's offline mode when the Hub cannot
    be reached (:func:`cprfl_zoo.network.offline_unless_reachable`), so a missing file fails at
    once instead of after a minute of retries.

    Args:
        backbone: A timm model name or a module (see :func:`create_backbone`).
        pretrained: Load timm's pretrained weights for a named backbone.
        backbone_kwargs: Extra arguments for ``timm.create_model``.

    Returns:
        The backbone module.

    Raises:
        BackboneWeightsError: If ``pretrained`` weights cannot be loaded.
    """
    if not (pretrained and isinstance(backbone, str)):
        return create_backbone(backbone, pretrained=pretrained, **backbone_kwargs)
    from .network import offline_unless_reachable

    try:
        with offline_unless_reachable():  # a missing file fails at once, not after retries
            return create_backbone(backbone, pretrained=True, **backbone_kwargs)
    except (OSError, RuntimeError) as e:
        raise BackboneWeightsError(backbone, e) from e


class BackboneWeightsError(OSError):
    """The pretrained weights of a named backbone could not be loaded (offline, not cached)."""

    def __init__(self, backbone: str, error: BaseException) -> None:
        cfg = timm.get_pretrained_cfg(backbone) if timm.is_model(backbone.split(".")[0]) else None
        if cfg is not None and cfg.hf_hub_id:
            source = f"hf-hub:{cfg.hf_hub_id} ({cfg.hf_hub_filename or 'model.safetensors'})"
        elif cfg is not None and cfg.url:
            source = cfg.url
        else:
            source = "timm's default weights"
        super().__init__(
            f"pretrained=True could not load the backbone weights of {backbone!r} from {source}: "
            f"{type(error).__name__}: {error}. Offline? Download them once on a connected "
            "machine (they are cached), give a local file with "
            "pretrained_cfg_overlay={'file': PATH} in timm.create_model of the backbone, or use "
            "pretrained=False for a randomly initialised backbone"
        )
        self.backbone = backbone
