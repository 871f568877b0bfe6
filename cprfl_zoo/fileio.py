"""Files and folders written atomically, file digests, and the cprfl_zoo cache folders.

Every cache or output file of the package is written to a temporary file in the destination's
folder and renamed over it, so a reader (another DDP rank, a crashed run's successor) sees the old
file or the complete new one, never a torn one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "atomic_folder",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "cache_folder",
    "cache_root",
    "file_sha256",
]

CACHE_ENV = "CPRFL_ZOO_CACHE"


def cache_root() -> Path:
    """Return the root folder of cprfl_zoo's caches (not created).

    Returns:
        ``$CPRFL_ZOO_CACHE`` if that variable is set, else ``$XDG_CACHE_HOME/cprfl_zoo``, else
        ``~/.cache/cprfl_zoo``.
    """
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "cprfl_zoo"


def cache_folder(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return ``cache_dir`` as a path, or the cache root's sub-folder ``name`` when it is ``None``.

    Args:
        name: The sub-folder of :func:`cache_root` used by default (``"text_embeddings"``).
        cache_dir: An explicit folder chosen by the caller (``~`` expanded), or ``None``.

    Returns:
        The folder (not created).
    """
    return Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / name


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Return the SHA-256 of a file's bytes, read in 4 MiB blocks.

    Args:
        path: The file.

    Returns:
        The digest as 64 lowercase hex digits.
    """
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``.

    For writers that take a file name (``torch.save``, ``safetensors.torch.save_file``). The
    temporary file is removed if the block raises.

    Args:
        path: The destination. Its folder is created if missing.
        mode: Permission bits for the file (``mkstemp`` makes it readable by its owner only).

    Yields:
        The temporary path to write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, mode: int | None = None
) -> Path:
    """Write ``data`` to ``path`` atomically, flushed to disk before the rename.

    Args:
        path: The destination. Its folder is created if missing.
        data: The file's content.
        mode: Permission bits for the file (default: readable by its owner only).

    Returns:
        The destination path.
    """
    with atomic_path(path, mode=mode) as tmp, tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, mode: int | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`atomic_write_bytes`.

    Args:
        path: The destination. Its folder is created if missing.
        text: The file's content.
        mode: Permission bits for the file (default: readable by its owner only).

    Returns:
        The destination path.
    """
    return atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


@contextmanager
def atomic_folder(path: str | os.PathLike[str], *, last: Sequence[str] = ()) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; on success move its files into ``path``.

    The files written into the temporary folder replace those of the same names in ``path``
    (created if missing; other files in it are kept). The files named in ``last`` are first
    removed from ``path`` and moved in after all the others, in that order, so a folder whose
    validity a reader judges by such a file (``config.json``) never looks complete while the
    other files are being replaced. Each move is an atomic rename. The temporary folder is
    removed in every case.

    Args:
        path: The destination folder.
        last: Names of files to remove first and move in last.

    Yields:
        The temporary folder to write.

    Raises:
        ValueError: If ``path`` exists and is not a folder.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{str(path)!r} exists and is not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        path.mkdir(exist_ok=True)
        for name in last:
            (path / name).unlink(missing_ok=True)
        names = sorted(p.name for p in tmp.iterdir() if p.name not in last)
        for name in [*names, *(n for n in last if (tmp / n).exists())]:
            os.replace(tmp / name, path / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
