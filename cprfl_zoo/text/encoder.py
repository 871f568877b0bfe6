"""One text configuration: which encoder, which weights, which prompts, which normalisation.

:class:`TextConfig` is the single description of how class names become text embeddings. It is
built and checked once (:meth:`TextConfig.resolve`, or :func:`resolve_text_config` from the
keywords of ``create_cprfl``), saved as ``model.text_encoder_cfg`` (:meth:`~TextConfig.to_dict`)
and read back from it (:meth:`~TextConfig.from_dict`); its :meth:`~TextConfig.cache_key` names
the embedding-cache entry.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import os
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .sentence import SENTENCE_PREFIX, sentence_folder, sentence_folder_sha256
from .templates import DEFAULT_TEMPLATES, TEXT_TRANSFORM, check_templates
from .tower import (
    hub_weights_cached,
    is_pretrained_tag,
    model_names,
    open_clip_version,
    pretrained_tags,
)
from .weights import local_dir_sha256, weights_file_sha256

_logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MODEL_NAME",
    "DEFAULT_PRETRAINED",
    "TEXT_KWARGS",
    "TextConfig",
    "TextEncoderFn",
    "TextEncoderSpec",
    "pop_text_encoder_kwargs",
    "resolve_text_config",
]

DEFAULT_MODEL_NAME = "RN50-quickgelu"
DEFAULT_PRETRAINED = "openai"
# The keywords of create_cprfl (and timm.create_model) that choose the text configuration,
# named as resolve_text_config's parameters.
TEXT_KWARGS = (
    "text_encoder",
    "text_pretrained",
    "templates",
    "normalize_embeddings",
    "embed_cache_dir",
)
CUSTOM_PREFIX = "custom:"
_KEY_VERSION = 1
_SCHEMAS = ("hf-hub:", "local-dir:", SENTENCE_PREFIX)
# Keys written beside the fields (derived, or the trainable tower's); never read back.
_RECORDED_KEYS = frozenset(
    {"weights", "text_transform", "open_clip_version", "trainable", "text_tower"}
)

TextEncoderFn = Callable[[list[str]], torch.Tensor]


def _callable_name(fn: Callable[..., Any]) -> str:
    target = fn if hasattr(fn, "__qualname__") else type(fn)
    return f"{getattr(target, '__module__', '?')}.{target.__qualname__}"


@dataclass(frozen=True)
class TextConfig:
    """How class names become text embeddings: encoder, weights, templates, normalisation.

    Build it with :meth:`resolve` (or :func:`resolve_text_config`), which fills the defaults and
    validates every field; the constructor itself checks nothing.

    Attributes:
        model_name: open_clip model name (``"RN50-quickgelu"``), ``"hf-hub:org/repo"``,
            ``"local-dir:/path"``, or ``"custom:<module>.<name>"`` for a callable encoder.
        pretrained: Pretrained tag (``"openai"``) or absolute checkpoint path; ``None`` for
            ``hf-hub:``, ``local-dir:`` and custom encoders, which carry their own weights.
        templates: Prompt templates, each with one ``{}``; empty for a custom encoder.
        normalize: L2-normalise the embeddings (always, when several templates are averaged).
        text_dim: Width m of the embeddings, once known (``embed_dim`` before 0.2.0).
        cache_dir: Folder of the embedding cache (``None``: the default one). Where the
            embeddings are kept, not what they are: neither compared nor saved.
        encoder: The callable of a custom encoder (not compared, not saved).
    """

    model_name: str = DEFAULT_MODEL_NAME
    pretrained: str | None = DEFAULT_PRETRAINED
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    normalize: bool = False
    text_dim: int | None = None
    cache_dir: Path | None = field(default=None, compare=False)
    encoder: TextEncoderFn | None = field(default=None, compare=False, repr=False)

    # ---------------------------------------------------------------- building
    @classmethod
    def resolve(
        cls,
        model_name: str | TextEncoderFn = DEFAULT_MODEL_NAME,
        pretrained: str | os.PathLike[str] | None = None,
        templates: str | Sequence[str] | None = None,
        normalize: bool | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> TextConfig:
        """Validate a request and fill its defaults.

        Args:
            model_name: open_clip model name, ``hf-hub:`` id, ``local-dir:`` folder, or a
                callable mapping a list of names to a (C, m) tensor.
            pretrained: Tag or checkpoint file for a built-in model name. ``None`` picks
                ``"openai"`` when the model has such weights.
            templates: One template or several; default ``("a photo of a {}.",)``.
            normalize: Default: ``False`` for one template, ``True`` for several.
            cache_dir: Folder of the embedding cache (default: see
                :func:`~cprfl_zoo.text.cache.default_cache_dir`).

        Returns:
            The resolved configuration.

        Raises:
            ValueError: For an unknown model or tag, a missing checkpoint file, a bad template,
                ``normalize=False`` with several templates, templates or weights given to a
                callable, or a ``custom:`` name without its callable.
        """
        folder = None if cache_dir is None else Path(cache_dir)
        if callable(model_name) and not isinstance(model_name, str):
            if templates is not None or pretrained is not None:
                raise ValueError(
                    "templates and pretrained only apply to open_clip text encoders; a callable "
                    "text encoder receives the class names and builds its own prompts"
                )
            name = f"{CUSTOM_PREFIX}{_callable_name(model_name)}"
            return cls(name, None, (), bool(normalize), cache_dir=folder, encoder=model_name)
        if not isinstance(model_name, str) or not model_name.strip():
            raise ValueError(f"model_name must be a non-empty string, got {model_name!r}")
        model_name = model_name.strip()
        if model_name.startswith(CUSTOM_PREFIX):
            raise ValueError(
                f"text_encoder_cfg names a custom text encoder ({model_name}), which cannot be "
                "rebuilt from a config; pass the callable as text_encoder=, or pass "
                "text_embeddings="
            )
        checked = check_templates(templates)
        if normalize is None:
            normalize = len(checked) > 1
        if not normalize and len(checked) > 1:
            raise ValueError(
                f"{len(checked)} templates are averaged as normalised features; "
                "normalize=False is only possible with one template"
            )
        model_name, pretrained = _resolve_weights(model_name, pretrained)
        return cls(model_name, pretrained, checked, bool(normalize), cache_dir=folder)

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> TextConfig:
        """Read back what :meth:`to_dict` wrote (a saved model's ``text_encoder_cfg``).

        Nothing is checked and missing fields take their defaults; a request dict, whose
        missing fields mean "choose for me", goes through :func:`resolve_text_config` instead.
        Keys that other writers add (a converted checkpoint's records, the trainable tower's)
        are ignored.

        Args:
            cfg: The dict.

        Returns:
            The configuration, as recorded.
        """
        custom = str(cfg.get("model_name", "")).startswith(CUSTOM_PREFIX)
        if "embed_dim" in cfg and "text_dim" not in cfg:  # saved before 0.2.0
            cfg = {**cfg, "text_dim": cfg["embed_dim"]}
        args = {k: cfg[k] for k in _SAVED_FIELDS if k in cfg}
        if custom:
            args.update(pretrained=None, templates=())
        if "templates" in args:
            args["templates"] = tuple(args["templates"])
        return cls(**args)

    # ---------------------------------------------------------------- what it describes
    @property
    def is_custom(self) -> bool:
        """Whether the encoder is a user's callable rather than an open_clip model."""
        return self.model_name.startswith(CUSTOM_PREFIX)

    @property
    def is_sentence_encoder(self) -> bool:
        """Whether the encoder is a local sentence-transformers folder."""
        return self.model_name.startswith(SENTENCE_PREFIX)

    @property
    def pretrained_is_file(self) -> bool:
        """Whether the weights come from a local checkpoint file."""
        return self.pretrained is not None and os.path.isabs(self.pretrained)

    def weights_identity(self) -> str:
        """Name the weights: a tag, an ``hf-hub:`` id, or a SHA-256 of the local files.

        Returns:
            ``"tag:openai"``, ``"hf-hub:org/repo"``, ``"sha256:<hex>"`` (checkpoint file) or
            ``"local-dir-sha256:<hex>"`` (config and weight files of a ``local-dir:`` folder),
            ``"sentence-transformers-sha256:<hex>"`` (every file of the folder).
        """
        if self.is_sentence_encoder:
            folder = sentence_folder(self.model_name)
            return f"sentence-transformers-sha256:{sentence_folder_sha256(folder)}"
        if self.model_name.startswith("hf-hub:"):
            return self.model_name
        if self.model_name.startswith("local-dir:"):
            return f"local-dir-sha256:{local_dir_sha256(Path(self.model_name[10:]))}"
        if self.pretrained_is_file:
            return f"sha256:{weights_file_sha256(Path(self.pretrained))}"
        return f"tag:{self.pretrained}"

    def weights_available_offline(self) -> bool:
        """Whether the weights can be loaded without the network.

        Returns:
            ``True`` for local files and folders, and for hub weights already in the local
            Hugging Face cache (or open_clip's download folder).
        """
        local = self.model_name.startswith(("local-dir:", SENTENCE_PREFIX))
        if local or self.pretrained_is_file:
            return True
        return hub_weights_cached(self.model_name, self.pretrained)

    def cache_key(self, class_names: Sequence[str]) -> dict[str, Any]:
        """Return the cache key of these class names' embeddings.

        Args:
            class_names: The class names, in order.

        Returns:
            A JSON-able dict of everything that determines the embeddings.
        """
        return {
            "version": _KEY_VERSION,
            "model_name": self.model_name,
            "weights": self.weights_identity(),
            "templates": list(self.templates),
            "normalize": self.normalize,
            "text_transform": TEXT_TRANSFORM,
            "class_names": list(class_names),
        }

    def to_dict(self) -> dict[str, Any]:
        """Describe what produced the embeddings, as stored in ``model.text_encoder_cfg``.

        Returns:
            A JSON-able dict; :meth:`from_dict` reads it back, and passing it as
            ``text_encoder_cfg`` reproduces the encoder (not for a custom one).
        """
        if self.is_custom:
            out: dict[str, Any] = {"model_name": self.model_name, "normalize": self.normalize}
        else:
            out = {
                "model_name": self.model_name,
                "pretrained": self.pretrained,
                "weights": self.weights_identity(),
                "templates": list(self.templates),
                "normalize": self.normalize,
                "text_transform": TEXT_TRANSFORM,
            }
        if self.text_dim is not None:
            out["text_dim"] = int(self.text_dim)
        if not self.is_custom:
            out["open_clip_version"] = open_clip_version()
        return out

    def provenance(self, text_dim: int) -> dict[str, Any]:
        """Return :meth:`to_dict` of this configuration with the embedding width set.

        Args:
            text_dim: Width m of the embeddings.

        Returns:
            The ``text_encoder_cfg`` dict.
        """
        return dataclasses.replace(self, text_dim=int(text_dim)).to_dict()


TextEncoderSpec = TextConfig
"""The former name of :class:`TextConfig`."""

# The fields to_dict saves (the compared ones); the other keys it writes derive from them.
_SAVED_FIELDS = tuple(f.name for f in dataclasses.fields(TextConfig) if f.compare)
# TextConfig.resolve's parameters, in the order of TEXT_KWARGS.
_RESOLVE_ARGS = tuple(inspect.signature(TextConfig.resolve).parameters)


def _resolve_weights(
    model_name: str, pretrained: str | os.PathLike[str] | None
) -> tuple[str, str | None]:
    if model_name.startswith(_SCHEMAS):
        if pretrained is not None:
            raise ValueError(
                f"{model_name} carries its own weights; pretrained={pretrained!r} cannot be "
                "combined with it (pass pretrained=None)"
            )
        if model_name.startswith("local-dir:"):
            folder = Path(model_name[len("local-dir:") :]).expanduser().resolve()
            model_name = f"local-dir:{folder}"
        if model_name.startswith(SENTENCE_PREFIX):
            model_name = f"{SENTENCE_PREFIX}{sentence_folder(model_name)}"
        return model_name, None

    model_name = model_name.replace("/", "-")
    known = model_names()
    if model_name not in known:
        close = difflib.get_close_matches(model_name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown open_clip model name {model_name!r}{hint}")
    tags = pretrained_tags(model_name)
    if pretrained is None:
        if DEFAULT_PRETRAINED not in tags:
            raise ValueError(
                f"pretrained is needed for {model_name!r}: one of its tags {tags} or a "
                "checkpoint file (it has no 'openai' weights to default to)"
            )
        pretrained = DEFAULT_PRETRAINED
    pretrained = os.fspath(pretrained)
    if is_pretrained_tag(model_name, pretrained):
        return model_name, pretrained.lower().replace("-", "_")
    if os.path.isfile(pretrained):
        return model_name, str(Path(pretrained).resolve())
    raise ValueError(
        f"pretrained={pretrained!r} for {model_name!r} is neither one of its tags "
        f"{tags} nor an existing checkpoint file"
    )


def resolve_text_config(
    text_encoder: str | TextEncoderFn | None = None,
    text_pretrained: str | os.PathLike[str] | None = None,
    templates: str | Sequence[str] | None = None,
    normalize_embeddings: bool | None = None,
    embed_cache_dir: str | os.PathLike[str] | None = None,
    *,
    text_encoder_cfg: Mapping[str, Any] | None = None,
) -> TextConfig:
    """Turn the text keywords of ``create_cprfl`` into one checked :class:`TextConfig`.

    A given ``text_encoder_cfg`` (a saved model's, or a request dict) is the starting point;
    every keyword that is not ``None`` replaces its field. The result is validated once.

    Args:
        text_encoder: open_clip model name, ``hf-hub:`` id, ``local-dir:`` folder or callable.
        text_pretrained: Tag or checkpoint file of an open_clip model name.
        templates: Prompt template(s).
        normalize_embeddings: L2-normalise the embeddings.
        embed_cache_dir: Folder of the embedding cache.
        text_encoder_cfg: A ``text_encoder_cfg`` dict to start from.

    Returns:
        The resolved configuration (``text_dim`` not set).

    Raises:
        ValueError: As :meth:`TextConfig.resolve`.
    """
    cfg = dict(text_encoder_cfg or {})
    unknown = sorted(set(cfg) - set(_RESOLVE_ARGS) - set(_SAVED_FIELDS) - _RECORDED_KEYS)
    if unknown:
        _logger.debug("text_encoder_cfg keys %s do not affect the encoding", unknown)
    args = {k: cfg[k] for k in _RESOLVE_ARGS if k in cfg}
    given = (text_encoder, text_pretrained, templates, normalize_embeddings, embed_cache_dir)
    args.update({k: v for k, v in zip(_RESOLVE_ARGS, given, strict=True) if v is not None})
    return TextConfig.resolve(**args)


def pop_text_encoder_kwargs(kwargs: MutableMapping[str, Any]) -> dict[str, Any]:
    """Remove the text keywords of ``create_cprfl`` (:data:`TEXT_KWARGS`) from ``kwargs``.

    Args:
        kwargs: Keyword arguments of a CPRFL entrypoint; modified in place.

    Returns:
        The keywords found, with a value other than ``None``, by their user-facing name (the
        parameters of :func:`resolve_text_config`).
    """
    found = {k: kwargs.pop(k) for k in TEXT_KWARGS if k in kwargs}
    return {k: v for k, v in found.items() if v is not None}
