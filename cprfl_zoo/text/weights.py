"""Naming CLIP weight files by their content, and finding them in the Hugging Face cache.

:func:`is_offline` (``HF_HUB_OFFLINE``) lives in :mod:`cprfl_zoo.network` and is re-exported here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from ..fileio import file_sha256
from ..network import is_offline

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
