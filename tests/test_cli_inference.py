"""``cprfl-zoo predict``, ``evaluate``, ``calibrate`` (cprfl_zoo/cli/inference.py): arguments and
readers; the commands run on a saved model in tests/test_predict.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from cprfl_zoo.cli import CommandError, build_parser, main, read_class_counts


def test_read_class_counts_skips_whitespace_only_lines(tmp_path: Path) -> None:
    # a line of spaces (or the lone CR of a CRLF file's last line) used to be entry '' and fail
    path = tmp_path / "freq.txt"
    path.write_bytes(b"5\r\n  \r\n7\r\n\t\n3\r\n\r")
    assert read_class_counts(str(path), 3) == [5, 7, 3]
    path.write_text("5\n \n7\n", encoding="utf-8")
    with pytest.raises(CommandError, match=r"2 counts for a model with 3 classes"):
        read_class_counts(str(path), 3)
    path.write_text("5\nx\n7\n", encoding="utf-8")
    with pytest.raises(CommandError, match=r"entry 2 is 'x', not a whole number"):
        read_class_counts(str(path), 3)


def test_parser_has_the_prediction_commands() -> None:
    parser = build_parser()
    args = parser.parse_args(["predict", "m", "a.jpg", "photos/"])
    assert args.images == ["a.jpg", "photos/"] and args.batch_size == 32 and args.workers == 2
    assert args.output is None and args.threshold is None and args.device is None
    args = parser.parse_args(["evaluate", "m", "test.txt", "--images", "root"])
    assert args.list_file == "test.txt" and args.class_freq is None and args.output is None
    args = parser.parse_args(["calibrate", "m", "val.txt", "--images", "r", "--output", "o"])
    assert args.min_positives == 1 and args.output == "o"
    with pytest.raises(SystemExit):
        parser.parse_args(["calibrate", "m", "val.txt", "--images", "r"])  # --output required


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["predict", "m", "a.jpg", "--threshold", "1.5"],
            "argument --threshold: expected a number in [0, 1], got '1.5'",
        ),
        (
            ["predict", "m", "a.jpg", "--threshold", "nan"],
            "argument --threshold: expected a finite number, got 'nan'",
        ),
        (
            ["calibrate", "m", "v.txt", "--images", "r", "--output", "o", "--min-positives", "0"],
            "argument --min-positives: expected a positive integer, got '0'",
        ),
    ],
)
def test_bad_values_are_usage_errors(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_threshold_bounds_are_accepted() -> None:
    parser = build_parser()
    assert parser.parse_args(["predict", "m", "a", "--threshold", "0"]).threshold == 0.0
    assert parser.parse_args(["predict", "m", "a", "--threshold", "1"]).threshold == 1.0


def test_class_freq_counts_the_training_list(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("a.jpg 0 2\nb.jpg 2\nc.jpg\nd.jpg 2 0\n")
    assert read_class_counts(str(train), 3) == [2, 0, 3]  # images holding each class
    counts = tmp_path / "counts.txt"
    counts.write_text("2\n0\n3\n")
    assert read_class_counts(str(counts), 3) == [2, 0, 3]
    train.write_text("a.jpg 0 7\n")
    with pytest.raises(CommandError, match=r"--class-freq .*train\.txt:1: class id 7 out of"):
        read_class_counts(str(train), 3)
