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


def test_export_opset_range_is_a_usage_error(capsys) -> None:
    # --opset 30 used to print an onnxscript traceback, exit 0 and write opset 18
    from cprfl_zoo.export import check_opset, max_opset

    high = max_opset()
    for opset in ("16", str(high + 1), "30", "x"):
        with pytest.raises(SystemExit) as info:
            main(["export", "m", "--output", "m.onnx", "--opset", opset])
        assert info.value.code == 2
        err = capsys.readouterr().err
        expected = "expected an integer" if opset == "x" else f"opset {opset} is not supported"
        assert f"argument --opset: {expected}" in err
    with pytest.raises(ValueError, match=f"takes 17 to {high}"):
        check_opset(high + 1)
    with pytest.raises(ValueError, match="opset must be an integer"):
        check_opset(18.0)
    args = build_parser().parse_args(["export", "m", "--output", "m.onnx", "--opset", str(high)])
    assert args.opset == high


def test_export_suffix_must_match_format(capsys) -> None:
    assert main(["export", "m", "--format", "pt2", "--output", "m.onnx"]) == 1
    assert "m.onnx is named .onnx but the format is pt2" in capsys.readouterr().err
    assert main(["export", "m", "--format", "onnx", "--output", "M.PT2"]) == 1
    assert "M.PT2 is named .pt2 but the format is onnx" in capsys.readouterr().err


def test_export_never_writes_over_the_model_or_an_existing_file(tmp_path, capsys) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    link = tmp_path / "link.pt2"
    link.symlink_to(model / "model.safetensors")
    for output in (model / "model.safetensors", link):
        for extra in ([], ["--overwrite"]):
            argv = ["export", str(model), "--format", "pt2", "--output", str(output), *extra]
            assert main(argv) == 1
            assert "refusing to write over it" in capsys.readouterr().err
    assert (model / "model.safetensors").read_bytes() == b"weights"
    assert main(["export", f"local-dir:{model}", "--format", "pt2", "--output", str(model)]) == 1
    assert "is a folder; give a file name" in capsys.readouterr().err
    existing = tmp_path / "old.onnx"
    existing.write_bytes(b"old")
    assert main(["export", str(model), "--output", str(existing)]) == 1
    assert "old.onnx already exists; pass --overwrite" in capsys.readouterr().err
