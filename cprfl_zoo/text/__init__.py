"""Class names to CLIP text embeddings, computed once and cached on disk.

CPRFL initialises its category prompts from text embeddings W (C, m) of the class names. By
default they reproduce the official code: the OpenAI CLIP RN50 text tower with QuickGELU
(open_clip ``"RN50-quickgelu"``, tag ``"openai"``), the prompt ``"a photo of a {}."`` with
underscores in the names turned into spaces, and the end-of-text token's feature after
``text_projection``, not normalised. Any open_clip model name and tag, ``hf-hub:`` id,
``local-dir:`` folder or local checkpoint file works, as does any callable mapping names to a
(C, m) tensor.

The package, one idea a module:

- :mod:`~cprfl_zoo.text.encoder`: :class:`TextConfig`, the one description of a text encoder
  request (resolve, to/from ``text_encoder_cfg``, cache key, weights identity);
- :mod:`~cprfl_zoo.text.encode`: :func:`encode_class_names` and the paths that end in it;
- :mod:`~cprfl_zoo.text.tower`: :class:`TextTower` and everything that imports open_clip;
- :mod:`~cprfl_zoo.text.cache`: the embedding files on disk;
- :mod:`~cprfl_zoo.text.templates`: prompt templates;
- :mod:`~cprfl_zoo.text.weights`: hashing weight files, and whether Hugging Face is offline.
"""

from __future__ import annotations

from .encode import (
    EncodedClassNames,
    OfflineCacheMissError,
    check_recorded_weights,
    encode_class_names,
    encode_class_names_from_config,
    encode_class_names_info,
    encode_with_config,
    prepare_text_inputs,
)
from .encoder import (
    DEFAULT_MODEL_NAME,
    DEFAULT_PRETRAINED,
    TEXT_KWARGS,
    TextConfig,
    TextEncoderSpec,
    pop_text_encoder_kwargs,
    resolve_text_config,
)
from .templates import DEFAULT_TEMPLATES, build_prompts, combine_templates
from .tower import TextTower, load_text_tower

__all__ = [
    "DEFAULT_MODEL_NAME",
    "DEFAULT_PRETRAINED",
    "DEFAULT_TEMPLATES",
    "TEXT_KWARGS",
    "EncodedClassNames",
    "OfflineCacheMissError",
    "TextConfig",
    "TextEncoderSpec",
    "TextTower",
    "build_prompts",
    "check_recorded_weights",
    "combine_templates",
    "encode_class_names",
    "encode_class_names_from_config",
    "encode_class_names_info",
    "encode_with_config",
    "load_text_tower",
    "pop_text_encoder_kwargs",
    "prepare_text_inputs",
    "resolve_text_config",
]
