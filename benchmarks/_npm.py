"""Fetch an npm package's tarball into a folder, checked against the registry's SHA-512.

The emoji images of the quickstart and of ``lt_emoji.py`` come as npm packages (see
``_emoji.py``). :func:`fetch_tarball` gets one, in this order:

1. ``npm pack NAME@VERSION`` when ``npm`` is on the ``PATH``, so the user's npm settings
   (registry mirror, proxy, cache) apply; the expected digest comes from ``npm view``;
2. otherwise, or if npm fails, HTTPS from the registry: ``<registry>/<name>/<version>`` gives the
   package's ``dist.tarball`` URL and ``dist.integrity``, and the tarball is streamed with a
   progress bar.

Either way the file is checked against the registry's ``dist.integrity`` (an SRI string,
``sha512-<base64>``) before it is moved into place atomically, so the folder never holds a torn
or unverified tarball. An unreachable registry is detected within seconds (a TCP connection to
it, unless a proxy is configured), and the error names the package, the folder and the command
to run on a connected machine.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cprfl_zoo.fileio import atomic_path

__all__ = [
    "DEFAULT_REGISTRY",
    "PackageDist",
    "check_integrity",
    "fetch_tarball",
    "registry_dist",
    "registry_reachable",
]

_logger = logging.getLogger(__name__)

DEFAULT_REGISTRY = "https://registry.npmjs.org"
# How long a step may wait on the network before it counts as offline.
CONNECT_TIMEOUT = 5.0
Opener = Callable[..., IO[bytes]]


@dataclass(frozen=True)
class PackageDist:
    """Where a package version's tarball is and what it must hash to.

    Attributes:
        tarball: URL of the ``.tgz``.
        integrity: The registry's SRI string (``sha512-<base64>``, possibly several, space
            separated).
    """

    tarball: str
    integrity: str


def registry_url() -> str:
    """The registry to use: ``$NPM_CONFIG_REGISTRY`` if set, else :data:`DEFAULT_REGISTRY`."""
    return os.environ.get("NPM_CONFIG_REGISTRY") or DEFAULT_REGISTRY


def _sha512_of(integrity: str) -> bytes:
    """The SHA-512 digest of an SRI string (``sha512-<base64>``, options after ``?`` ignored).

    Raises:
        ValueError: If the string holds no SHA-512 entry.
    """
    for entry in integrity.split():
        algorithm, _, value = entry.partition("-")
        if algorithm == "sha512":
            return base64.b64decode(value.split("?")[0], validate=True)
    raise ValueError(f"the integrity string {integrity!r} has no sha512-... entry")


def check_integrity(path: Path, integrity: str) -> None:
    """Check a file's SHA-512 against an npm ``dist.integrity`` string.

    Args:
        path: The file.
        integrity: ``sha512-<base64>`` as the registry gives it.

    Raises:
        ValueError: If the digests differ (the message names the file and both digests), or
            the integrity string has no SHA-512.
    """
    expected = _sha512_of(integrity)
    digest = hashlib.sha512()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.digest() != expected:
        found = "sha512-" + base64.b64encode(digest.digest()).decode()
        raise ValueError(
            f"{path} has {found}, but the npm registry gives {integrity}: the download is "
            "corrupt or was altered; it was not kept"
        )


def registry_reachable(registry: str, timeout: float = CONNECT_TIMEOUT) -> bool:
    """Whether a TCP connection to the registry opens within ``timeout`` seconds (DNS included).

    ``file://`` registries and configured proxies (``HTTPS_PROXY`` ...) are not probed: the
    download itself, with its own timeout, decides.
    """
    parts = urllib.parse.urlparse(registry)
    if parts.scheme not in ("http", "https") or urllib.request.getproxies().get(parts.scheme):
        return True
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((parts.hostname or "", port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)  # a DNS lookup ignores the timeout
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def registry_dist(
    name: str,
    version: str,
    *,
    registry: str | None = None,
    timeout: float = 30.0,
    opener: Opener = urllib.request.urlopen,
) -> PackageDist:
    """Ask the registry where a package version's tarball is and what it must hash to.

    Args:
        name: Package name.
        version: Exact version.
        registry: Registry base URL (default :func:`registry_url`).
        timeout: Seconds to wait on the network.
        opener: Opens a URL (``urllib.request.urlopen``'s signature), for tests.

    Returns:
        The package's ``dist`` record.

    Raises:
        OSError: If the registry cannot be read.
        ValueError: If its answer has no ``dist.tarball`` / ``dist.integrity``.
    """
    url = f"{(registry or registry_url()).rstrip('/')}/{name}/{version}"
    with opener(url, timeout=timeout) as response:
        meta = json.loads(response.read())
    dist = meta.get("dist") or {}
    if not dist.get("tarball") or not dist.get("integrity"):
        raise ValueError(f"{url} gives no dist.tarball and dist.integrity: {dist}")
    return PackageDist(dist["tarball"], dist["integrity"])


def _download(
    dist: PackageDist, dest: Path, *, timeout: float, opener: Opener, progress: bool
) -> None:
    """Stream ``dist.tarball`` to ``dest`` atomically with a progress bar, checked on the way."""
    from tqdm.auto import tqdm

    with opener(dist.tarball, timeout=timeout) as response, atomic_path(dest) as tmp:
        total = response.headers.get("Content-Length") if hasattr(response, "headers") else None
        with (
            tmp.open("wb") as f,
            tqdm(
                total=int(total) if total else None,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            for block in iter(lambda: response.read(1 << 16), b""):
                f.write(block)
                bar.update(len(block))
        check_integrity(tmp, dist.integrity)


def _run_npm(args: list[str], cwd: Path, *, desc: str, progress: bool, timeout: float) -> str:
    """Run npm (its output captured), with an elapsed-time bar; its stdout.

    Raises:
        subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError: If npm fails.
    """
    from tqdm.auto import tqdm

    start = time.monotonic()
    with (
        subprocess.Popen(
            args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as proc,
        tqdm(desc=desc, bar_format="{desc}: {elapsed}", disable=not progress, leave=False) as bar,
    ):
        while True:
            try:
                out, err = proc.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                bar.refresh()
                if time.monotonic() - start > timeout:
                    proc.kill()
                    raise
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, args, out, err)
    return out


def _npm_pack(npm: str, spec: str, dest: Path, *, progress: bool, timeout: float) -> None:
    """``npm pack spec`` into a temporary folder beside ``dest``, checked, then moved to it."""
    view = _run_npm(
        [npm, "view", spec, "dist", "--json"], dest.parent, desc=f"npm view {spec}",
        progress=False, timeout=60,
    )  # fmt: skip
    integrity = json.loads(view)["integrity"]
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".npm-pack-") as tmp:
        _run_npm(
            [npm, "pack", spec], Path(tmp), desc=f"npm pack {spec}", progress=progress,
            timeout=timeout,
        )  # fmt: skip
        packed = sorted(Path(tmp).glob("*.tgz"))
        if len(packed) != 1:
            raise OSError(f"npm pack {spec} wrote {[p.name for p in packed]}, not one .tgz")
        check_integrity(packed[0], integrity)
        os.replace(packed[0], dest)


def fetch_tarball(
    name: str,
    version: str,
    folder: Path,
    *,
    filename: str | None = None,
    npm: str | None = "auto",
    registry: str | None = None,
    timeout: float = 600.0,
    progress: bool = True,
    opener: Opener = urllib.request.urlopen,
) -> Path:
    """Download ``name@version``'s tarball into ``folder`` (see the module docstring).

    Args:
        name: Package name.
        version: Exact version.
        folder: Destination folder (created).
        filename: File name in ``folder`` (default ``npm pack``'s, ``<name>-<version>.tgz``).
        npm: The npm executable, ``"auto"`` to look it up on the ``PATH``, or None for HTTPS
            only.
        registry: Registry base URL for the HTTPS way (default :func:`registry_url`).
        timeout: Seconds a download may take.
        progress: Show progress bars.
        opener: Opens a URL (``urllib.request.urlopen``'s signature), for tests.

    Returns:
        The path of the checked tarball.

    Raises:
        OSError: If neither way works (offline, registry down); the message says why, and how to
            provide the file by hand.
        ValueError: If the downloaded file does not match the registry's integrity (not kept).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / (filename or f"{name.split('/')[-1]}-{version}.tgz")
    spec = f"{name}@{version}"
    registry = registry or registry_url()
    npm = shutil.which("npm") if npm == "auto" else npm
    failures: list[str] = []
    if not registry_reachable(registry):
        failures.append(f"{registry} is unreachable (no network connection within seconds)")
    else:
        if npm:
            try:
                _npm_pack(npm, spec, dest, progress=progress, timeout=timeout)
                return dest
            except (OSError, subprocess.SubprocessError, KeyError, json.JSONDecodeError) as e:
                detail = getattr(e, "stderr", None) or str(e)
                failures.append(f"npm pack {spec} failed: {detail.strip()[-300:]}")
                _logger.info("npm pack %s failed; downloading from %s instead", spec, registry)
        try:
            dist = registry_dist(name, version, registry=registry, timeout=CONNECT_TIMEOUT * 6,
                                 opener=opener)  # fmt: skip
            _download(dist, dest, timeout=timeout, opener=opener, progress=progress)
            return dest
        except (OSError, json.JSONDecodeError) as e:
            failures.append(f"{registry}: {type(e).__name__}: {e}")
    raise OSError(
        f"could not download the npm package {spec} into {folder}: {'; '.join(failures)}.\n"
        f"On a machine with internet access run `npm pack {spec}` and copy the file it writes "
        f"to {dest}"
    )
