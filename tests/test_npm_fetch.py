"""Tests of the npm tarball download behind the quickstart's emoji images (benchmarks/_npm.py).

Nothing touches the network: the registry is a ``file://`` folder laid out like the npm registry
(``<registry>/<name>/<version>`` holds the version's metadata), npm is a small fake script, and
offline is a refused connection.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import socket
import stat
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _emoji
import _npm

NAME, VERSION = "emoji-pkg", "1.0.0"
REGISTRY_BYTES = b"the registry's tarball\n" * 1000
NPM_BYTES = b"npm's tarball\n" * 500


def sri(data: bytes) -> str:
    """The npm ``dist.integrity`` of some bytes, from the SRI definition."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def make_registry(
    root: Path, data: bytes, integrity: str | None = None, name: str = NAME, version: str = VERSION
) -> str:
    """A ``file://`` registry serving ``name@version`` as ``data``; its base URL."""
    tarball = root / "tarballs" / f"{name}-{version}.tgz"
    tarball.parent.mkdir(parents=True, exist_ok=True)
    tarball.write_bytes(data)
    meta = root / "registry" / name / version
    meta.parent.mkdir(parents=True, exist_ok=True)
    dist = {"tarball": tarball.as_uri(), "integrity": integrity or sri(data), "shasum": "x"}
    meta.write_text(json.dumps({"name": name, "version": version, "dist": dist}))
    return (root / "registry").as_uri()


def fake_npm(folder: Path, *, fail: bool = False) -> tuple[str, Path]:
    """An ``npm`` that logs its arguments and packs :data:`NPM_BYTES` (or fails)."""
    log = folder / "npm-calls.txt"
    script = folder / "npm"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, pathlib, sys\n"
        f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        f"if {fail}: sys.exit('npm error code E404')\n"
        "if sys.argv[1] == 'view':\n"
        f"    print(json.dumps({{'integrity': {sri(NPM_BYTES)!r}}}))\n"
        "else:\n"
        f"    pathlib.Path({f'{NAME}-{VERSION}.tgz'!r}).write_bytes({NPM_BYTES!r})\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script), log


def test_integrity_check_accepts_the_right_digest_and_names_a_wrong_one(tmp_path):
    path = tmp_path / "a.tgz"
    path.write_bytes(b"abc")
    _npm.check_integrity(path, sri(b"abc"))
    _npm.check_integrity(path, f"sha1-AAAA {sri(b'abc')}")  # several SRI entries: sha512 counts
    with pytest.raises(ValueError, match=r"a\.tgz has sha512-.* but the npm registry gives"):
        _npm.check_integrity(path, sri(b"abd"))
    with pytest.raises(ValueError, match="no sha512"):
        _npm.check_integrity(path, "sha1-qZk+NkcGgWq6PiVxeFDCbJzQ2J0=")


def test_https_download_writes_the_checked_file(tmp_path):
    registry = make_registry(tmp_path, REGISTRY_BYTES)
    folder = tmp_path / "cache" / "emoji"
    path = _npm.fetch_tarball(NAME, VERSION, folder, npm=None, registry=registry, progress=False)
    assert path == folder / f"{NAME}-{VERSION}.tgz"
    assert path.read_bytes() == REGISTRY_BYTES
    assert [p.name for p in folder.iterdir()] == [path.name]  # no temporary file left


def test_a_corrupt_download_is_not_kept(tmp_path):
    registry = make_registry(tmp_path, REGISTRY_BYTES, integrity=sri(b"something else"))
    folder = tmp_path / "cache"
    with pytest.raises(ValueError, match="corrupt or was altered"):
        _npm.fetch_tarball(NAME, VERSION, folder, npm=None, registry=registry, progress=False)
    assert list(folder.iterdir()) == []


class _BrokenStream(io.BytesIO):
    """A response that breaks after 1000 bytes."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}

    def read(self, size: int = -1) -> bytes:
        if self.tell() >= 1000:
            raise ConnectionResetError("connection reset by peer")
        return super().read(min(size, 500))


def test_an_interrupted_download_leaves_the_old_file_and_no_partial_one(tmp_path):
    registry = make_registry(tmp_path, REGISTRY_BYTES)
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / f"{NAME}-{VERSION}.tgz").write_bytes(b"old")

    def opener(url: str, timeout: float):
        if url.endswith(".tgz"):
            return _BrokenStream(REGISTRY_BYTES)
        return open(url.removeprefix("file://"), "rb")

    with pytest.raises(OSError, match="connection reset by peer"):
        _npm.fetch_tarball(
            NAME, VERSION, folder, npm=None, registry=registry, progress=False, opener=opener
        )
    assert [p.name for p in folder.iterdir()] == [f"{NAME}-{VERSION}.tgz"]
    assert (folder / f"{NAME}-{VERSION}.tgz").read_bytes() == b"old"


def test_npm_comes_first_and_is_checked_against_npm_view(tmp_path):
    registry = make_registry(tmp_path, REGISTRY_BYTES)
    npm, log = fake_npm(tmp_path)
    path = _npm.fetch_tarball(NAME, VERSION, tmp_path / "c", npm=npm, registry=registry,
                              progress=False)  # fmt: skip
    assert path.read_bytes() == NPM_BYTES
    assert log.read_text().splitlines() == [
        f"view {NAME}@{VERSION} dist --json",
        f"pack {NAME}@{VERSION}",
    ]
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_a_failing_npm_falls_back_to_https(tmp_path):
    registry = make_registry(tmp_path, REGISTRY_BYTES)
    npm, log = fake_npm(tmp_path, fail=True)
    path = _npm.fetch_tarball(NAME, VERSION, tmp_path / "c", npm=npm, registry=registry,
                              progress=False)  # fmt: skip
    assert path.read_bytes() == REGISTRY_BYTES
    assert log.read_text().splitlines() == [f"view {NAME}@{VERSION} dist --json"]


def test_offline_fails_at_once_with_what_to_do(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    for proxy in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    npm, log = fake_npm(tmp_path)
    folder = tmp_path / "cache"
    with pytest.raises(OSError) as info:
        _npm.fetch_tarball(NAME, VERSION, folder, npm=npm, registry="https://registry.example")
    message = str(info.value)
    assert f"could not download the npm package {NAME}@{VERSION} into {folder}" in message
    assert "https://registry.example is unreachable" in message
    assert (
        f"npm pack {NAME}@{VERSION}" in message and str(folder / f"{NAME}-{VERSION}.tgz") in message
    )
    assert not log.exists()  # npm was not even started


def test_an_unreadable_registry_names_the_url(tmp_path):
    with pytest.raises(OSError, match=r"could not download the npm package.*No such file"):
        _npm.fetch_tarball(NAME, VERSION, tmp_path / "c", npm=None,
                           registry=(tmp_path / "none").as_uri(), progress=False)  # fmt: skip


def test_emoji_fetch_downloads_only_the_missing_tarballs(tmp_path, monkeypatch):
    data = {style: f"{style} drawings".encode() * 100 for style in _emoji.STYLES}
    registry = None
    for style in _emoji.STYLES:
        registry = make_registry(
            tmp_path / "remote",
            data[style],
            name=_emoji.package_name(style),
            version=_emoji.VERSION,
        )
    monkeypatch.setattr(
        _emoji, "SHA256", {s: hashlib.sha256(d).hexdigest() for s, d in data.items()}
    )
    folder = tmp_path / "emoji"
    folder.mkdir()
    google = folder / _emoji.tarball_name("google")
    google.write_bytes(data["google"])
    before = google.stat().st_mtime_ns
    found = _emoji.fetch_tarballs(folder, npm=None, registry=registry, progress=False)
    assert found == {s: folder / _emoji.tarball_name(s) for s in _emoji.STYLES}
    assert found["twitter"].read_bytes() == data["twitter"]
    assert google.stat().st_mtime_ns == before  # present: not downloaded again
