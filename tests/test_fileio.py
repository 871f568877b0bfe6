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


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    import hashlib

    from cprfl_zoo.fileio import file_sha256

    data = bytes(range(256)) * 20_000  # more than one 4 MiB block
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_cache_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from cprfl_zoo.fileio import cache_folder

    monkeypatch.setenv("CPRFL_ZOO_CACHE", str(tmp_path / "root"))
    assert cache_folder("lt_splits") == tmp_path / "root" / "lt_splits"
    assert cache_folder("lt_splits", tmp_path / "mine") == tmp_path / "mine"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_folder("x", "~/c") == tmp_path / "home" / "c"


def test_atomic_folder_replaces_files_and_moves_last_ones_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from cprfl_zoo import fileio

    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("old")
    (target / "weights").write_text("old")
    (target / "keep.txt").write_text("kept")
    moved: list[str] = []
    real_replace = os.replace

    def replace(src, dst):
        # when the weights arrive, the old config must already be gone
        if Path(dst).name == "weights":
            assert not (target / "config.json").exists()
        moved.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", replace)
    with fileio.atomic_folder(target, last=("config.json",)) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        (tmp / "config.json").write_text("new")
        (tmp / "weights").write_text("new")
    assert moved == ["weights", "config.json"]
    assert {p.name: p.read_text() for p in target.iterdir()} == {
        "config.json": "new",
        "weights": "new",
        "keep.txt": "kept",
    }
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # the temporary folder is gone


def test_atomic_folder_leaves_the_target_alone_on_error(tmp_path: Path) -> None:
    from cprfl_zoo.fileio import atomic_folder

    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("old")
    with (
        pytest.raises(RuntimeError, match="boom"),
        atomic_folder(target, last=("config.json",)) as tmp,
    ):
        (tmp / "config.json").write_text("new")
        raise RuntimeError("boom")
    assert (target / "config.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    (tmp_path / "file").write_text("x")
    with (
        pytest.raises(ValueError, match="exists and is not a folder"),
        atomic_folder(tmp_path / "file"),
    ):
        pass


def test_listed_shows_ten_names_then_a_count() -> None:
    from cprfl_zoo.messages import listed

    assert listed(["a", "b"]) == "a, b"
    names = [f"n{i}" for i in range(13)]
    assert listed(names) == ", ".join(names[:10]) + ", ... and 3 more"
