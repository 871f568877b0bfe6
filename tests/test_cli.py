"""The ``cprfl-zoo`` parser and entry point (cprfl_zoo/cli/__init__.py) and what the commands
share (cprfl_zoo/cli/_common.py): the ``--classes`` reader and the run arguments."""

from __future__ import annotations

import runpy
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from cprfl_zoo.class_lists import VOC_LT_CLASSES
from cprfl_zoo.cli import CommandError, build_parser, main, read_class_names

# each command with the run arguments, with what it needs to parse, and its default batch size
RUN_COMMANDS = {
    "embed": (["embed", "--classes", "voc-lt"], 256),
    "predict": (["predict", "m", "a.jpg"], 32),
    "evaluate": (["evaluate", "m", "test.txt", "--images", "root"], 32),
    "calibrate": (["calibrate", "m", "val.txt", "--images", "root", "--output", "o"], 32),
}


def test_console_script_is_declared() -> None:
    (ep,) = entry_points(group="console_scripts", name="cprfl-zoo")
    assert ep.value == "cprfl_zoo.cli:main"


def test_python_dash_m_runs_the_command(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["cprfl-zoo", "--version"])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("cprfl_zoo.cli", run_name="__main__")
    assert info.value.code == 0 and capsys.readouterr().out.startswith("cprfl-zoo ")


def test_usage_errors_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["embed"])
    assert info.value.code == 2 and "--classes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["embed", "--classes", "x", "--normalize", "--no-normalize"])
    assert info.value.code == 2 and "not allowed with" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and "cprfl-zoo" in capsys.readouterr().out


def test_parser_lists_subcommands() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {
        "embed",
        "convert-official",
        "export",
        "predict",
        "evaluate",
        "calibrate",
    }
    args = parser.parse_args(["embed", "--classes", "coco-lt"])
    assert args.model == "RN50-quickgelu" and args.pretrained is None and args.templates is None


@pytest.mark.parametrize("command", sorted(RUN_COMMANDS))
def test_run_arguments_are_shared(command: str) -> None:
    argv, batch_size = RUN_COMMANDS[command]
    args = build_parser().parse_args(argv)
    assert args.batch_size == batch_size and args.device is None and args.no_progress is False
    if command == "embed":
        assert not hasattr(args, "workers")  # no DataLoader
    else:
        assert args.workers == 2
    args = build_parser().parse_args([*argv, "--batch-size", "7", "--device", "cpu"])
    assert args.batch_size == 7 and args.device == "cpu"
    args = build_parser().parse_args([*argv, "--no-progress"])
    assert args.no_progress is True


@pytest.mark.parametrize("command", sorted(RUN_COMMANDS))
@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--batch-size", "0", "argument --batch-size: expected a positive integer, got '0'"),
        ("--batch-size", "-4", "argument --batch-size: expected a positive integer, got '-4'"),
        ("--batch-size", "1.5", "argument --batch-size: expected a positive integer, got '1.5'"),
        ("--workers", "-1", "argument --workers: expected an integer >= 0, got '-1'"),
        ("--workers", "two", "argument --workers: expected an integer >= 0, got 'two'"),
    ],
)
def test_bad_run_arguments_are_usage_errors(
    command: str, option: str, value: str, message: str, capsys
) -> None:
    # argparse refuses the value before the command runs (MODEL 'm' is never loaded)
    argv, _ = RUN_COMMANDS[command]
    with pytest.raises(SystemExit) as info:
        main([*argv, option, value])
    err = capsys.readouterr().err
    assert info.value.code == 2
    if command == "embed" and option == "--workers":
        assert "unrecognized arguments: --workers" in err
    else:
        assert f"cprfl-zoo {command}: error: {message}" in err


def test_workers_zero_is_accepted() -> None:
    argv, _ = RUN_COMMANDS["predict"]
    assert build_parser().parse_args([*argv, "--workers", "0"]).workers == 0


def test_read_class_names(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("a b\n\n c \n", encoding="utf-8")
    assert read_class_names(str(path)) == ["a b", "c"]
    assert read_class_names("voc-lt") == list(VOC_LT_CLASSES)


def test_read_class_names_is_the_data_reader(tmp_path: Path) -> None:
    # the CLI reads --classes as examples/train.py does: label files, duplicates refused
    path = tmp_path / "c.txt"
    path.write_text("dog 1\ncat 0\n", encoding="utf-8")
    assert read_class_names(str(path)) == ["cat", "dog"]
    path.write_text("cat\ncat\n", encoding="utf-8")
    with pytest.raises(CommandError, match=r"--classes .*c\.txt: duplicate class name 'cat'"):
        read_class_names(str(path))
    with pytest.raises(CommandError, match=r"--classes nope: no such file, and not a built-in"):
        read_class_names("nope")


def test_read_class_names_bad_files(tmp_path: Path) -> None:
    # a folder used to be "no such file"; other encodings a bare UnicodeDecodeError
    with pytest.raises(CommandError, match=r"--classes .* is a folder; expected a text file"):
        read_class_names(str(tmp_path))
    path = tmp_path / "c.txt"
    path.write_bytes(b"\xef\xbb\xbfcat\ndog\n")
    assert read_class_names(str(path)) == ["cat", "dog"]  # the BOM is not part of 'cat'
    path.write_bytes(b"cat\nd\xf6g\n")
    with pytest.raises(CommandError, match=r"--classes .*c\.txt:2: not UTF-8 text \(byte 0xf6"):
        read_class_names(str(path))


def test_load_model_spec_refuses_a_missing_folder(tmp_path: Path) -> None:
    from cprfl_zoo.cli import load_model_spec

    with pytest.raises(CommandError, match=r"MODEL .*nope: not a folder; give a saved model"):
        load_model_spec(str(tmp_path / "nope"))


def test_each_log_record_prints_once() -> None:
    """huggingface_hub's loggers have a handler of their own and also pass records to the root
    logger, which main sets up: its warnings (download retries...) printed twice."""
    import os
    import subprocess
    import textwrap

    code = textwrap.dedent("""
        import argparse, logging, sys
        import cprfl_zoo.cli as cli
        from huggingface_hub.utils import logging as hf_logging

        def warn(args):
            hf_logging.get_logger("huggingface_hub.file_download").warning("hub says hi")
            logging.getLogger("cprfl_zoo.test").warning("we say hi")
            return 0

        def build_parser():
            parser = argparse.ArgumentParser()
            parser.add_argument("-v", "--verbose", action="count", default=0)
            parser.set_defaults(func=warn, command="test")
            return parser

        cli.build_parser = build_parser
        sys.exit(cli.main([]))
    """)
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("hub says hi") == 1, done.stderr
    assert done.stderr.count("we say hi") == 1, done.stderr
