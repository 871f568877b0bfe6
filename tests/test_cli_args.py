from __future__ import annotations

import argparse

import pytest

from cprfl_zoo import cli_args


@pytest.mark.parametrize(
    ("parse", "good", "bad", "message"),
    [
        (cli_args.positive_int, {"1": 1, "12": 12}, ["0", "-3", "1.5", "x"], "a positive integer"),
        (cli_args.non_negative_int, {"0": 0, "4": 4}, ["-1", "x"], "an integer >= 0"),
        (cli_args.positive_float, {"0.5": 0.5, "3": 3.0}, ["0", "-1", "x"], "a number > 0"),
        (cli_args.non_negative_float, {"0": 0.0}, ["-0.1", "x"], "a number >= 0"),
        (cli_args.fraction, {"0": 0.0, "0.25": 0.25}, ["1", "-0.1"], r"a number in \[0, 1\)"),
        (cli_args.probability, {"0": 0.0, "1": 1.0}, ["1.01", "-1", "x"], r"a number in \[0, 1\]"),
    ],
)
def test_argument_types(parse, good: dict, bad: list[str], message: str) -> None:
    for text, value in good.items():
        assert parse(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=rf"expected {message}.*got '{text}'"):
            parse(text)


@pytest.mark.parametrize("parse", [cli_args.positive_float, cli_args.probability])
def test_non_finite_numbers_are_refused(parse) -> None:
    for text in ("nan", "inf"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected a finite number"):
            parse(text)


def test_the_examples_use_the_shared_types() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "examples"
    for name in ("predict.py", "quickstart.py", "train.py"):
        text = (root / name).read_text(encoding="utf-8")
        assert "from cprfl_zoo.cli_args import" in text
        assert "def positive_int" not in text
