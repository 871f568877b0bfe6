"""One description of a CPRFL model: :class:`CPRFLConfig`, and the checks on what enters it.

Every door that builds a model (``create_cprfl``, ``timm.create_model("cprfl_...")``, loading a
saved folder or Hub repository, ``examples/train.py``) goes through the one builder in
:mod:`cprfl_zoo.entrypoints`, which sorts its keyword arguments with :func:`split_create_kwargs`
and builds :class:`~cprfl_zoo.model.CPRFL` from a :class:`CPRFLConfig`. ``config.json`` stores
that config as timm's ``model_args`` (:meth:`CPRFLConfig.to_model_args`), and a saved config is
read back through :meth:`CPRFLConfig.from_model_args`, which trusts nothing in it:

* an unknown key is an error naming the closest valid one;
* no field may make timm read a file or download (``checkpoint_path``, ``pretrained*``,
  ``cache_dir``, ...), neither at the top level nor inside ``backbone_kwargs``;
* sizes are bounded, so a config cannot ask for a head of terabytes;
* the preprocessing (``pretrained_cfg``'s ``input_size``, ``mean``, ``std``, ...) is checked by
  :func:`check_data_config`.

The data config lives where timm keeps it, in the model's ``pretrained_cfg``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from .head_config import HEAD_FIELDS, HeadConfig, upgrade_legacy_args

__all__ = [
    "BACKBONE_ARGS",
    "BUILD_ARGS",
    "FORBIDDEN_BACKBONE_ARGS",
    "MAX_CLASSES",
    "MAX_INPUT_SIDE",
    "MODEL_ARGS",
    "TEXT_ARGS",
    "CPRFLConfig",
    "check_backbone_kwargs",
    "check_data_config",
    "check_logit_offsets",
    "closest",
    "split_create_kwargs",
    "upgrade_text_encoder_cfg",
]

MAX_CLASSES = 1_000_000
"""Most classes a config may declare."""
MAX_INPUT_SIDE = 8192
"""Largest image side a saved ``input_size`` may ask for."""

MODEL_ARGS: frozenset[str] = frozenset(HEAD_FIELDS) | {
    "backbone",
    "class_names",
    "text_embeddings",
    "head_cfg",
    "pretrained_backbone",
    "backbone_kwargs",
    "img_size",
    "in_chans",
    "num_classes",
    "global_pool",
    "text_encoder_cfg",
    "trainable_text_encoder",
    "text_tower",
    "thresholds",
    "logit_adjustment",
}
"""The arguments of :class:`~cprfl_zoo.model.CPRFL`."""

TEXT_ARGS: frozenset[str] = frozenset(
    {"text_encoder", "text_pretrained", "templates", "normalize_embeddings", "embed_cache_dir"}
)
"""How the class embeddings are computed when none are given (see :mod:`cprfl_zoo.text`)."""

BUILD_ARGS: frozenset[str] = frozenset(
    {"pretrained_cfg", "pretrained_cfg_overlay", "pretrained_model_args", "cache_dir"}
    | {"verify_checksum"}
)
"""What timm's builder and the loaders take (where the weights come from, how to check them)."""

BACKBONE_ARGS: frozenset[str] = frozenset(
    {"drop_path_rate", "drop_block_rate", "output_stride", "dynamic_img_size", "dynamic_img_pad"}
)
"""timm backbone options accepted by name; any other goes in ``backbone_kwargs={...}``."""

FORBIDDEN_BACKBONE_ARGS: frozenset[str] = frozenset(
    {
        "pretrained",
        "pretrained_cfg",
        "pretrained_cfg_overlay",
        "pretrained_strict",
        "checkpoint_path",
        "cache_dir",
        "features_only",
        "feature_cfg",
        "out_indices",
        "num_classes",
        "global_pool",
    }
)
"""``backbone_kwargs`` that would make timm read a file, download, or change the contract."""

_LEGACY_ARGS = frozenset({"dim"})
_SAVED_KEYS = (
    frozenset(HEAD_FIELDS)
    | {"backbone", "class_names", "backbone_kwargs", "img_size", "in_chans"}
    | {"text_encoder_cfg", "trainable_text_encoder", "thresholds", "logit_adjustment"}
    | {"num_classes", "global_pool"}  # timm writes them beside the model's own arguments
)
_MAX_WIDTH = 1 << 16
_MAX_HEADS = 1024
_INTERPOLATIONS = frozenset({"nearest", "bilinear", "bicubic", "box", "hamming", "lanczos"})
_CROP_MODES = frozenset({"center", "squash", "border"})


def closest(name: str, valid: Iterable[str]) -> str:
    """A ``"; did you mean 'x'?"`` hint for a misspelt name, or ``""``.

    Args:
        name: The unknown name.
        valid: The names that exist.

    Returns:
        The hint, empty when nothing is close.
    """
    match = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def split_create_kwargs(
    kwargs: MutableMapping[str, Any], *, where: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Sort the keyword arguments of a CPRFL build, refusing any name nothing takes.

    Args:
        kwargs: Everything but ``pretrained``; emptied.
        where: The door, for messages (``"create_cprfl"``, ``"cprfl_resnet50"``).

    Returns:
        ``(model_kwargs, text_kwargs, build_kwargs)``: arguments of
        :class:`~cprfl_zoo.model.CPRFL` (backbone options by name folded into
        ``backbone_kwargs``), the text keywords with a value, and the builder's.

    Raises:
        TypeError: For an unknown name, naming the closest valid one, before anything is built.
        ValueError: For a forbidden ``backbone_kwargs`` entry.
    """
    valid = MODEL_ARGS | TEXT_ARGS | BUILD_ARGS | BACKBONE_ARGS | _LEGACY_ARGS
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        name = unknown[0]
        raise TypeError(
            f"{where}() got an unexpected keyword argument {name!r}"
            f"{closest(name, valid - _LEGACY_ARGS)} Options of the backbone itself go in "
            "backbone_kwargs={...}"
        )
    model = {k: kwargs.pop(k) for k in list(kwargs) if k in MODEL_ARGS | _LEGACY_ARGS}
    text = {k: v for k in list(kwargs) if k in TEXT_ARGS if (v := kwargs.pop(k)) is not None}
    build = {k: kwargs.pop(k) for k in list(kwargs) if k in BUILD_ARGS}
    named = {k: kwargs.pop(k) for k in list(kwargs) if k in BACKBONE_ARGS}
    backbone_kwargs = dict(model.get("backbone_kwargs") or {})
    check_backbone_kwargs(backbone_kwargs, "backbone_kwargs")
    for key, value in named.items():
        if key in backbone_kwargs:
            raise ValueError(f"{key} is given twice: by name and in backbone_kwargs")
        backbone_kwargs[key] = value
    if backbone_kwargs or "backbone_kwargs" in model:
        model["backbone_kwargs"] = backbone_kwargs
    return model, text, build


def check_backbone_kwargs(backbone_kwargs: Any, where: str) -> None:
    """Refuse ``backbone_kwargs`` that read files, download or change timm's contract.

    Args:
        backbone_kwargs: The mapping.
        where: Its field, for messages.

    Raises:
        ValueError: If it is not a mapping of string keys, or holds a forbidden key.
    """
    if not isinstance(backbone_kwargs, Mapping):
        raise ValueError(f"{where} must be an object, got {type(backbone_kwargs).__name__}")
    for key in backbone_kwargs:
        if not isinstance(key, str):
            raise ValueError(f"{where} keys must be strings, got {key!r}")
        if key in FORBIDDEN_BACKBONE_ARGS or key.startswith("pretrained"):
            raise ValueError(
                f"{where}.{key} is not accepted: it would make timm read a file, download "
                "weights or change what the backbone returns. Backbone weights come from "
                "pretrained=True; a saved model's from its own model.safetensors"
            )


def _check_int(value: Any, where: str, low: int, high: int) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or not low <= value <= high
    ):
        raise ValueError(f"{where} must be an int in [{low}, {high}], got {value!r}")


def _check_floats(value: Any, where: str, count: int, *, positive: bool) -> None:
    if not isinstance(value, (list, tuple)) or len(value) != count:
        raise ValueError(f"{where} must be a list of {count} numbers, got {value!r}")
    for v in value:
        ok = (
            not isinstance(v, bool)
            and isinstance(v, numbers.Real)
            and math.isfinite(v)
            and (v > 0 if positive else True)
        )
        if not ok:
            kind = "positive finite" if positive else "finite"
            raise ValueError(f"{where} must hold {kind} numbers, got {value!r}")


def check_data_config(cfg: Mapping[str, Any], where: str) -> None:
    """Check the preprocessing fields of a ``pretrained_cfg`` (only those present).

    Args:
        cfg: The ``pretrained_cfg`` (timm's data config keys among others).
        where: The file and field, for messages.

    Raises:
        ValueError: For an ``input_size`` that is not (channels, H, W) with sides in
            [1, :data:`MAX_INPUT_SIDE`], ``mean`` / ``std`` that do not have one finite value
            per channel (``std`` > 0), an unknown ``interpolation`` or ``crop_mode``, or a
            ``crop_pct`` outside (0, 1].
    """
    size = cfg.get("input_size")
    channels = 3
    if size is not None:
        if not isinstance(size, (list, tuple)) or len(size) != 3:
            raise ValueError(f"{where}.input_size must be [channels, height, width], got {size!r}")
        _check_int(size[0], f"{where}.input_size[0] (channels)", 1, 64)
        _check_int(size[1], f"{where}.input_size[1] (height)", 1, MAX_INPUT_SIDE)
        _check_int(size[2], f"{where}.input_size[2] (width)", 1, MAX_INPUT_SIDE)
        channels = int(size[0])
    for key in ("mean", "std"):
        if cfg.get(key) is not None:
            _check_floats(cfg[key], f"{where}.{key}", channels, positive=key == "std")
    interpolation = cfg.get("interpolation")
    if interpolation is not None and interpolation not in _INTERPOLATIONS:
        raise ValueError(
            f"{where}.interpolation must be one of {sorted(_INTERPOLATIONS)}, got {interpolation!r}"
        )
    crop_mode = cfg.get("crop_mode")
    if crop_mode is not None and crop_mode not in _CROP_MODES:
        raise ValueError(
            f"{where}.crop_mode must be one of {sorted(_CROP_MODES)}, got {crop_mode!r}"
        )
    crop_pct = cfg.get("crop_pct")
    if crop_pct is not None and not (
        not isinstance(crop_pct, bool) and isinstance(crop_pct, numbers.Real) and 0 < crop_pct <= 1
    ):
        raise ValueError(f"{where}.crop_pct must be a number in (0, 1], got {crop_pct!r}")


@dataclass(frozen=True)
class CPRFLConfig:
    """Everything that rebuilds a CPRFL architecture (not its weights); ``model_args``.

    Args:
        backbone: timm model name of the backbone, with optional tag.
        class_names: Class names in logit order.
        head: The head's widths, rates and options.
        backbone_kwargs: Extra ``timm.create_model`` arguments of the backbone (checked by
            :func:`check_backbone_kwargs`).
        img_size: Input size for backbones that take one.
        in_chans: Input image channels.
        text_encoder_cfg: What produced the class embeddings (``model_name``, ``pretrained``,
            ``templates``, ``text_dim``, ...), so ``set_classes(names)`` can encode new names.
        trainable_text_encoder: Whether the model holds a CLIP text tower.
        thresholds: Per-class decision thresholds, or ``None``.
        logit_adjustment: Per-class post-hoc logit offsets, subtracted from the logits, or
            ``None`` (see :meth:`~cprfl_zoo.model.CPRFL.set_logit_adjustment`).
    """

    backbone: str
    class_names: tuple[str, ...]
    head: HeadConfig
    backbone_kwargs: Mapping[str, Any] = field(default_factory=dict)
    img_size: int | tuple[int, ...] | None = None
    in_chans: int = 3
    text_encoder_cfg: Mapping[str, Any] = field(default_factory=dict)
    trainable_text_encoder: bool = False
    thresholds: tuple[float, ...] | None = None
    logit_adjustment: tuple[float, ...] | None = None

    def to_model_args(self) -> dict[str, Any]:
        """Return the JSON-serialisable ``model_args`` of ``config.json``.

        Returns:
            The flat dict (head fields at the top level, training-only rates left out).
        """
        head = {k: v for k, v in self.head.to_dict().items() if k not in _TRAINING_ONLY}
        args: dict[str, Any] = {
            "backbone": self.backbone,
            "backbone_kwargs": dict(self.backbone_kwargs),
            **head,
            "in_chans": self.in_chans,
            "trainable_text_encoder": self.trainable_text_encoder,
            "class_names": list(self.class_names),
        }
        if self.img_size is not None:
            args["img_size"] = self.img_size
        if self.text_encoder_cfg:
            args["text_encoder_cfg"] = dict(self.text_encoder_cfg)
        if self.thresholds is not None:
            args["thresholds"] = list(self.thresholds)
        if self.logit_adjustment is not None:
            args["logit_adjustment"] = list(self.logit_adjustment)
        return args

    def replace(self, **changes: Any) -> CPRFLConfig:
        """Return a copy with some fields changed.

        Args:
            **changes: Field values.

        Returns:
            The new config.
        """
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_model_args(cls, model_args: Any, where: str) -> CPRFLConfig:
        """Read and check a saved ``model_args``; the 0.1.0 spelling is translated.

        Args:
            model_args: The ``model_args`` field of a ``config.json``.
            where: The file, for messages.

        Returns:
            The config.

        Raises:
            ValueError: Naming the file and the field, for an unknown key (with the closest
                valid one), a missing ``backbone`` or ``class_names``, a value of the wrong type
                or out of range, a forbidden ``backbone_kwargs`` entry, or a backbone that reads
                another saved model.
        """
        from .classes import validate_class_inputs
        from .thresholds import validate_thresholds

        if not isinstance(model_args, Mapping):
            raise ValueError(
                f"{where}: model_args must be an object of CPRFL arguments, got "
                f"{type(model_args).__name__}"
            )
        try:
            args = upgrade_legacy_args(model_args, warn=False)
        except ValueError as e:
            raise ValueError(f"{where}: model_args: {e}") from None
        for key in sorted(args):
            if key not in _SAVED_KEYS:
                raise ValueError(
                    f"{where}: model_args has the unknown key {key!r}{closest(key, _SAVED_KEYS)} "
                    f"(expected: {', '.join(sorted(_SAVED_KEYS))})"
                )
        for key in ("backbone", "class_names"):
            if key not in args:
                raise ValueError(f"{where}: model_args.{key} is missing")
        backbone = args["backbone"]
        if not isinstance(backbone, str) or not backbone:
            raise ValueError(
                f"{where}: model_args.backbone must be a timm model name, got {backbone!r}"
            )
        if backbone.startswith(("hf-hub:", "local-dir:")):
            raise ValueError(
                f"{where}: model_args.backbone is {backbone!r}: building it reads another "
                "model's config, so a saved CPRFL model would not be self-contained"
            )
        names = args["class_names"]
        if not isinstance(names, list):
            raise ValueError(
                f"{where}: model_args.class_names must be a list of strings, got "
                f"{type(names).__name__}"
            )
        if len(names) > MAX_CLASSES:
            raise ValueError(
                f"{where}: model_args.class_names has {len(names)} names, more than {MAX_CLASSES}"
            )
        backbone_kwargs = args.get("backbone_kwargs")
        backbone_kwargs = {} if backbone_kwargs is None else backbone_kwargs
        text_cfg = args.get("text_encoder_cfg")
        text_cfg = {} if text_cfg is None else text_cfg
        try:
            validate_class_inputs(names)
            if args.get("num_classes") not in (None, len(names)):
                raise ValueError(
                    f"model_args.num_classes is {args['num_classes']!r} but "
                    f"model_args.class_names has {len(names)} names"
                )
            if args.get("global_pool"):
                raise ValueError(
                    "model_args.global_pool must be empty (CPRFL does not pool), got "
                    f"{args['global_pool']!r}"
                )
            check_backbone_kwargs(backbone_kwargs, "model_args.backbone_kwargs")
            _check_int(args.get("in_chans", 3), "model_args.in_chans", 1, 64)
            if args.get("img_size") is not None:
                _check_img_size(args["img_size"])
            if not isinstance(text_cfg, Mapping):
                raise ValueError(
                    f"model_args.text_encoder_cfg must be an object, got {type(text_cfg).__name__}"
                )
            for key in ("trainable_text_encoder",):
                if not isinstance(args.get(key, False), bool):
                    raise ValueError(f"model_args.{key} must be true or false, got {args[key]!r}")
            if "text_dim" not in args:
                raise ValueError("model_args.text_dim is missing")
            head = HeadConfig.from_dict(args)
            _check_head_bounds(head)
            thresholds = args.get("thresholds")
            if thresholds is not None:
                if not isinstance(thresholds, list):
                    raise ValueError(
                        f"model_args.thresholds must be a list of {len(names)} numbers, got "
                        f"{type(thresholds).__name__}"
                    )
                thresholds = tuple(validate_thresholds(thresholds, len(names), "thresholds"))
            adjustment = args.get("logit_adjustment")
            if adjustment is not None:
                adjustment = tuple(check_logit_offsets(adjustment, len(names)))
        except (TypeError, ValueError) as e:
            message = str(e)
            if not message.startswith("model_args."):
                message = f"model_args.{message}"
            raise ValueError(f"{where}: {message}") from None
        img_size = args.get("img_size")
        return cls(
            backbone=backbone,
            class_names=tuple(names),
            head=head,
            backbone_kwargs=dict(backbone_kwargs),
            img_size=tuple(img_size) if isinstance(img_size, list) else img_size,
            in_chans=int(args.get("in_chans", 3)),
            text_encoder_cfg=upgrade_text_encoder_cfg(text_cfg),
            trainable_text_encoder=bool(args.get("trainable_text_encoder", False)),
            thresholds=thresholds,
            logit_adjustment=adjustment,
        )


_TRAINING_ONLY = ("drop_rate", "attn_drop_rate")


def check_logit_offsets(values: Any, num_classes: int) -> list[float]:
    """Check per-class logit offsets: one finite number per class.

    Args:
        values: The offsets (a list, tuple or 1-D tensor).
        num_classes: The number of classes.

    Returns:
        The offsets as Python floats.

    Raises:
        ValueError: Naming ``logit_adjustment``, for a wrong length or a value that is not a
            finite number.
    """
    if hasattr(values, "tolist"):
        values = values.tolist()
    if not isinstance(values, (list, tuple)) or len(values) != num_classes:
        count = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
        raise ValueError(
            f"logit_adjustment must hold one offset per class ({num_classes}), got {count}"
        )
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(
                f"logit_adjustment[{i}] must be a finite number, got {v!r}; offsets come from "
                "cprfl_zoo.losses.logit_adjustment_offset(priors, tau), whose priors must be "
                "strictly between 0 and 1"
            )
    return [float(v) for v in values]


def upgrade_text_encoder_cfg(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Rename the text width of a ``text_encoder_cfg`` saved before 0.2.0 (``embed_dim``).

    Args:
        cfg: The saved ``text_encoder_cfg``.

    Returns:
        A copy with ``text_dim`` for the width of the embeddings.
    """
    out = dict(cfg)
    if "embed_dim" in out and "text_dim" not in out:
        out["text_dim"] = out.pop("embed_dim")
    return out


def _check_img_size(value: Any) -> None:
    sides = value if isinstance(value, (list, tuple)) else [value]
    if not 1 <= len(sides) <= 2:
        raise ValueError(f"model_args.img_size must be an int or [height, width], got {value!r}")
    for side in sides:
        _check_int(side, "model_args.img_size", 1, MAX_INPUT_SIDE)


def _check_head_bounds(head: HeadConfig) -> None:
    for key in ("text_dim", "embed_dim", "head_dim", "mlp_hidden_dim"):
        _check_int(getattr(head, key), f"model_args.{key}", 1, _MAX_WIDTH)
    _check_int(head.num_heads, "model_args.num_heads", 1, _MAX_HEADS)
