"""What the ``cprfl-zoo`` subcommands share.

The user's error (:class:`CommandError`), the readers of the common arguments (``--classes``,
``MODEL``) and the argument groups several commands declare the same way. Only the standard
library and :mod:`cprfl_zoo.cli_args` are imported here at module level; the readers import what
they need when called, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..cli_args import non_negative_int, positive_int

if TYPE_CHECKING:
    from ..model import CPRFL

__all__ = [
    "CommandError",
    "add_model_argument",
    "add_run_arguments",
    "load_model_spec",
    "progress_option",
    "read_class_names",
]


class CommandError(Exception):
    """A subcommand failed for a reason the user can fix; reported without a traceback."""


def read_class_names(source: str) -> list[str]:
    """Read ``--classes``: :func:`cprfl_zoo.data.read_class_names`, with the user's errors.

    Args:
        source: A class file (one name per line, or ``name id`` lines) or ``"coco-lt"`` /
            ``"voc-lt"``.

    Returns:
        The class names, in order.

    Raises:
        CommandError: If the file does not exist and ``source`` is no built-in list, is a
            folder, is not UTF-8 (file and line named), or holds no names or a duplicate.
    """
    from ..data import read_class_names as read

    try:
        return read(source)
    except (OSError, ValueError) as e:
        raise CommandError(f"--classes {e}") from None


def load_model_spec(spec: str) -> CPRFL:
    """Load a saved CPRFL model named on the command line (the ``MODEL`` argument).

    Args:
        spec: A saved model folder, ``local-dir:<folder>`` or ``hf-hub:<repo>[@revision]``.

    Returns:
        The model, in eval mode.

    Raises:
        CommandError: If ``spec`` names no saved model.
    """
    from ..factory import create_cprfl

    if not spec.startswith(("hf-hub:", "local-dir:")):
        if not Path(spec).is_dir():
            raise CommandError(
                f"MODEL {spec}: not a folder; give a saved model folder, local-dir:<folder> or "
                "hf-hub:<repo>"
            )
        spec = f"local-dir:{spec}"
    return create_cprfl(spec).eval()


def add_model_argument(p: argparse.ArgumentParser) -> None:
    """Declare the positional ``MODEL`` that :func:`load_model_spec` reads (``args.model``)."""
    p.add_argument(
        "model", metavar="MODEL", help="saved model folder, local-dir:<dir> or hf-hub:<id>"
    )


def add_run_arguments(
    p: argparse.ArgumentParser, *, batch_size: int, batch_help: str, workers: bool = True
) -> None:
    """Declare ``--batch-size``, ``--device``, ``--workers`` and ``--no-progress``.

    The values are checked by argparse (:func:`cprfl_zoo.cli_args.positive_int` for the batch
    size, :func:`cprfl_zoo.cli_args.non_negative_int` for the workers), so a bad one is a usage
    error (exit status 2) before the command runs.

    Args:
        p: The subcommand's parser.
        batch_size: The command's default ``--batch-size``.
        batch_help: What a batch is, for the help text ("images per batch").
        workers: Whether the command has DataLoader workers (``--workers``, default 2).
    """
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=batch_size,
        metavar="N",
        help=f"{batch_help} (default: %(default)s)",
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    if workers:
        p.add_argument(
            "--workers",
            type=non_negative_int,
            default=2,
            metavar="N",
            help="DataLoader workers decoding images (default: %(default)s)",
        )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def progress_option(args: argparse.Namespace) -> bool | None:
    """The ``progress=`` of the library calls: False with ``--no-progress``, else None (auto)."""
    return False if args.no_progress else None
