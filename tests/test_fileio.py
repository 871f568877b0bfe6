from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cprfl_zoo.fileio import atomic_path, atomic_write_bytes, atomic_write_text, cache_root


def test_atomic_write_creates_folder_and_content(tmp_path: Path):
    path = tmp_path / "a" / "b" / "file.bin"
    assert atomic_write_bytes(path, b"\x00\x01") == path
    assert path.read_bytes() == b"\x00\x01"
    atomic_write_text(path, "héllo", mode=0o644)
    assert path.read_text(encoding="utf-8") == "héllo"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["file.bin"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="writer failed"), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_cache_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("CPRFL_ZOO_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "explicit"
    monkeypatch.delenv("CPRFL_ZOO_CACHE")
    assert cache_root() == tmp_path / "xdg" / "cprfl_zoo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "cprfl_zoo"
