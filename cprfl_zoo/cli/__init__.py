"""The ``cprfl-zoo`` command line.

One module per command group: :mod:`~cprfl_zoo.cli.embed` (``embed``),
:mod:`~cprfl_zoo.cli.convert` (``convert-official``), :mod:`~cprfl_zoo.cli.export` (``export``)
and :mod:`~cprfl_zoo.cli.inference` (``predict``, ``evaluate``, ``calibrate``); what they share
(:class:`CommandError`, the ``--classes`` and ``MODEL`` readers, the ``--batch-size`` /
``--device`` / ``--workers`` / ``--no-progress`` group) is in :mod:`~cprfl_zoo.cli._common`.

Each subcommand is a pair of functions: ``add_<name>(subparsers)`` declares its arguments and
sets ``func`` to ``_run_<name>(args) -> int``; :data:`_COMMANDS` lists the declarations. To add a
subcommand, write such a pair and append its ``add_`` function to :data:`_COMMANDS`. The command
modules import torch, open_clip and the model only inside their functions, so building the parser
stays cheap. No library module imports this package.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from .._version import __version__
from ._common import CommandError, load_model_spec, read_class_names
from .convert import add_convert_official
from .embed import add_embed
from .export import add_export
from .inference import (
    add_calibrate,
    add_evaluate,
    add_predict,
    evaluate_logits,
    read_class_counts,
)

__all__ = [
    "CommandError",
    "build_parser",
    "evaluate_logits",
    "load_model_spec",
    "main",
    "read_class_counts",
    "read_class_names",
]

_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_embed,
    add_convert_official,
    add_export,
    add_predict,
    add_evaluate,
    add_calibrate,
]


def build_parser() -> argparse.ArgumentParser:
    """Build the ``cprfl-zoo`` argument parser with every subcommand of :data:`_COMMANDS`.

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(
        prog="cprfl-zoo", description="Tools for cprfl_zoo, CPRFL on any timm backbone."
    )
    parser.add_argument("--version", action="version", version=f"cprfl-zoo {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (repeat for debug)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _COMMANDS:
        add(subparsers)
    return parser


def _log_huggingface_hub_once() -> None:
    """Print huggingface_hub's records once, through the root handler set up here.

    huggingface_hub gives its loggers a handler of their own and still passes every record on to
    the root logger, so with a root handler each of its warnings would print twice.
    """
    import huggingface_hub.utils.logging  # noqa: F401  (adds its handler when imported)

    hub = logging.getLogger("huggingface_hub")
    for handler in [h for h in hub.handlers if type(h) is logging.StreamHandler]:
        hub.removeHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cprfl-zoo`` command line.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 when the command failed. Bad usage (a missing or
        malformed argument, such as ``--batch-size 0``) exits with status 2 through
        :class:`SystemExit`, as argparse does.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    _log_huggingface_hub_once()
    try:
        return int(args.func(args))
    except (CommandError, ValueError, OSError, RuntimeError, ImportError) as e:
        print(f"cprfl-zoo {args.command}: error: {e}", file=sys.stderr)
        return 1
