"""Print the labels a saved CPRFL model predicts for some images, and its top labels.

    python examples/predict.py MODEL IMAGE [IMAGE ...] [--top-k 5] [--threshold 0.5]

MODEL is a folder written by ``save_pretrained`` (or ``train.py``), a Hugging Face Hub repository
id (``user/repo``, ``user/repo@revision``) or ``hf-hub:user/repo``. ``model.predict`` preprocesses
the images with timm's evaluation transform for the model's data config (resize, centre crop,
normalise), applies the sigmoid and the model's per-class thresholds (0.5 where uncalibrated) and
returns the labels at or above them. For folders, globs and output files, use
``cprfl-zoo predict``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

import cprfl_zoo
from cprfl_zoo.cli_args import positive_int, probability
from cprfl_zoo.data import load_image


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Top labels and probabilities of a CPRFL model for image files."
    )
    parser.add_argument(
        "model", help="saved model folder, Hub repo id (user/repo[@revision]) or hf-hub:user/repo"
    )
    parser.add_argument("images", nargs="+", type=Path, help="image files")
    parser.add_argument("--top-k", type=positive_int, default=5, help="labels shown per image (5)")
    parser.add_argument(
        "--threshold",
        type=probability,
        default=None,
        help="also list every label with at least this probability",
    )
    parser.add_argument("--batch-size", type=positive_int, default=16, help="(16)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    return parser


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for path in args.images:
        if not path.is_file():
            parser.error(f"image file not found: {path}")
    model = args.model
    if model.startswith(("hf-hub:", "local-dir:")):
        return
    if Path(model).exists():
        if not Path(model).is_dir():
            parser.error(f"MODEL {model} is a file; give the folder holding config.json")
        for needed in ("config.json", "model.safetensors"):
            if not (Path(model) / needed).is_file():
                parser.error(f"MODEL folder {model} has no {needed}: not a saved CPRFL model")
    elif looks_like_path(model) or model.count("/") != 1 or Path(model).parent.is_dir():
        parser.error(
            f"MODEL {model!r}: no such folder, and not a Hub repository id like 'user/repo'"
        )


def load_images(paths: list[Path]) -> list[Image.Image]:
    images = []
    for path in paths:
        try:  # the library's decoder: EXIF orientation, 16-bit and float pixels, transparency
            images.append(load_image(path))
        except OSError as e:
            raise SystemExit(f"error: cannot read image {path}: {e}") from None
    return images


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    try:
        model = cprfl_zoo.CPRFL.from_pretrained(args.model)
    except Exception as e:  # hub, file-format and config errors alike: report and stop
        raise SystemExit(f"error: cannot load model {args.model}: {e}") from e
    model = model.to(device).eval()
    model.freeze_class_embeddings()
    top_k = min(args.top_k, model.num_classes)

    for start in range(0, len(args.images), args.batch_size):
        paths = args.images[start : start + args.batch_size]
        images = load_images(paths)
        predicted = model.predict(images)  # the model's thresholds
        everything = model.predict(images, thresholds=0.0)  # every class, for the top-k view
        for path, labels, every in zip(paths, predicted, everything, strict=True):
            order = sorted(range(len(every.labels)), key=lambda i: -every.probabilities[i])
            shown = order[:top_k]
            if args.threshold is not None:
                extra = [i for i in order if every.probabilities[i] >= args.threshold]
                shown = sorted(set(shown) | set(extra), key=lambda i: -every.probabilities[i])
            print(path)
            print(f"  labels: {', '.join(labels.labels) or '(none above threshold)'}")
            for i in shown:
                print(f"  {every.probabilities[i]:.3f}  {every.labels[i]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
