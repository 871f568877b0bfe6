"""The CPRFL head's configuration: one record of its widths, rates and options.

:class:`HeadConfig` is the single description of the head that :class:`~cprfl_zoo.model.CPRFL`
is built from, that ``config.json`` stores (inside ``model_args``) and that the loaders check.
Its names follow timm: ``embed_dim`` is the model's width d (the projected tokens, the prompts
and the VSI), as in timm's ViT and Swin. The width m of the class text embeddings is
``text_dim``.

Up to 0.1.0 the head width was called ``dim`` and the text width ``embed_dim``.
:func:`upgrade_legacy_args` translates that spelling: silently for a saved config, with a
``FutureWarning`` for arguments a user passes (accepted until 0.3.0).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "COSINE_EPS",
    "HEAD_FIELDS",
    "MAX_CLASSIFIER_TAU",
    "HeadConfig",
    "resolve_head_config",
    "upgrade_legacy_args",
    "validate_head_args",
]

_SIZE_ARGS = ("text_dim", "embed_dim", "num_heads", "head_dim", "mlp_hidden_dim", "in_chans")
_RATE_ARGS = ("drop_rate", "attn_drop_rate")
_BOOL_ARGS = (
    "qkv_bias",
    "pi_linear",
    "detach_classifier_prompts",
    "detach_refined_features",
    "cosine_classifier",
    "pretrained_backbone",
    "trainable_text_encoder",
)
_LEGACY_HEAD_WIDTH = "dim"

COSINE_EPS = 1e-6
"""eps of the normalised classifiers' norms (cosine and τ-normalised; the smallest norm used)."""
MAX_CLASSIFIER_TAU = 4.0
"""Largest ``classifier_tau`` accepted (Kang et al. search τ in [0, 1])."""


@dataclass(frozen=True)
class HeadConfig:
    """Widths, rates and options of the CPRFL head (φ, PI, VSI and the classifier).

    Args:
        text_dim: Width m of the class text embeddings W (the PI input).
        embed_dim: Width d of the projected tokens, the prompts and the VSI (2048).
        num_heads: VSI attention heads (8).
        head_dim: Width of each VSI head (512).
        mlp_hidden_dim: Hidden width of the VSI FFN (2048).
        qkv_bias: Bias on the VSI qkv projection (False, as the official code).
        drop_rate: Dropout in the VSI (0.1).
        attn_drop_rate: Dropout on VSI attention weights (0).
        pi_mlp_ratio: PI hidden width as a fraction of d (τ = 0.5).
        pi_linear: Use the single-Linear PI variant.
        detach_classifier_prompts: Stop gradients through the classifier path ``p_i``
            (the official ``no_cls_grad`` ablation).
        detach_refined_features: Stop gradients through the refined features ``p'_i``
            (the official ``no_feature_grad`` ablation).
        cosine_classifier: Opt-in, not in the paper: score class *i* as
            ``s * cos(p'_i, p_i) + b`` with a learned scale ``s`` (``logit_scale``, stored as its
            log, initially 10) and a learned bias ``b`` shared by all classes, instead of the
            unnormalised ``p'_i . p_i`` (a normalised classifier, as in Gidaris & Komodakis,
            CVPR 2018, and Kang et al., ICLR 2020, for long-tailed recognition).
        classifier_tau: Opt-in, not in the paper: the τ-normalised classifier of Kang et al.
            (ICLR 2020, "decoupling"): score class *i* as ``p'_i . p_i / |p_i|^tau``, so the
            classifier vector's norm, which grows with class frequency, counts less (0, the
            default, is the paper's ``p'_i . p_i``; 1 divides by the full norm). Cannot be
            combined with ``cosine_classifier``, which normalises both vectors.

    Raises:
        ValueError: Naming the first field that is out of range or of the wrong type.
    """

    text_dim: int
    embed_dim: int = 2048
    num_heads: int = 8
    head_dim: int = 512
    mlp_hidden_dim: int = 2048
    qkv_bias: bool = False
    drop_rate: float = 0.1
    attn_drop_rate: float = 0.0
    pi_mlp_ratio: float = 0.5
    pi_linear: bool = False
    detach_classifier_prompts: bool = False
    detach_refined_features: bool = False
    cosine_classifier: bool = False
    classifier_tau: float = 0.0

    def __post_init__(self) -> None:
        validate_head_args(self.to_dict(), strict_types=True)
        if self.cosine_classifier and self.classifier_tau != 0:
            raise ValueError(
                f"classifier_tau={self.classifier_tau} cannot be combined with "
                "cosine_classifier=True: the cosine classifier already divides by the full norm "
                "of both vectors; choose one"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-serialisable dict (the head part of ``model_args``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, args: Mapping[str, Any]) -> HeadConfig:
        """Build from a mapping holding (at least) the head fields; other keys are ignored.

        Args:
            args: E.g. a saved ``model_args``, already in the current spelling.

        Returns:
            The config.
        """
        return cls(**{k: args[k] for k in HEAD_FIELDS if k in args})


HEAD_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(HeadConfig))
"""The names of :class:`HeadConfig`'s fields, in order."""


def resolve_head_config(
    head_cfg: HeadConfig | None, head_args: Mapping[str, Any], *, text_width: int | None
) -> HeadConfig:
    """The head config of a CPRFL build, from ``head_cfg`` or the fields as keyword arguments.

    Args:
        head_cfg: A complete record, or ``None``.
        head_args: Head fields passed as keyword arguments (the 0.1.0 spelling is translated,
            with a ``FutureWarning``).
        text_width: The width of the given class embeddings, which sets ``text_dim``; ``None``
            when no embeddings are given (``text_dim`` is then required).

    Returns:
        The checked config.

    Raises:
        TypeError: If ``head_cfg`` is not a :class:`HeadConfig`.
        ValueError: For an unknown argument, a head given twice, a ``text_dim`` that disagrees
            with the embeddings, no way to know ``text_dim``, or a field out of range.
    """
    unknown = sorted(set(head_args) - set(HEAD_FIELDS) - {_LEGACY_HEAD_WIDTH})
    if unknown:
        raise ValueError(
            f"unknown argument(s) {', '.join(unknown)} for CPRFL; its head takes "
            f"{', '.join(HEAD_FIELDS)} (or head_cfg=HeadConfig(...))"
        )
    if head_cfg is not None and not isinstance(head_cfg, HeadConfig):
        raise TypeError(
            f"head_cfg must be a cprfl_zoo.HeadConfig, got {type(head_cfg).__name__}; for a dict "
            "of fields, pass HeadConfig(**fields) or the fields as keyword arguments"
        )
    args = upgrade_legacy_args(head_args, warn=True)
    if head_cfg is not None:
        if args:
            raise ValueError(
                f"the head is given twice: as head_cfg and as {', '.join(sorted(args))}; pass "
                "dataclasses.replace(head_cfg, ...) instead"
            )
        args = head_cfg.to_dict()
    if text_width is not None:
        if args.get("text_dim") not in (None, text_width):
            raise ValueError(
                f"text_embeddings have width {text_width} but text_dim={args['text_dim']} (the "
                "PI input width) was requested"
            )
        args["text_dim"] = text_width
    elif args.get("text_dim") is None:
        raise ValueError(
            "text_embeddings are needed: pass a (num_classes, text_dim) tensor of class "
            "text embeddings (see cprfl_zoo.encode_class_names), or create the model with "
            "cprfl_zoo.create_cprfl, which computes them from the class names"
        )
    return HeadConfig(**args)


def upgrade_legacy_args(args: Mapping[str, Any], *, warn: bool) -> dict[str, Any]:
    """Translate the 0.1.0 spelling (``dim`` = head width, ``embed_dim`` = text width).

    Arguments without ``dim`` are already in the current spelling and come back unchanged.

    Args:
        args: CPRFL arguments, or a saved ``model_args``.
        warn: Emit a ``FutureWarning`` (for arguments a user passed; a saved config is
            translated silently).

    Returns:
        A new dict with ``embed_dim`` = the head width and ``text_dim`` = the text width.

    Raises:
        ValueError: If ``dim`` is given together with ``text_dim``, which mixes the two
            spellings.
    """
    out = dict(args)
    if _LEGACY_HEAD_WIDTH not in out:
        return out
    if "text_dim" in out:
        raise ValueError(
            "dim= (the 0.1.0 name of the head width) cannot be combined with text_dim=; pass "
            "embed_dim= for the head width d and text_dim= for the text-embedding width m"
        )
    width = out.pop(_LEGACY_HEAD_WIDTH)
    if "embed_dim" in out:
        out["text_dim"] = out.pop("embed_dim")
    out["embed_dim"] = width
    if warn:
        warnings.warn(
            "dim= is deprecated and will be removed in 0.3.0: the head width d is now "
            "embed_dim= (timm's meaning), and the text-embedding width, formerly embed_dim=, "
            "is now text_dim=",
            FutureWarning,
            stacklevel=3,
        )
    return out


def validate_head_args(args: Mapping[str, Any], *, strict_types: bool = False) -> None:
    """Check the head sizes and rates among CPRFL's arguments (only the keys present).

    Sizes (``text_dim``, ``embed_dim``, ``num_heads``, ``head_dim``, ``mlp_hidden_dim``,
    ``in_chans``) must be positive ints: timm's ``Mlp`` would read ``mlp_hidden_dim=0`` as
    "the input width". Dropout rates must be in [0, 1) and ``pi_mlp_ratio`` a positive number.
    Each message starts with the argument's name.

    Args:
        args: Argument name to value (``text_dim=None`` is skipped: it is inferred from the
            class embeddings).
        strict_types: Also require the flags (``qkv_bias``, ``pi_linear``, ...) to be bools,
            as in a saved config, where the string ``"false"`` would read as true.

    Raises:
        ValueError: Naming the first argument that is out of range or of the wrong type.
    """
    for key in _SIZE_ARGS:
        value = args.get(key)
        if key not in args or (value is None and key == "text_dim"):
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            raise ValueError(f"{key} must be a positive int, got {value!r}{_type_note(value)}")
    for key in _RATE_ARGS:
        if key in args:
            value = args[key]
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
                raise ValueError(
                    f"{key} must be a number in [0, 1), got {value!r}{_type_note(value)}"
                )
    if "pi_mlp_ratio" in args:
        value = args["pi_mlp_ratio"]
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not (math.isfinite(value) and value > 0)
        ):
            raise ValueError(
                f"pi_mlp_ratio must be a positive number, got {value!r}{_type_note(value)}"
            )
    if "classifier_tau" in args:
        value = args["classifier_tau"]
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not (math.isfinite(value) and 0 <= value <= MAX_CLASSIFIER_TAU)
        ):
            raise ValueError(
                f"classifier_tau must be a number in [0, {MAX_CLASSIFIER_TAU:g}], got {value!r}"
                f"{_type_note(value)}"
            )
    if strict_types:
        for key in _BOOL_ARGS:
            if key in args and not isinstance(args[key], bool):
                raise ValueError(
                    f"{key} must be true or false, got {args[key]!r}{_type_note(args[key])}"
                )


def _type_note(value: Any) -> str:
    return "" if isinstance(value, (int, float)) else f" ({type(value).__name__})"
