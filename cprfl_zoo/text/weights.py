"""Naming CLIP weight files by their content, and telling whether Hugging Face is offline."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from ..fileio import file_sha256

__all__ = ["hf_file_cached", "is_offline", "local_dir_sha256", "weights_file_sha256"]

_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def weights_file_sha256(path: Path) -> str:
    """Return the SHA-256 of a file, computed once per (path, size, modification time).

    Args:
        path: The file.

    Returns:
        64 hex characters.
    """
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _FILE_DIGESTS:
        _FILE_DIGESTS[memo] = file_sha256(path)
    return _FILE_DIGESTS[memo]


def local_dir_sha256(folder: Path) -> str:
    """Return one SHA-256 of the config and weight files of an open_clip model folder.

    Args:
        folder: A ``local-dir:`` folder holding ``open_clip_config.json`` and weights.

    Returns:
        64 hex characters.

    Raises:
        ValueError: If the folder or its ``open_clip_config.json`` is missing.
    """
    if not folder.is_dir():
        raise ValueError(f"local-dir: folder {folder} does not exist")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.name == "open_clip_config.json" or p.suffix in (".safetensors", ".bin", ".pth")
    )
    if not any(p.name == "open_clip_config.json" for p in files):
        raise ValueError(f"local-dir: folder {folder} has no open_clip_config.json")
    digest = hashlib.sha256()
    for p in files:
        digest.update(f"{p.name}:{weights_file_sha256(p)}\n".encode())
    return digest.hexdigest()


def is_offline() -> bool:
    """Return whether Hugging Face downloads are switched off (``HF_HUB_OFFLINE``).

    Returns:
        ``True`` when offline.
    """
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def hf_file_cached(repo_id: str, filenames: Sequence[str]) -> bool:
    """Return whether one of these files of a Hub repo is in the local Hugging Face cache.

    Args:
        repo_id: ``"org/repo"``.
        filenames: Candidate file names.

    Returns:
        ``True`` if any is cached.
    """
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in filenames)
