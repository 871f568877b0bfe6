"""On-disk cache of class-name text embeddings: one checked safetensors file per key.

A *key* is a JSON-able dict that names everything that determines the embeddings: the text
encoder, the identity of its weights, the prompt templates, the normalisation and the class names
in order. Its SHA-256 names the file, and the file's metadata repeats the key (and a checksum of
the tensor), so a read is checked against what was asked for and a stale, foreign, corrupt or
truncated file is reported and ignored, never trusted.

Writes are atomic (a temporary file in the cache folder, then :func:`os.replace`), so processes
filling the same entry at once (DDP ranks) each leave a complete file and never a torn one.

The cache folder is ``$CPRFL_ZOO_CACHE/text_embeddings``, else
``$XDG_CACHE_HOME/cprfl_zoo/text_embeddings``, else ``~/.cache/cprfl_zoo/text_embeddings``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save

from ..fileio import CACHE_ENV, atomic_write_bytes, cache_folder, cache_root

__all__ = [
    "CACHE_ENV",
    "EmbeddingCacheWarning",
    "cache_file_name",
    "default_cache_dir",
    "key_digest",
    "load_embeddings_file",
    "read_cache_entry",
    "resolve_cache_dir",
    "save_embeddings_file",
    "write_cache_entry",
]

FORMAT = "cprfl_zoo.text_embeddings/1"
TENSOR_NAME = "embeddings"
_SUBDIR = "text_embeddings"


class EmbeddingCacheWarning(UserWarning):
    """A cache file was ignored (corrupt, mismatching) or could not be written."""


def default_cache_dir() -> Path:
    """Return the folder that holds cached class embeddings.

    Returns:
        ``$CPRFL_ZOO_CACHE/text_embeddings`` if that variable is set, else
        ``$XDG_CACHE_HOME/cprfl_zoo/text_embeddings``, else
        ``~/.cache/cprfl_zoo/text_embeddings``.
    """
    return cache_root() / _SUBDIR


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return ``cache_dir`` as a path, or the default cache folder when it is ``None``.

    Args:
        cache_dir: An explicit folder for the embedding files, or ``None``.

    Returns:
        The folder (it may not exist yet).
    """
    return cache_folder(_SUBDIR, cache_dir)


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def key_digest(key: Mapping[str, Any]) -> str:
    """Return the SHA-256 hex digest of a cache key's canonical JSON.

    Args:
        key: The cache key.

    Returns:
        64 hex characters.
    """
    return hashlib.sha256(_canonical_json(dict(key)).encode("utf-8")).hexdigest()


def cache_file_name(key: Mapping[str, Any]) -> str:
    """Return the file name of a cache entry: a readable prefix and the key's digest.

    Args:
        key: The cache key; ``model_name`` and ``class_names`` make the readable prefix.

    Returns:
        A name such as ``RN50-quickgelu-80c-0123456789abcdef.safetensors``.
    """
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(key.get("model_name", "text")))[-48:].strip("._")
    count = len(key.get("class_names", ()))
    return f"{slug or 'text'}-{count}c-{key_digest(key)[:16]}.safetensors"


def _tensor_sha256(tensor: torch.Tensor) -> str:
    data = tensor.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha256(data.numpy().tobytes()).hexdigest()


def save_embeddings_file(
    path: str | os.PathLike[str],
    embeddings: torch.Tensor,
    key: Mapping[str, Any],
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write embeddings and their key to a safetensors file, atomically.

    The tensor goes to a temporary file in the target folder, which is then renamed over
    ``path``; a reader sees the old file or the new one, never a partial one.

    Args:
        path: The file to write.
        embeddings: (C, m) embeddings; stored as float32.
        key: What produced them (stored in the metadata and checked on read).
        provenance: Extra JSON-able information to record (not checked on read).

    Returns:
        The path written.

    Raises:
        OSError: If the folder cannot be created or written.
    """
    tensor = embeddings.detach().to("cpu", torch.float32).contiguous()
    metadata = {
        "format": FORMAT,
        "key": _canonical_json(dict(key)),
        "sha256": _tensor_sha256(tensor),
        "shape": _canonical_json(list(tensor.shape)),
        "provenance": _canonical_json(dict(provenance or {})),
    }
    return atomic_write_bytes(path, save({TENSOR_NAME: tensor}, metadata=metadata))


def _first_key_difference(found: Mapping[str, Any], expected: Mapping[str, Any]) -> str:
    for name in sorted(set(found) | set(expected)):
        if found.get(name) != expected.get(name):
            if name == "class_names":
                return "its class names differ"
            return f"its {name!r} is {found.get(name)!r}, expected {expected.get(name)!r}"
    return "its key differs"


def _header(data: bytes) -> tuple[dict[str, str], list[str]]:
    """Return the metadata and the tensor names of a safetensors file held in memory."""
    if len(data) < 8:
        raise ValueError(f"{len(data)} bytes is shorter than a safetensors header")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise ValueError(f"its header claims {size} bytes but the file has {len(data) - 8} more")
    header = json.loads(data[8 : 8 + size])
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise ValueError("its __metadata__ is not a JSON object")
    return metadata, sorted(header)


def load_embeddings_file(
    path: str | os.PathLike[str], key: Mapping[str, Any] | None = None
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read an embeddings file written by :func:`save_embeddings_file` and check it.

    Args:
        path: The file.
        key: When given, the key the file must have been written for.

    Returns:
        The (C, m) float32 embeddings and the key recorded in the file.

    Raises:
        ValueError: If the file is not such a file, is corrupt or truncated, its checksum fails,
            or its key differs from ``key`` (the message says how).
        OSError: If the file cannot be read.
    """
    path = Path(path)
    # One read, then parse: safetensors' lazy safe_open may take the header and the tensor data
    # from two different files when another process renames a new entry over this one meanwhile.
    data = path.read_bytes()
    try:
        metadata, names = _header(data)
        if names != [TENSOR_NAME]:
            raise ValueError(f"it holds tensors {names}, expected only {TENSOR_NAME!r}")
        tensor = load(data)[TENSOR_NAME]
    except Exception as e:  # safetensors raises its own error type for torn or garbled files
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from e
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a cprfl_zoo embeddings file (format {metadata.get('format')!r})"
        )
    try:
        found_key = json.loads(metadata["key"])
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} has no readable key in its metadata") from e
    if not isinstance(found_key, dict):
        kind = "null" if found_key is None else type(found_key).__name__
        raise ValueError(
            f"{path} has no readable key in its metadata ({kind} is not a JSON object)"
        )
    if key is not None and found_key != json.loads(_canonical_json(dict(key))):
        raise ValueError(
            f"{path} was written for other inputs: {_first_key_difference(found_key, key)}"
        )
    if tensor.dtype != torch.float32 or tensor.ndim != 2:
        raise ValueError(f"{path} holds a {tensor.dtype} tensor of shape {tuple(tensor.shape)}")
    if "class_names" in found_key and tensor.shape[0] != len(found_key["class_names"]):
        raise ValueError(
            f"{path} holds {tensor.shape[0]} rows for {len(found_key['class_names'])} class names"
        )
    if metadata.get("sha256") != _tensor_sha256(tensor):
        raise ValueError(f"{path} fails its checksum: the tensor data is corrupt")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{path} holds NaN or infinite values")
    return tensor, found_key


def read_cache_entry(key: Mapping[str, Any], cache_dir: Path) -> torch.Tensor | None:
    """Return the cached embeddings for ``key``, or ``None`` on a miss.

    A file that exists but cannot be trusted (corrupt, truncated, written for another key) is
    reported with an :class:`EmbeddingCacheWarning` and treated as a miss.

    Args:
        key: The cache key.
        cache_dir: The cache folder.

    Returns:
        The (C, m) float32 embeddings, or ``None``.
    """
    path = cache_dir / cache_file_name(key)
    if not path.is_file():
        return None
    try:
        tensor, _ = load_embeddings_file(path, key)
    except (OSError, ValueError) as e:
        warnings.warn(
            f"ignoring the cached text embeddings {path}: {e}; recomputing them",
            EmbeddingCacheWarning,
            stacklevel=3,
        )
        return None
    return tensor


def write_cache_entry(
    key: Mapping[str, Any],
    embeddings: torch.Tensor,
    cache_dir: Path,
    provenance: Mapping[str, Any] | None = None,
) -> Path | None:
    """Store embeddings under ``key``; a cache folder that cannot be written only warns.

    Args:
        key: The cache key.
        embeddings: (C, m) embeddings.
        cache_dir: The cache folder.
        provenance: Extra JSON-able information for the file's metadata.

    Returns:
        The file written, or ``None`` if it could not be written.
    """
    path = cache_dir / cache_file_name(key)
    try:
        return save_embeddings_file(path, embeddings, key, provenance)
    except OSError as e:
        warnings.warn(
            f"could not store text embeddings in the cache folder {cache_dir} ({e}); they were "
            f"computed and are used, but not cached (set {CACHE_ENV} or pass cache_dir= to a "
            "writable folder)",
            EmbeddingCacheWarning,
            stacklevel=3,
        )
        return None


def read_class_embeddings(
    path: str | os.PathLike[str], class_names: Sequence[str]
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read class embeddings for training from a file, with what produced them.

    Two kinds of file are read: what ``cprfl-zoo embed --output`` writes (its key must name
    exactly these classes, in this order; its recorded ``text_encoder_cfg`` comes back, so a
    model trained on them can encode new class names with ``set_classes``), or any safetensors
    file holding a single (C, m) tensor (recorded as ``custom:file:<name>``).

    Args:
        path: The safetensors file.
        class_names: The training classes, in logit order.

    Returns:
        The (C, m) float32 embeddings and the ``text_encoder_cfg`` to save with the model.

    Raises:
        ValueError: If the file holds no single 2-D tensor, not one finite row per class, or
            embeddings of other classes (the message names the file).
        OSError: If it cannot be read.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        metadata, names = _header(data)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from None
    if metadata.get("format") == FORMAT:
        tensor, key = load_embeddings_file(path)
        if key.get("class_names") is not None and list(key["class_names"]) != list(class_names):
            raise ValueError(
                f"{path} holds the embeddings of other classes than the training list's "
                f"({len(key['class_names'])} names vs {len(class_names)}, or another order)"
            )
        try:
            provenance = json.loads(metadata.get("provenance") or "{}")
        except json.JSONDecodeError:
            provenance = {}
        return tensor, {**provenance, "text_dim": int(tensor.shape[1])}
    if len(names) != 1:
        raise ValueError(f"{path} holds {len(names)} tensors; expected one (C, m) tensor")
    try:
        tensor = load(data)[names[0]]
    except Exception as e:  # safetensors raises its own error type for torn or garbled files
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from None
    if tensor.ndim != 2 or tensor.shape[0] != len(class_names) or not tensor.is_floating_point():
        raise ValueError(
            f"{path} holds a {tensor.dtype} tensor of shape {tuple(tensor.shape)}; expected "
            f"({len(class_names)}, m) floats, one row per class"
        )
    tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{path} holds NaN or infinite values")
    return tensor, {"model_name": f"custom:file:{path.name}", "text_dim": int(tensor.shape[1])}
