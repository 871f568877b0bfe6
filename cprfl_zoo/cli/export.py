"""``cprfl-zoo export``: a saved model's deploy module as ONNX or a torch.export program."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli_args import positive_int
from ._common import CommandError, add_model_argument, load_model_spec
from ._outputs import check_output_file

__all__ = ["add_export"]


def add_export(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``export`` and its arguments."""
    p = subparsers.add_parser(
        "export",
        help="export a saved model as ONNX or a torch.export program (.pt2)",
        description=(
            "Export a saved CPRFL model's deploy module (prompt side precomputed for its label "
            "set) as ONNX (dynamo exporter) or torch.export .pt2, with a symbolic batch "
            "dimension. The file carries the class names, the activation (sigmoid), the "
            "per-class thresholds and the preprocessing config as metadata."
        ),
    )
    add_model_argument(p)
    p.add_argument("--format", choices=["onnx", "pt2"], default=None, help="default: from --output")
    p.add_argument("--output", required=True, help="file to write (.onnx or .pt2)")
    p.add_argument(
        "--input-size",
        type=positive_int,
        nargs="+",
        metavar="N",
        default=None,
        help="image size H W (or C H W) of the export (default: the model's input_size)",
    )
    p.add_argument(
        "--opset",
        type=onnx_opset,
        default=18,
        help="ONNX opset, 17 to the highest the installed onnxscript converts to (default: "
        "%(default)s)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --output if it exists (never a file of MODEL)",
    )
    p.set_defaults(func=_run_export)


def onnx_opset(text: str) -> int:
    """Parse ``--opset``: an integer in the exporter's range (a usage error otherwise)."""
    from ..export import check_opset

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    try:
        return check_opset(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _run_export(args: argparse.Namespace) -> int:
    from ..export import check_suffix, export_model

    fmt = args.format
    if fmt is None:
        suffix = Path(args.output).suffix.lower()
        if suffix not in (".onnx", ".pt2"):
            raise CommandError(
                f"--output {args.output}: pass --format onnx|pt2 or use a .onnx / .pt2 name"
            )
        fmt = suffix[1:]
    try:
        check_suffix(args.output, fmt)
    except ValueError as e:
        raise CommandError(f"--output {e}") from None
    if args.input_size is not None and len(args.input_size) not in (2, 3):
        raise CommandError(f"--input-size takes H W or C H W, got {args.input_size}")
    check_output_file("--output", args.output, args.model, args.overwrite)
    model = load_model_spec(args.model)
    path = export_model(model, args.output, fmt, input_size=args.input_size, opset=args.opset)
    print(f"exported {args.model} ({model.num_classes} classes) as {fmt}: {path}")
    return 0
