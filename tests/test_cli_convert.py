"""``cprfl-zoo convert-official`` (cprfl_zoo/cli/convert.py); the conversion itself, through the
command too, is tested in tests/test_convert.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from cprfl_zoo.cli import build_parser, main


def test_convert_official_reports_a_folder_checkpoint(tmp_path: Path, capsys) -> None:
    argv = ["convert-official", str(tmp_path), "--classes", "voc-lt", "--out", str(tmp_path / "o")]
    assert main(argv) == 1
    assert "is a folder; expected the .pth / .pth.tar file" in capsys.readouterr().err


def test_convert_official_num_heads_is_a_positive_int(capsys) -> None:
    argv = ["convert-official", "x.pth", "--classes", "voc-lt", "--out", "o"]
    args = build_parser().parse_args(argv)
    assert args.num_heads == 8 and args.overwrite is False and args.repo_id is None
    with pytest.raises(SystemExit) as info:
        main([*argv, "--num-heads", "0"])
    assert info.value.code == 2
    assert "argument --num-heads: expected a positive integer, got '0'" in capsys.readouterr().err
