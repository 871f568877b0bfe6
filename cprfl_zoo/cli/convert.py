"""``cprfl-zoo convert-official``: a checkpoint of the official CPRFL code to a saved model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli_args import positive_int
from ._common import CommandError, read_class_names

__all__ = ["add_convert_official"]


def add_convert_official(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``convert-official`` and its arguments."""
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
        "--num-heads",
        type=positive_int,
        default=8,
        metavar="N",
        help="VSI attention heads, head_num (default: %(default)s)",
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
    from ..convert import convert_official_checkpoint
    from ..hub import CONFIG_NAME

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
