"""The ``cprfl-zoo`` command line.

Each subcommand is a pair of functions: ``_add_<name>(subparsers)`` declares its arguments and
sets ``func`` to ``_run_<name>(args) -> int``; :data:`_COMMANDS` lists the declarations. To add a
subcommand, write such a pair and append its ``_add_`` function to :data:`_COMMANDS`.

``cprfl-zoo embed`` fills the class-embedding cache, e.g. on a machine with internet before
training offline::

    cprfl-zoo embed --classes classes.txt --model RN50-quickgelu --pretrained openai
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ._version import __version__

if TYPE_CHECKING:
    from torch import nn

    from .model import CPRFL

__all__ = ["build_parser", "main"]

_logger = logging.getLogger(__name__)


class CommandError(Exception):
    """A subcommand failed for a reason the user can fix; reported without a traceback."""


# ---------------------------------------------------------------------- embed
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
    from .data import read_class_names as read

    try:
        return read(source)
    except (OSError, ValueError) as e:
        raise CommandError(f"--classes {e}") from None


def _add_embed(subparsers: argparse._SubParsersAction) -> None:
    from .text import DEFAULT_MODEL_NAME

    p = subparsers.add_parser(
        "embed",
        help="compute class-name text embeddings and store them in the cache",
        description=(
            "Compute CLIP text embeddings of class names and store them in the cprfl_zoo cache "
            "(and optionally a file), e.g. on a machine with internet before training offline. "
            "The defaults reproduce the official CPRFL code."
        ),
    )
    p.add_argument(
        "--classes",
        required=True,
        help="text file with one class name per line, or a built-in list (coco-lt, voc-lt)",
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL_NAME,
        help="open_clip model name, hf-hub:<id> or local-dir:<folder> (default: %(default)s)",
    )
    p.add_argument(
        "--pretrained",
        default=None,
        help="pretrained tag or local checkpoint file of a built-in model name "
        "(default: 'openai' where the model has it)",
    )
    p.add_argument(
        "--template",
        action="append",
        dest="templates",
        metavar="TEMPLATE",
        help="prompt template with one {} (repeat for an ensemble; default: 'a photo of a {}.')",
    )
    norm = p.add_mutually_exclusive_group()
    norm.add_argument(
        "--normalize",
        dest="normalize",
        action="store_true",
        default=None,
        help="L2-normalise the embeddings (always done when several templates are given)",
    )
    norm.add_argument(
        "--no-normalize", dest="normalize", action="store_false", help="do not normalise"
    )
    p.add_argument("--cache-dir", default=None, help="cache folder (default: the cprfl_zoo cache)")
    p.add_argument(
        "--output", default=None, help="also write the embeddings to this safetensors file"
    )
    p.add_argument("--batch-size", type=int, default=256, help="prompts encoded at once")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument(
        "--model-config",
        action="append",
        default=[],
        metavar="JSON",
        help="register an extra open_clip model config file (or folder) before loading",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_run_embed)


def _run_embed(args: argparse.Namespace) -> int:
    from .text import TextConfig, encode_with_config
    from .text.cache import save_embeddings_file

    if args.batch_size <= 0:
        raise CommandError(f"--batch-size must be positive, got {args.batch_size}")
    if args.model_config:
        import open_clip

        for path in args.model_config:
            if not Path(path).exists():
                raise CommandError(f"--model-config {path}: no such file or folder")
            open_clip.add_model_config(path)
    names = read_class_names(args.classes)
    config = TextConfig.resolve(
        args.model, args.pretrained, args.templates, args.normalize, cache_dir=args.cache_dir
    )
    result = encode_with_config(
        config,
        names,
        batch_size=args.batch_size,
        device=args.device,
        progress=False if args.no_progress else None,
    )
    emb = result.embeddings
    print(f"{len(names)} classes -> embeddings {tuple(emb.shape)} float32 ({args.model})")
    if result.cache_file is not None:
        state = "already cached" if result.from_cache else "cached"
        print(f"{state}: {result.cache_file}")
    if args.output:
        path = save_embeddings_file(
            args.output, emb, config.cache_key(names), result.text_encoder_cfg
        )
        print(f"written: {path}")
    elif result.cache_file is None:
        raise CommandError(
            "the embeddings could not be stored in the cache (see the warning above); pass a "
            "writable --cache-dir or --output FILE"
        )
    return 0


# ---------------------------------------------------------------------- convert-official
def _add_convert_official(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert-official",
        help="convert a checkpoint of the official CPRFL code into a saved cprfl_zoo model",
        description=(
            "Convert a checkpoint trained with the official CPRFL code (jiexuanyan/CPRFL) into a "
            "cprfl_zoo model folder (config.json + model.safetensors + README.md) that "
            "CPRFL.from_pretrained and timm.create_model('local-dir:...') load. The checkpoint "
            "is read with torch.load(weights_only=True)."
        ),
    )
    p.add_argument("checkpoint", metavar="CKPT", help="the official .pth / .pth.tar checkpoint")
    p.add_argument(
        "--classes",
        required=True,
        help="class names in training order: a built-in list (coco-lt, voc-lt) or a text file "
        "with one name per line",
    )
    p.add_argument("--out", required=True, help="folder to write the converted model to")
    p.add_argument(
        "--num-heads", type=int, default=8, help="VSI attention heads, head_num (default: 8)"
    )
    p.add_argument(
        "--trainable-text-encoder",
        action="store_true",
        help="keep the fine-tuned CLIP text tower in the model (for further training)",
    )
    p.add_argument("--repo-id", default=None, help="Hub repo id shown in the model card")
    p.add_argument(
        "--overwrite", action="store_true", help="replace a model already saved in --out"
    )
    p.set_defaults(func=_run_convert_official)


def _run_convert_official(args: argparse.Namespace) -> int:
    from .convert import convert_official_checkpoint
    from .hub import CONFIG_NAME

    out = Path(args.out)
    if (out / CONFIG_NAME).exists() and not args.overwrite:
        raise CommandError(f"--out {out} already holds a saved model; pass --overwrite to replace")
    names = read_class_names(args.classes)
    model = convert_official_checkpoint(
        args.checkpoint,
        names,
        num_heads=args.num_heads,
        trainable_text_encoder=args.trainable_text_encoder,
    )
    model.save_pretrained(out, repo_id=args.repo_id)
    args_ = model.model_args
    print(
        f"converted {args.checkpoint}: {args_['backbone']}, {model.num_classes} classes, "
        f"d={args_['embed_dim']}, embeddings {tuple(model.class_embeddings.shape)}"
    )
    print(f"written: {out}")
    return 0


# ---------------------------------------------------------------------- export
def load_model_spec(spec: str) -> CPRFL:
    """Load a saved CPRFL model named on the command line.

    Args:
        spec: A saved model folder, ``local-dir:<folder>`` or ``hf-hub:<repo>[@revision]``.

    Returns:
        The model, in eval mode.

    Raises:
        CommandError: If ``spec`` names no saved model.
    """
    from .factory import create_cprfl

    if not spec.startswith(("hf-hub:", "local-dir:")):
        if not Path(spec).is_dir():
            raise CommandError(
                f"MODEL {spec}: not a folder; give a saved model folder, local-dir:<folder> or "
                "hf-hub:<repo>"
            )
        spec = f"local-dir:{spec}"
    return create_cprfl(spec).eval()


def _add_export(subparsers: argparse._SubParsersAction) -> None:
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
    p.add_argument(
        "model", metavar="MODEL", help="saved model folder, local-dir:<dir>, hf-hub:<id>"
    )
    p.add_argument("--format", choices=["onnx", "pt2"], default=None, help="default: from --output")
    p.add_argument("--output", required=True, help="file to write (.onnx or .pt2)")
    p.add_argument(
        "--input-size",
        type=int,
        nargs="+",
        metavar="N",
        default=None,
        help="image size H W (or C H W) of the export (default: the model's input_size)",
    )
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 17 (default: %(default)s)")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from .export import export_model

    fmt = args.format
    if fmt is None:
        suffix = Path(args.output).suffix.lower()
        if suffix not in (".onnx", ".pt2"):
            raise CommandError(
                f"--output {args.output}: pass --format onnx|pt2 or use a .onnx / .pt2 name"
            )
        fmt = suffix[1:]
    if args.input_size is not None and len(args.input_size) not in (2, 3):
        raise CommandError(f"--input-size takes H W or C H W, got {args.input_size}")
    model = load_model_spec(args.model)
    path = export_model(model, args.output, fmt, input_size=args.input_size, opset=args.opset)
    print(f"exported {args.model} ({model.num_classes} classes) as {fmt}: {path}")
    return 0


# ---------------------------------------------------------------------- predict / evaluate
def _add_loader_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (%(default)s)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument(
        "--workers", type=int, default=2, help="DataLoader workers decoding images (%(default)s)"
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _load_for_inference(args: argparse.Namespace) -> CPRFL:
    import torch

    if args.batch_size <= 0:
        raise CommandError(f"--batch-size must be positive, got {args.batch_size}")
    if args.workers < 0:
        raise CommandError(f"--workers must be >= 0, got {args.workers}")
    model = load_model_spec(args.model)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device)


def _inference_module(model: CPRFL) -> nn.Module:
    """The deploy module (prompt side computed once for the label set), else the model itself."""
    try:
        return model.deploy()
    except ValueError:  # a head variant the deploy path does not implement
        return model


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="predict the labels of image files (sigmoid, the model's thresholds)",
        description=(
            "Predict the labels of image files with a saved CPRFL model: sigmoid probabilities "
            "at the model's per-class thresholds (0.5 where uncalibrated). Unreadable images "
            "are reported by name and skipped. Writes JSON lines (.jsonl) or CSV (.csv) with "
            "--output, else prints one line per image."
        ),
    )
    p.add_argument(
        "model", metavar="MODEL", help="saved model folder, local-dir:<dir> or hf-hub:<id>"
    )
    p.add_argument(
        "images", metavar="IMAGES", nargs="+", help="image files, folders or glob patterns"
    )
    p.add_argument("--output", default=None, help="preds.jsonl or preds.csv (written atomically)")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="one probability threshold for every class instead of the model's",
    )
    _add_loader_args(p)
    p.set_defaults(func=_run_predict)


def _predictions_text(predictions: list, suffix: str) -> str:
    import csv
    import io
    import json

    if suffix == ".csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["image", "labels", "probabilities"])
        for pred in predictions:
            probs = ";".join(f"{p:.6f}" for p in pred.probabilities)
            writer.writerow([pred.source, ";".join(pred.labels), probs])
        return buf.getvalue()
    return "".join(json.dumps(pred.as_dict()) + "\n" for pred in predictions)


def _run_predict(args: argparse.Namespace) -> int:
    from .fileio import atomic_write_text
    from .predict import Predictor, find_images

    suffix = Path(args.output).suffix.lower() if args.output else ""
    if args.output and suffix not in (".jsonl", ".csv"):
        raise CommandError(f"--output {args.output}: use a .jsonl or .csv file name")
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
        progress=False if args.no_progress else None,
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
            print(f"{pred.source}\t{shown}")
    for path, error in failures:
        print(f"skipped {path}: {error}", file=sys.stderr)
    if failures and not predictions:
        raise CommandError(f"none of the {len(failures)} images could be read")
    return 0


def read_class_counts(path: str, num_classes: int) -> list[int]:
    """Read per-class training counts: a JSON list, or one integer per line, in class order.

    Args:
        path: The file.
        num_classes: The model's number of classes.

    Returns:
        The counts.

    Raises:
        CommandError: If the file is missing, malformed or has the wrong length.
    """
    import json

    from .data import read_text_lines

    try:
        lines = read_text_lines(path, "class-freq file")
    except (OSError, ValueError) as e:
        raise CommandError(f"--class-freq {e}") from None
    text = "\n".join(lines).strip()
    stripped = [s.strip() for s in lines]
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


def _add_list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model", metavar="MODEL", help="saved model folder, local-dir:<dir> or hf-hub:<id>"
    )
    p.add_argument(
        "list_file",
        metavar="LIST_FILE",
        help="image list: one 'relative/path.jpg id id ...' line per image (0-based class ids)",
    )
    p.add_argument("--images", required=True, help="folder the listed paths are relative to")
    _add_loader_args(p)


def _list_logits(args: argparse.Namespace, model: CPRFL):
    from torch.utils.data import DataLoader

    from .data import MultiLabelImageList
    from .predict import collect_logits, eval_transform

    try:
        dataset = MultiLabelImageList(
            args.list_file,
            args.images,
            transform=eval_transform(model),
            class_names=model.class_names,
        )
    except FileNotFoundError as e:
        raise CommandError(str(e)) from None
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers)
    runner = _inference_module(model)
    logits, targets = collect_logits(runner, loader, progress=False if args.no_progress else None)
    return logits, targets


def _add_evaluate(subparsers: argparse._SubParsersAction) -> None:
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
        help="training positives per class (JSON list or one count per line) for the "
        "head/medium/tail split",
    )
    p.add_argument("--output", default=None, help="write the metrics to this JSON file")
    p.set_defaults(func=_run_evaluate)


def evaluate_logits(
    logits, targets, thresholds, class_counts: Sequence[int] | None = None
) -> dict[str, float]:
    """Compute mAP (head/medium/tail too) and OP/OR/OF1/CP/CR/CF1 at per-class thresholds.

    Args:
        logits: ``(N, C)`` logits.
        targets: ``(N, C)`` multi-hot targets.
        thresholds: ``(C,)`` probability thresholds.
        class_counts: Training positives per class, for the head/medium/tail split.

    Returns:
        Percentages keyed ``mAP``, ``mAP_head``, ..., ``OP``, ``OR``, ``OF1``, ``CP``, ``CR``,
        ``CF1``.
    """
    from .metrics import long_tail_map, long_tail_split, mean_average_precision, threshold_metrics

    if class_counts is not None:
        results = long_tail_map(logits, targets, long_tail_split(class_counts)).as_dict()
    else:
        results = {"mAP": mean_average_precision(logits, targets).map}
    # prob >= t_i  <=>  prob - t_i >= 0: one threshold_metrics call with per-class thresholds
    shifted = logits.sigmoid() - thresholds.to(logits)[None]
    results.update(threshold_metrics(shifted, targets, threshold=0.0).as_dict())
    return {k: 100 * v for k, v in results.items()}


def _run_evaluate(args: argparse.Namespace) -> int:
    import json
    import math

    from .fileio import atomic_write_text

    model = _load_for_inference(args)
    counts = read_class_counts(args.class_freq, model.num_classes) if args.class_freq else None
    logits, targets = _list_logits(args, model)
    results = evaluate_logits(logits, targets, model.get_thresholds(), counts)
    which = "calibrated per-class" if model.thresholds is not None else "uncalibrated 0.5"
    print(f"{args.model} on {args.list_file}: {len(logits)} images, {which} thresholds")
    print("| metric | value |")
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


def _add_calibrate(subparsers: argparse._SubParsersAction) -> None:
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
    p.add_argument("--output", required=True, help="folder to save the calibrated model to")
    p.add_argument(
        "--min-positives",
        type=int,
        default=1,
        help="classes with fewer validation positives get the global threshold (%(default)s)",
    )
    p.set_defaults(func=_run_calibrate)


def _run_calibrate(args: argparse.Namespace) -> int:
    from .hub import CONFIG_NAME
    from .thresholds import calibrate_thresholds

    if Path(args.output, CONFIG_NAME).exists():
        _logger.warning("--output %s already holds a saved model; replacing it", args.output)
    model = _load_for_inference(args)
    logits, targets = _list_logits(args, model)
    result = calibrate_thresholds(logits, targets, min_positives=args.min_positives)
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


# ---------------------------------------------------------------------- main
_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_embed,
    _add_convert_official,
    _add_export,
    _add_predict,
    _add_evaluate,
    _add_calibrate,
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cprfl-zoo`` command line.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 when the command failed, 2 for bad usage.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (CommandError, ValueError, OSError, RuntimeError, ImportError) as e:
        print(f"cprfl-zoo {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
