"""``cprfl-zoo predict``, ``evaluate`` and ``calibrate``: a saved model run on images.

``predict`` labels image files; ``evaluate`` and ``calibrate`` read a labelled image list (the
LT benchmarks' ``relative/path.jpg id id ...`` format) and score the model on it or choose its
per-class thresholds. All three share the loader arguments of
:func:`cprfl_zoo.cli._common.add_run_arguments`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..cli_args import positive_int, probability
from ._common import (
    CommandError,
    add_model_argument,
    add_run_arguments,
    apply_pixel_limit,
    check_output_file,
    load_model_spec,
    progress_option,
    worker_error_line,
)

if TYPE_CHECKING:
    from torch import Tensor, nn

    from ..model import CPRFL

__all__ = [
    "add_calibrate",
    "add_evaluate",
    "add_predict",
    "evaluate_logits",
    "read_class_counts",
]

_logger = logging.getLogger(__name__)

_BATCH_SIZE = 32
_BATCH_HELP = "images per batch"


def _load_for_inference(args: argparse.Namespace) -> CPRFL:
    import torch

    apply_pixel_limit(args)
    model = load_model_spec(args.model)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device)


def _inference_module(model: CPRFL) -> nn.Module:
    """The deploy module (prompt side computed once for the label set), else the model itself."""
    try:
        return model.deploy()
    except ValueError:  # a head variant the deploy path does not implement
        return model


# ---------------------------------------------------------------------- predict
def add_predict(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``predict`` and its arguments."""
    p = subparsers.add_parser(
        "predict",
        help="predict the labels of image files (sigmoid, the model's thresholds)",
        description=(
            "Predict the labels of image files with a saved CPRFL model: sigmoid probabilities "
            "at the model's per-class thresholds (0.5 where uncalibrated). Unreadable images "
            "are reported by name and skipped. Writes JSON lines (.jsonl) or CSV (.csv) with "
            "--output, else prints one line per image (a file name with a control character "
            "or undecodable bytes is printed as a JSON string)."
        ),
    )
    add_model_argument(p)
    p.add_argument(
        "images", metavar="IMAGES", nargs="+", help="image files, folders or glob patterns"
    )
    p.add_argument("--output", default=None, help="preds.jsonl or preds.csv (written atomically)")
    p.add_argument(
        "--threshold",
        type=probability,
        default=None,
        metavar="T",
        help="one probability threshold for every class instead of the model's",
    )
    add_run_arguments(p, batch_size=_BATCH_SIZE, batch_help=_BATCH_HELP)
    p.set_defaults(func=_run_predict)


def _shown_name(name: str) -> str:
    """A file name on one line: as it is when printable, else as a JSON string with escapes.

    A name with a newline, a tab, another control character or bytes that are not UTF-8 (held
    as surrogates) would break the one-line-per-image output or the terminal's encoding; such a
    name, and one starting with a double quote, is written as ``json.dumps(name)``, which
    ``json.loads`` reads back exactly.
    """
    import json

    if name.isprintable() and not name.startswith('"'):
        return name
    return json.dumps(name)


def _utf8_name(name: str) -> str:
    r"""``name`` as valid UTF-8: the bytes of a non-UTF-8 file name as ``\xNN`` escapes."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    try:
        raw = name.encode("utf-8", "surrogateescape")  # the file name's bytes on POSIX
    except UnicodeEncodeError:  # a lone surrogate that is not an undecodable byte
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _predictions_text(predictions: list, suffix: str) -> str:
    import csv
    import io
    import json

    if suffix == ".csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["image", "labels", "probabilities"])
        escaped = []
        for pred in predictions:
            probs = ";".join(f"{p:.6f}" for p in pred.probabilities)
            name = _utf8_name(pred.source)
            if name != pred.source:
                escaped.append(name)
            writer.writerow([name, ";".join(pred.labels), probs])
        if escaped:
            print(
                f"{len(escaped)} file names are not UTF-8; the CSV has their undecodable bytes "
                f"as \\xNN escapes (first: {escaped[0]}); use .jsonl to keep them exactly",
                file=sys.stderr,
            )
        return buf.getvalue()
    # ensure_ascii: a non-UTF-8 name's bytes become \udcNN escapes that json.loads reads back
    return "".join(json.dumps(pred.as_dict()) + "\n" for pred in predictions)


def _run_predict(args: argparse.Namespace) -> int:
    from ..fileio import atomic_write_text
    from ..predict import Predictor, find_images

    suffix = Path(args.output).suffix.lower() if args.output else ""
    if args.output and suffix not in (".jsonl", ".csv"):
        raise CommandError(f"--output {args.output}: use a .jsonl or .csv file name")
    if args.output:
        check_output_file(args.output)
    try:
        paths = find_images(args.images)
    except FileNotFoundError as e:
        raise CommandError(f"IMAGES {e}") from None
    model = _load_for_inference(args)
    runner = _inference_module(model)
    predictor = Predictor(
        runner,
        thresholds=args.threshold,
        batch_size=args.batch_size,
        num_workers=args.workers,
        progress=progress_option(args),
    )
    predictions, failures = predictor.predict_files(paths)
    if args.output:
        atomic_write_text(args.output, _predictions_text(predictions, suffix), mode=0o644)
        print(f"{len(predictions)} images predicted: {args.output}")
    else:
        for pred in predictions:
            shown = ", ".join(
                f"{n} {p:.3f}" for n, p in zip(pred.labels, pred.probabilities, strict=True)
            )
            print(f"{_shown_name(pred.source)}\t{shown}")
    for path, error in failures:
        print(f"skipped {_shown_name(path)}: {error}", file=sys.stderr)
    if failures and not predictions:
        raise CommandError(f"none of the {len(failures)} images could be read")
    return 0


# ---------------------------------------------------------------------- image lists
def _add_list_args(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    p.add_argument(
        "list_file",
        metavar="LIST_FILE",
        help="image list: one 'relative/path.jpg id id ...' line per image (0-based class ids)",
    )
    p.add_argument("--images", required=True, help="folder the listed paths are relative to")
    add_run_arguments(p, batch_size=_BATCH_SIZE, batch_help=_BATCH_HELP)


def _list_logits(args: argparse.Namespace, model: CPRFL) -> tuple[Tensor, Tensor]:
    from torch.utils.data import DataLoader

    from ..data import MultiLabelImageList
    from ..data.images import pixel_limit_worker_init
    from ..predict import collect_logits, eval_transform

    try:
        dataset = MultiLabelImageList(
            args.list_file,
            args.images,
            transform=eval_transform(model),
            class_names=model.class_names,
        )
    except FileNotFoundError as e:
        raise CommandError(str(e)) from None
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        num_workers=args.workers,
        worker_init_fn=pixel_limit_worker_init() if args.workers else None,
    )
    runner = _inference_module(model)
    try:
        return collect_logits(runner, loader, progress=progress_option(args))
    except Exception as e:  # a worker's error comes back with the worker's traceback as message
        line = worker_error_line(e)
        if line is None:
            raise
        raise CommandError(line) from None


# ---------------------------------------------------------------------- evaluate
def _count_training_list(path: str, num_classes: int) -> list[int]:
    from ..data import class_counts, read_image_list

    try:
        entries = read_image_list(path, num_classes)
    except (OSError, ValueError) as e:
        raise CommandError(f"--class-freq {e}") from None
    return [int(c) for c in class_counts(entries)]


def read_class_counts(path: str, num_classes: int) -> list[int]:
    """Read per-class training counts: from the training list, or a file of counts.

    A training image list (``path id id ...`` lines, as ``examples/train.py`` reads) is counted:
    the number of images holding each class. Otherwise the file holds the counts themselves, a
    JSON list or one integer per line, in class order.

    Args:
        path: The file.
        num_classes: The model's number of classes.

    Returns:
        The counts.

    Raises:
        CommandError: If the file is missing, malformed or has the wrong length.
    """
    import json

    from ..data import read_text_lines

    try:
        lines = read_text_lines(path, "class-freq file")
    except (OSError, ValueError) as e:
        raise CommandError(f"--class-freq {e}") from None
    text = "\n".join(lines).strip()
    stripped = [s.strip() for s in lines]
    first = next((s.split()[0] for s in stripped if s), "")
    if first and not first.startswith("[") and not first.lstrip("+-").isdigit():
        return _count_training_list(path, num_classes)
    try:
        values = json.loads(text) if text.startswith("[") else [s for s in stripped if s]
    except json.JSONDecodeError as e:
        raise CommandError(f"--class-freq {path}: not a valid JSON list ({e.msg})") from None
    counts = []
    for i, value in enumerate(values):
        try:
            count = int(value)
        except (TypeError, ValueError):
            raise CommandError(
                f"--class-freq {path}: entry {i + 1} is {value!r}, not a whole number"
            ) from None
        if count < 0 or str(count) != str(value).strip():
            raise CommandError(f"--class-freq {path}: entry {i + 1} is {value!r}, not a count >= 0")
        counts.append(count)
    if len(counts) != num_classes:
        raise CommandError(
            f"--class-freq {path}: {len(counts)} counts for a model with {num_classes} classes"
        )
    return counts


def evaluate_logits(
    logits: Tensor,
    targets: Tensor,
    thresholds: Tensor,
    class_counts: Sequence[int] | None = None,
) -> dict[str, float]:
    """Compute mAP (head/medium/tail too) and OP/OR/OF1/CP/CR/CF1 at per-class thresholds.

    A label counts as predicted when its float32 ``sigmoid`` is ``>=`` its float32 threshold, as
    :func:`cprfl_zoo.predict.predict` decides. The metrics work in chunks of classes or images,
    so memory stays bounded on large evaluation sets.

    Args:
        logits: ``(N, C)`` logits.
        targets: ``(N, C)`` multi-hot targets.
        thresholds: ``(C,)`` probability thresholds.
        class_counts: Training positives per class, for the head/medium/tail split.

    Returns:
        Percentages keyed ``mAP``, ``mAP_head``, ..., ``OP``, ``OR``, ``OF1``, ``CP``, ``CR``,
        ``CF1``.
    """
    import torch

    from ..metrics import long_tail_map, long_tail_split, mean_average_precision, threshold_metrics

    if class_counts is not None:
        results = long_tail_map(logits, targets, long_tail_split(class_counts)).as_dict()
    else:
        results = {"mAP": mean_average_precision(logits, targets).map}
    # float32 sigmoid against float32 thresholds, as predict compares them
    limits = thresholds.to(torch.float32)
    results.update(threshold_metrics(logits, targets, threshold=limits, from_logits=True).as_dict())
    return {k: 100 * v for k, v in results.items()}


def add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``evaluate`` and its arguments."""
    p = subparsers.add_parser(
        "evaluate",
        help="score a saved model on a labelled image list (mAP, OF1, CF1, ...)",
        description=(
            "Evaluate a saved CPRFL model on an image list: mAP (with head/medium/tail mAP "
            "when --class-freq gives the training counts) and OP/OR/OF1/CP/CR/CF1 at the "
            "model's per-class thresholds. Prints a table; --output writes the numbers as JSON."
        ),
    )
    _add_list_args(p)
    p.add_argument(
        "--class-freq",
        default=None,
        help="for the head/medium/tail split: the training image list ('path id id ...' lines; "
        "its labels are counted), or training positives per class (a JSON list or one count "
        "per line)",
    )
    p.add_argument("--output", default=None, help="write the metrics to this JSON file")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    import json
    import math

    from ..fileio import atomic_write_text

    model = _load_for_inference(args)
    counts = read_class_counts(args.class_freq, model.num_classes) if args.class_freq else None
    logits, targets = _list_logits(args, model)
    results = evaluate_logits(logits, targets, model.get_thresholds(), counts)
    which = "calibrated per-class" if model.thresholds is not None else "uncalibrated 0.5"
    print(f"{args.model} on {args.list_file}: {len(logits)} images, {which} thresholds")
    print("| metric | value (%) |")
    print("| --- | --- |")
    for key, value in results.items():
        print(f"| {key} | {'n/a' if math.isnan(value) else f'{value:.2f}'} |")
    if args.output:
        payload = {
            "model": args.model,
            "list_file": args.list_file,
            "num_images": len(logits),
            "thresholds": "per-class" if model.thresholds is not None else "0.5",
            "metrics": {k: (None if math.isnan(v) else v) for k, v in results.items()},
        }
        atomic_write_text(args.output, json.dumps(payload, indent=2) + "\n", mode=0o644)
        print(f"written: {args.output}")
    return 0


# ---------------------------------------------------------------------- calibrate
def add_calibrate(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``calibrate`` and its arguments."""
    p = subparsers.add_parser(
        "calibrate",
        help="calibrate per-class thresholds on a validation list and save the model with them",
        description=(
            "Choose per-class probability thresholds that maximise each class's F1 on a "
            "labelled validation list (classes with fewer than --min-positives positives get "
            "the global F1-optimal threshold) and save the model with them to --output "
            "(config.json model_args.thresholds; predict, evaluate and export use them)."
        ),
    )
    _add_list_args(p)
    p.add_argument(
        "--output",
        required=True,
        help="new or empty folder to save the calibrated model to (not MODEL's folder)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a model already saved in --output"
    )
    p.add_argument(
        "--min-positives",
        type=positive_int,
        default=1,
        metavar="K",
        help="classes with fewer validation positives get the global threshold (%(default)s)",
    )
    p.set_defaults(func=_run_calibrate)


def _run_calibrate(args: argparse.Namespace) -> int:
    from ..thresholds import calibrate_thresholds
    from ._outputs import check_output_folder

    check_output_folder("--output", args.output, args.model, args.overwrite)
    model = _load_for_inference(args)
    logits, targets = _list_logits(args, model)
    result = calibrate_thresholds(logits, targets, min_positives=args.min_positives)
    if not bool(result.num_positives.any()):
        raise CommandError(
            f"{args.list_file}: no image has a positive label, so there is no F1 to calibrate "
            f"on; nothing was saved to {args.output}"
        )
    model.set_thresholds(result.as_list())
    model.cpu().save_pretrained(args.output)
    print(
        f"calibrated {model.num_classes} thresholds on {len(logits)} images: global "
        f"{result.global_threshold:.3f} (OF1 {100 * result.global_f1:.2f}), per class "
        f"{float(result.thresholds.min()):.3f}..{float(result.thresholds.max()):.3f}; "
        f"{len(result.fallback_classes)} classes without enough positives use the global one"
    )
    print(f"written: {args.output}")
    return 0
