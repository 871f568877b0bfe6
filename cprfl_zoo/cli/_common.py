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
    "apply_pixel_limit",
    "check_output_file",
    "load_model_spec",
    "progress_option",
    "read_class_names",
    "torch_device",
    "worker_error_line",
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


def torch_device(text: str) -> str:
    """Parse ``--device``: a torch device that exists here and holds data (not ``meta``).

    torch is imported only when the option is given. Creating an empty tensor there checks that
    the backend is available (``cuda`` on a machine without a GPU, ``cuda:3`` with one GPU).

    Args:
        text: The option's value (``cpu``, ``cuda``, ``cuda:1``, ``mps``, ...).

    Returns:
        ``text``, unchanged.

    Raises:
        argparse.ArgumentTypeError: If ``text`` is no torch device, is ``meta``, or is not
            available on this machine (a usage error, exit status 2).
    """
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"expected a torch device (cpu, cuda, cuda:1, mps, ...), got {text!r}"
        ) from None
    if device.type == "meta":
        raise argparse.ArgumentTypeError(
            "'meta' tensors hold no values, so nothing can be computed there; use cpu or cuda"
        )
    if device.type == "cuda" and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(
                f"device {text!r} is not available here ({count} CUDA device(s): cuda:0 to "
                f"cuda:{count - 1})"
            )
    try:
        torch.empty(0, device=device)
    except Exception as e:  # torch raises RuntimeError, AssertionError, ... per backend
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise argparse.ArgumentTypeError(
            f"device {text!r} is not available here ({reason})"
        ) from None
    return text


def add_run_arguments(
    p: argparse.ArgumentParser, *, batch_size: int, batch_help: str, workers: bool = True
) -> None:
    """Declare ``--batch-size``, ``--device``, ``--no-progress`` and the image-decoding options.

    The values are checked by argparse (:func:`cprfl_zoo.cli_args.positive_int` for the batch
    size, :func:`torch_device` for the device, :func:`cprfl_zoo.cli_args.non_negative_int` for
    the workers and the pixel limit), so a bad one is a usage error (exit status 2) before the
    command runs.

    Args:
        p: The subcommand's parser.
        batch_size: The command's default ``--batch-size``.
        batch_help: What a batch is, for the help text ("images per batch").
        workers: Whether the command decodes images in DataLoader workers (``--workers``,
            default 2, and ``--max-image-pixels``, read by :func:`apply_pixel_limit`).
    """
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=batch_size,
        metavar="N",
        help=f"{batch_help} (default: %(default)s)",
    )
    p.add_argument(
        "--device",
        type=torch_device,
        default=None,
        help="torch device (default: cuda if available)",
    )
    if workers:
        p.add_argument(
            "--workers",
            type=non_negative_int,
            default=2,
            metavar="N",
            help="DataLoader workers decoding images (default: %(default)s)",
        )
        p.add_argument(
            "--max-image-pixels",
            type=non_negative_int,
            default=None,
            metavar="N",
            help="refuse images of more pixels, before decoding them; 0: no limit (default: "
            "Pillow's PIL.Image.MAX_IMAGE_PIXELS, 89,478,485)",
        )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def check_output_file(path: str, option: str = "--output") -> None:
    """Check, before a long job, that a file can be written at ``path``.

    Args:
        path: The output file; missing parent folders are created when it is written.
        option: The option that named it, for the message.

    Raises:
        CommandError: If ``path`` is a folder, or its nearest existing parent is a file or
            cannot be written in.
    """
    import os

    target = Path(path)
    if target.is_dir():
        raise CommandError(f"{option} {path} is a folder; give a file name")
    parent = target.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise CommandError(f"{option} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CommandError(f"{option} {path}: no permission to write in {parent}")


def apply_pixel_limit(args: argparse.Namespace) -> None:
    """Set ``PIL.Image.MAX_IMAGE_PIXELS`` from ``--max-image-pixels`` (0: no limit), if given.

    The DataLoaders of the commands pass it on to their workers
    (:func:`cprfl_zoo.data.images.pixel_limit_worker_init`).
    """
    limit = getattr(args, "max_image_pixels", None)
    if limit is not None:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = limit or None


def worker_error_line(error: BaseException) -> str | None:
    """The one line that matters of an error re-raised from a ``DataLoader`` worker.

    torch re-raises a worker's exception with the worker's whole traceback as its message; the
    last line of that traceback is the original ``Type: message``.

    Args:
        error: Any exception.

    Returns:
        The original message (without its type) and the worker, or ``None`` if ``error`` did
        not come from a worker.
    """
    text = str(error)
    first, _, rest = text.partition("\n")
    if "DataLoader worker" not in first or "Traceback" not in rest:
        return None
    last = rest.rstrip().splitlines()[-1]
    _, sep, message = last.partition(": ")
    where = first.split(" in ", 1)[-1].rstrip(".")
    return f"{message if sep else last} (in {where})"


def progress_option(args: argparse.Namespace) -> bool | None:
    """The ``progress=`` of the library calls: False with ``--no-progress``, else None (auto)."""
    return False if args.no_progress else None
