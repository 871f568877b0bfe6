"""Class names to text embeddings, computed once per :class:`TextConfig` and cached on disk.

Every path (:func:`encode_class_names`, a saved ``text_encoder_cfg``, ``create_cprfl``)
resolves its request into one :class:`~cprfl_zoo.text.encoder.TextConfig` and hands it to
:func:`encode_with_config`, which reads the cache, or loads the text tower and writes the cache.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..classes import validate_class_inputs
from ..network import hub_unavailable
from .cache import (
    CACHE_ENV,
    cache_file_name,
    read_cache_entry,
    resolve_cache_dir,
    write_cache_entry,
)
from .encoder import DEFAULT_MODEL_NAME, TextConfig, TextEncoderFn, resolve_text_config
from .sentence import encode_sentences, sentence_folder
from .templates import build_prompts, combine_templates
from .tower import hub_weights_location, load_text_tower

_logger = logging.getLogger(__name__)

__all__ = [
    "EncodedClassNames",
    "OfflineCacheMissError",
    "check_recorded_weights",
    "encode_class_names",
    "encode_class_names_from_config",
    "encode_class_names_info",
    "encode_with_config",
    "prepare_text_inputs",
]


class OfflineCacheMissError(RuntimeError):
    """Class embeddings are not cached and the CLIP weights cannot be fetched (offline)."""


@dataclass
class EncodedClassNames:
    """Class embeddings and where they came from.

    Attributes:
        embeddings: (C, m) float32 class embeddings on the CPU.
        text_encoder_cfg: JSON-able description of what produced them.
        cache_file: The cache entry read or written (``None`` if uncached or not writable).
        from_cache: Whether they were read from the cache.
    """

    embeddings: torch.Tensor
    text_encoder_cfg: dict[str, Any]
    cache_file: Path | None
    from_cache: bool


# ---------------------------------------------------------------------- one resolved config
def encode_with_config(
    config: TextConfig,
    names: list[str],
    *,
    use_cache: bool = True,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> EncodedClassNames:
    """Encode class names as a resolved configuration says, through the cache.

    Args:
        config: From :meth:`TextConfig.resolve` or :func:`resolve_text_config`.
        names: Class names, in order, already checked (``validate_class_inputs``).
        use_cache: Read and write the cache (a custom encoder is never cached).
        batch_size: Prompts encoded at once.
        device: Where to encode on a miss (default: CUDA if available, else CPU).
        progress: Show a progress bar (default: only on a terminal).

    Returns:
        The embeddings, their ``text_encoder_cfg``, the cache file and whether it was a hit.

    Raises:
        OfflineCacheMissError: On a miss while offline, when the weights are not cached locally.
        ValueError: For a non-positive ``batch_size`` or a custom config without its callable.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if config.is_custom:
        return _encode_with_callable(config, names)

    key = config.cache_key(names)
    folder = resolve_cache_dir(config.cache_dir)
    entry = folder / cache_file_name(key) if use_cache else None
    if use_cache:
        cached = read_cache_entry(key, folder)
        if cached is not None:
            _logger.debug("class embeddings read from %s", entry)
            return EncodedClassNames(cached, config.provenance(cached.shape[1]), entry, True)
    reason = _weights_unreachable(config)
    if reason is not None:
        raise OfflineCacheMissError(_offline_error(config, entry, len(names), reason))

    embeddings = _encode_with_tower(config, names, batch_size, device, progress)
    provenance = config.provenance(embeddings.shape[1])
    written = None
    if use_cache:
        written = write_cache_entry(key, embeddings, folder, provenance)
    return EncodedClassNames(embeddings, provenance, written, False)


@torch.no_grad()
def _encode_with_tower(
    config: TextConfig,
    names: list[str],
    batch_size: int,
    device: str | torch.device | None,
    progress: bool | None,
) -> torch.Tensor:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if config.is_sentence_encoder:
        prompts = build_prompts(names, config.templates)
        feats = encode_sentences(sentence_folder(config.model_name), prompts, batch_size, device)
        return combine_templates(feats, len(config.templates), config.normalize).contiguous()
    tower = load_text_tower(config).to(device)
    tokens = tower.tokenize(names)
    feats = torch.empty(len(tokens), tower.text_dim, dtype=torch.float32)
    with tqdm(
        total=len(tokens),
        unit="prompt",
        desc=f"encoding with {config.model_name}",
        disable=(None if progress is None else not progress),
    ) as bar:
        for start in range(0, len(tokens), batch_size):
            batch = tokens[start : start + batch_size].to(device)
            feats[start : start + len(batch)] = tower.encode(batch).float().cpu()
            bar.update(len(batch))
    return combine_templates(feats, len(config.templates), config.normalize).contiguous()


def _encode_with_callable(config: TextConfig, names: list[str]) -> EncodedClassNames:
    if config.encoder is None:
        raise ValueError(
            f"{config.model_name} is a custom text encoder, which cannot be rebuilt from a "
            "config; pass the callable as text_encoder=, or pass text_embeddings="
        )
    out = config.encoder(list(names))
    if not isinstance(out, torch.Tensor):
        try:
            out = torch.as_tensor(out)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(
                f"the text_encoder callable returned {type(out).__name__}, not a (C, m) tensor"
            ) from e
    if out.ndim != 2 or out.shape[0] != len(names):
        raise ValueError(
            f"the text_encoder callable returned shape {tuple(out.shape)}; expected "
            f"({len(names)}, m), one row per class name"
        )
    out = out.detach().to("cpu", torch.float32)
    if not torch.isfinite(out).all():
        raise ValueError("the text_encoder callable returned NaN or infinite values")
    if config.normalize:
        out = F.normalize(out, dim=-1)
    return EncodedClassNames(out.contiguous(), config.provenance(out.shape[1]), None, False)


def _weights_unreachable(config: TextConfig) -> str | None:
    """Why the weights can neither be read locally nor downloaded now, or None.

    The Hub is probed only when the weights are not cached, within seconds (see
    :mod:`cprfl_zoo.network`), instead of letting huggingface_hub retry for a minute.
    """
    if config.weights_available_offline():
        return None
    reason = hub_unavailable()
    if reason is None:
        return None
    where = hub_weights_location(config.model_name, config.pretrained)
    return f"{reason}, and {where} is not in the local Hugging Face cache"


def _offline_error(config: TextConfig, entry: Path | None, num_classes: int, reason: str) -> str:
    options = f" --pretrained {config.pretrained}" if config.pretrained else ""
    options += "".join(f" --template {t!r}" for t in config.templates)
    if config.normalize and len(config.templates) == 1:
        options += " --normalize"
    where = (
        f"the cache entry {entry} is missing"
        if entry is not None
        else "the cache is off (use_cache=False)"
    )
    fill = (
        f", then copy the file it prints ({entry.name}) into {entry.parent} here (or point "
        f"${CACHE_ENV} at a folder holding it)"
        if entry is not None
        else ""
    )
    return (
        f"cannot compute class embeddings of {num_classes} classes with {config.model_name} "
        f"({config.weights_identity()}): {where}, and {reason}. Fill the cache on a machine with "
        "internet: write the class names, one per line, to classes.txt and run `cprfl-zoo embed "
        f"--classes classes.txt --model {config.model_name}{options}`{fill}; or pass the "
        "embeddings yourself with text_embeddings="
    )


# ---------------------------------------------------------------------- the public functions
def encode_class_names_info(
    class_names: Sequence[str],
    model_name: str | TextEncoderFn = DEFAULT_MODEL_NAME,
    pretrained: str | os.PathLike[str] | None = None,
    templates: str | Sequence[str] | None = None,
    *,
    normalize: bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> EncodedClassNames:
    """Like :func:`encode_class_names`, but also return the provenance and the cache file.

    Args:
        class_names: Class names, in order.
        model_name: open_clip model name, ``hf-hub:`` id, ``local-dir:`` folder, or a callable
            mapping a list of names to a (C, m) tensor (never cached).
        pretrained: Tag or checkpoint path for a built-in model name.
        templates: Prompt template(s), each with one ``{}``.
        normalize: L2-normalise (default: only when several templates are averaged).
        cache_dir: Folder of the cache files (default: see :mod:`cprfl_zoo.text.cache`).
        use_cache: Read and write the cache.
        batch_size: Prompts encoded at once.
        device: Where to encode on a miss (default: CUDA if available, else CPU).
        progress: Show a progress bar (default: only on a terminal).

    Returns:
        The embeddings, their ``text_encoder_cfg``, the cache file and whether it was a hit.

    Raises:
        OfflineCacheMissError: On a miss while offline, when the weights are not cached locally.
        ValueError: For bad class names, templates, model names or tags.
    """
    names = validate_class_inputs(class_names)
    config = TextConfig.resolve(model_name, pretrained, templates, normalize, cache_dir=cache_dir)
    return encode_with_config(
        config, names, use_cache=use_cache, batch_size=batch_size, device=device, progress=progress
    )


def encode_class_names(
    class_names: Sequence[str],
    model_name: str | TextEncoderFn = DEFAULT_MODEL_NAME,
    pretrained: str | os.PathLike[str] | None = None,
    templates: str | Sequence[str] | None = None,
    *,
    normalize: bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """Encode class names into text embeddings W (C, m), computing them once and caching them.

    The defaults reproduce the official CPRFL code: OpenAI CLIP RN50 with QuickGELU
    (``"RN50-quickgelu"``, ``"openai"``; plain ``"RN50"`` gives different numbers), the template
    ``"a photo of a {}."``, underscores turned into spaces, no normalisation.

    A cache hit never builds or downloads a CLIP model. On a miss the text tower is loaded (the
    image tower freed at once), the prompts are encoded in batches, and the result is written
    atomically to the cache.

    Args:
        class_names: Class names, in order.
        model_name: open_clip model name, ``hf-hub:`` id, ``local-dir:`` folder, or a callable
            mapping a list of names to a (C, m) tensor (never cached).
        pretrained: Tag (``"openai"``) or checkpoint path for a built-in model name; ``None``
            picks ``"openai"`` where the model has it.
        templates: Prompt template(s), each with one ``{}``. Several are normalised, averaged
            and renormalised.
        normalize: L2-normalise (default: only when several templates are averaged).
        cache_dir: Folder of the cache files (default ``$CPRFL_ZOO_CACHE/text_embeddings``, else
            ``$XDG_CACHE_HOME/cprfl_zoo/text_embeddings``, else
            ``~/.cache/cprfl_zoo/text_embeddings``).
        use_cache: Read and write the cache.
        batch_size: Prompts encoded at once.
        device: Where to encode on a miss (default: CUDA if available, else CPU).
        progress: Show a progress bar (default: only on a terminal).

    Returns:
        (C, m) float32 embeddings on the CPU.

    Raises:
        OfflineCacheMissError: On a miss while offline, when the weights are not cached locally.
        ValueError: For bad class names, templates, model names or tags.
    """
    return encode_class_names_info(
        class_names,
        model_name,
        pretrained,
        templates,
        normalize=normalize,
        cache_dir=cache_dir,
        use_cache=use_cache,
        batch_size=batch_size,
        device=device,
        progress=progress,
    ).embeddings


def check_recorded_weights(
    config: TextConfig, recorded_cfg: Mapping[str, Any] | None, *, strict: bool = False
) -> None:
    """Compare the weights a config resolves to with those a saved config recorded.

    Args:
        config: The resolved configuration.
        recorded_cfg: A saved ``text_encoder_cfg``; its ``"weights"`` (if any) is compared.
        strict: Raise on a difference instead of warning.

    Raises:
        ValueError: If the weights differ and ``strict``.
    """
    recorded = (recorded_cfg or {}).get("weights")
    if not recorded or config.is_custom:
        return
    found = config.weights_identity()
    if found == recorded:
        return
    message = (
        f"the class embeddings were made with weights {recorded!r}, but "
        f"{config.model_name} ({config.pretrained}) now resolves to {found!r}"
    )
    if strict:
        raise ValueError(f"{message}; pass text_embeddings computed with the original text encoder")
    _logger.warning(message)


def encode_class_names_from_config(
    class_names: Sequence[str],
    text_encoder_cfg: Mapping[str, Any] | None,
    *,
    same_weights: bool = False,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Encode class names as a ``text_encoder_cfg`` request says.

    Args:
        class_names: Class names, in order.
        text_encoder_cfg: ``model_name`` (name or callable), ``pretrained``, ``templates``,
            ``normalize``, ``cache_dir``; a saved model's ``text_encoder_cfg`` works as well
            (other keys are ignored). ``None`` means the defaults.
        same_weights: Require the weights to be those recorded in ``text_encoder_cfg["weights"]``
            (for embeddings that must match a trained model's).

    Returns:
        The (C, m) embeddings and the JSON-able ``text_encoder_cfg`` that describes them.

    Raises:
        ValueError: For bad class names, a custom encoder that cannot be rebuilt, or weights
            that differ from the recorded ones when ``same_weights``.
    """
    names = validate_class_inputs(class_names)
    config = resolve_text_config(text_encoder_cfg=text_encoder_cfg)
    check_recorded_weights(config, text_encoder_cfg, strict=same_weights)
    result = encode_with_config(config, names)
    return result.embeddings, result.text_encoder_cfg


# ---------------------------------------------------------------------- model integration
def prepare_text_inputs(
    model_kwargs: MutableMapping[str, Any], text_kwargs: Mapping[str, Any], *, pretrained: bool
) -> None:
    """Fill ``text_embeddings``, ``text_encoder_cfg`` (and ``text_tower``) of a CPRFL build.

    Nothing is computed when saved weights are loaded (they hold W) or embeddings are given.
    Otherwise the request (``text_kwargs`` over ``model_kwargs["text_encoder_cfg"]``) is
    resolved once, with :func:`resolve_text_config`, and the class names are checked once.

    Args:
        model_kwargs: CPRFL constructor arguments; modified in place.
        text_kwargs: From :func:`pop_text_encoder_kwargs`.
        pretrained: Whether complete CPRFL weights will be loaded.

    Raises:
        ValueError: If text-encoder keywords are given but unused, or the trainable mode is
            combined with given embeddings or a callable encoder.
    """
    trainable = bool(model_kwargs.get("trainable_text_encoder"))
    given = model_kwargs.get("text_embeddings") is not None
    if pretrained or given or "class_names" not in model_kwargs:
        if text_kwargs:
            why = "saved weights are loaded" if pretrained else "text_embeddings were given"
            raise ValueError(
                f"{sorted(text_kwargs)} choose how class embeddings are computed, but none are "
                f"computed here: {why}"
            )
        if trainable and given and not pretrained and model_kwargs.get("text_tower") is None:
            raise ValueError(
                "trainable_text_encoder=True computes the class embeddings with the CLIP text "
                "tower; do not pass text_embeddings"
            )
        return
    saved = model_kwargs.get("text_encoder_cfg")
    config = resolve_text_config(**text_kwargs, text_encoder_cfg=saved)
    names = validate_class_inputs(model_kwargs["class_names"])
    if trainable:
        model_kwargs.update(_trainable_inputs(config, names))
        return
    check_recorded_weights(config, saved)
    result = encode_with_config(config, names)
    model_kwargs["text_embeddings"] = result.embeddings
    model_kwargs["text_encoder_cfg"] = result.text_encoder_cfg


def _trainable_inputs(config: TextConfig, names: list[str]) -> dict[str, Any]:
    if config.is_custom or config.is_sentence_encoder:
        raise ValueError(
            "trainable_text_encoder=True needs an open_clip text tower; a callable text_encoder "
            "can only give frozen embeddings"
        )
    reason = _weights_unreachable(config)
    if reason is not None:
        raise OfflineCacheMissError(
            f"trainable_text_encoder=True needs the weights of {config.model_name} "
            f"({config.weights_identity()}), but {reason}; download them on a connected machine "
            'first (python -c "import open_clip; open_clip.create_model('
            f"'{config.model_name}', pretrained='{config.pretrained}')\") and copy the Hugging "
            "Face cache folder (HF_HOME), or pass a local file as text_pretrained"
        )
    tower = load_text_tower(config)
    if not tower.is_text_transformer:
        raise ValueError(
            f"trainable_text_encoder=True supports open_clip's own text transformers; "
            f"{config.model_name} uses {type(tower.text).__name__}"
        )
    tower.set_class_names(names)
    tower.train()
    with torch.no_grad():
        embeddings = tower().float()
    cfg = config.provenance(tower.text_dim)
    cfg.update(trainable=True, text_tower=tower.config)
    return {"text_embeddings": embeddings, "text_encoder_cfg": cfg, "text_tower": tower}
