"""``cprfl-zoo export`` (cprfl_zoo/cli/export.py): its arguments; exporting a saved model
through the command is tested in tests/test_export.py."""

from __future__ import annotations

import pytest

from cprfl_zoo.cli import build_parser, main


def test_export_arguments() -> None:
    args = build_parser().parse_args(["export", "m", "--output", "m.onnx"])
    assert args.format is None and args.input_size is None and args.opset == 18
    args = build_parser().parse_args(
        ["export", "m", "--output", "m", "--input-size", "3", "8", "8"]
    )
    assert args.input_size == [3, 8, 8]


def test_export_bad_input_size(capsys) -> None:
    with pytest.raises(SystemExit) as info:  # a usage error, before MODEL is looked at
        main(["export", "m", "--output", "m.pt2", "--input-size", "64", "0"])
    assert info.value.code == 2
    assert "argument --input-size: expected a positive integer, got '0'" in capsys.readouterr().err
    # the count is the command's check: H W or C H W
    assert main(["export", "m", "--output", "m.pt2", "--input-size", "64"]) == 1
    assert "--input-size takes H W or C H W, got [64]" in capsys.readouterr().err
