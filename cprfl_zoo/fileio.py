"""Files written atomically, and the cprfl_zoo cache root.

Every cache or output file of the package is written to a temporary file in the destination's
folder and renamed over it, so a reader (another DDP rank, a crashed run's successor) sees the old
file or the complete new one, never a torn one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "cache_root"]

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
