"""Whether the Hugging Face Hub can be reached, found out in seconds.

Without ``HF_HUB_OFFLINE=1``, a weight file that is neither cached nor reachable costs about a
minute: huggingface_hub retries every request with back-off before it gives up. The functions
here answer first: :func:`hub_unavailable` says why the Hub cannot be used (offline mode, or no
TCP connection to it within :data:`PROBE_TIMEOUT` seconds), and :func:`offline_unless_reachable`
runs a block in huggingface_hub's offline mode when the Hub is unreachable, so that cached files
still load and missing ones fail at once (timm and open_clip download through huggingface_hub).

The probe honours ``HF_ENDPOINT``, and is skipped (the Hub counts as reachable, and the normal
timeouts ``HF_HUB_ETAG_TIMEOUT`` / ``HF_HUB_DOWNLOAD_TIMEOUT`` apply) when an HTTPS proxy is
configured, since the proxy, not the Hub, is what a direct connection would test.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["PROBE_TIMEOUT", "hub_file", "hub_unavailable", "is_offline", "offline_unless_reachable"]

# Seconds the connection to the Hub may take before it counts as unreachable.
PROBE_TIMEOUT = 5.0
# A probe's answer is reused for this many seconds.
_PROBE_TTL = 60.0
_probes: dict[tuple[str, int], tuple[float, bool]] = {}
_lock = threading.Lock()


def is_offline() -> bool:
    """Return whether Hugging Face downloads are switched off (``HF_HUB_OFFLINE``).

    Returns:
        ``True`` when offline (the environment variable, or huggingface_hub's constant).
    """
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _endpoint() -> tuple[str, str, int]:
    from huggingface_hub import constants

    url = constants.ENDPOINT
    parts = urllib.parse.urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return url, parts.hostname or "", port


def _connects(host: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection opens within ``timeout`` seconds, DNS lookup included."""
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)  # a DNS lookup ignores the timeout
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def hub_unavailable(timeout: float = PROBE_TIMEOUT) -> str | None:
    """Say why the Hugging Face Hub cannot be used now, or return None when it can.

    Args:
        timeout: Seconds the connection may take.

    Returns:
        ``None`` when the Hub answers (or a proxy is configured), else a reason that names
        ``HF_HUB_OFFLINE`` or the endpoint that did not answer.
    """
    if is_offline():
        return "Hugging Face is offline (HF_HUB_OFFLINE is set)"
    url, host, port = _endpoint()
    if urllib.request.getproxies().get(urllib.parse.urlparse(url).scheme):
        return None
    now = time.monotonic()
    with _lock:
        seen = _probes.get((host, port))
    if seen is not None and now - seen[0] < _PROBE_TTL:
        reachable = seen[1]
    else:
        reachable = _connects(host, port, timeout)
        with _lock:
            _probes[(host, port)] = (now, reachable)
    if reachable:
        return None
    return f"the Hugging Face Hub ({url}) did not answer within {timeout:g} s"


@contextmanager
def offline_unless_reachable(timeout: float = PROBE_TIMEOUT) -> Iterator[str | None]:
    """Run a block in huggingface_hub's offline mode when the Hub cannot be reached.

    Cached files still load; a missing one fails at once (``OfflineModeIsEnabled`` /
    ``LocalEntryNotFoundError`` from huggingface_hub) instead of after a minute of retries.

    Args:
        timeout: Seconds the probe's connection may take.

    Yields:
        :func:`hub_unavailable`'s reason, or None when the Hub is reachable.
    """
    from huggingface_hub import constants

    reason = hub_unavailable(timeout)
    if reason is None:
        yield reason
        return
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield reason
    finally:
        constants.HF_HUB_OFFLINE = saved


def hub_file(
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> str:
    """Download (or find in the cache) one file of a Hub repository, failing fast offline.

    Args:
        repo_id: ``"user/repo"``.
        filename: The file in the repository.
        revision: Branch, tag or commit.
        cache_dir: Hugging Face cache folder.

    Returns:
        The local path of the file.

    Raises:
        FileNotFoundError: If the file is not cached and the Hub cannot be reached; the message
            names the repository, the file and how to provide it.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    with offline_unless_reachable() as reason:
        try:
            return hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir)
        except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
            why = reason or "HF_HUB_OFFLINE is set"
            raise FileNotFoundError(
                f"hf-hub:{repo_id} ({filename}) is not in the local Hugging Face cache and "
                f"cannot be downloaded: {why}. Download it once on a connected machine "
                f"(huggingface-cli download {repo_id} {filename}), or save the model to a folder "
                f"and load 'local-dir:FOLDER' ({type(e).__name__})"
            ) from None
