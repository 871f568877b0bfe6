"""``cprfl-zoo embed``: fill the class-embedding cache.

E.g. on a machine with internet before training offline::

    cprfl-zoo embed --classes classes.txt --model RN50-quickgelu --pretrained openai
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import CommandError, add_run_arguments, progress_option, read_class_names

__all__ = ["add_embed"]


def add_embed(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``embed`` and its arguments."""
    from ..text import DEFAULT_MODEL_NAME

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
    p.add_argument(
        "--model-config",
        action="append",
        default=[],
        metavar="JSON",
        help="register an extra open_clip model config file (or folder) before loading",
    )
    add_run_arguments(p, batch_size=256, batch_help="prompts encoded at once", workers=False)
    p.set_defaults(func=_run_embed)


def _run_embed(args: argparse.Namespace) -> int:
    from ..text import TextConfig, encode_with_config
    from ..text.cache import save_embeddings_file

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
        progress=progress_option(args),
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
