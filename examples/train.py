"""Train CPRFL on COCO-LT, VOC-LT, your own image lists or a tiny synthetic set.

One process (CPU or one GPU):

    python examples/train.py --dataset coco-lt --data-root /data/coco --output runs/coco

Several GPUs or machines, with DistributedDataParallel:

    torchrun --nproc_per_node 4 examples/train.py --dataset coco-lt --data-root /data/coco ...

The defaults: AdamW (backbone at a tenth of the head's learning rate, no weight decay on biases
and norms), OneCycle with peak 1e-4, the asymmetric loss with gamma_neg 4, gamma_pos 0, clip 0.05,
a model EMA with decay 0.998, automatic mixed precision. ``--recipe paper`` and ``--recipe
official-code`` replace them with the paper's stated settings or those of the official code
(explicit flags still win). The long-tail tools are options: ``--loss`` (asl, bce, db, two-way,
logit-adjusted; class statistics counted on the training list), ``--sampler`` (uniform,
class-aware, repeat-factor; sharded across ranks) and ``--anchor-weight`` (keep the category
prompts near their initial values). Each epoch the model and its
EMA are evaluated on the test list (mAP overall and on the head / medium / tail classes, counted
on the training list), a checkpoint is written atomically (``checkpoint-last.pth``, resumable with
``--resume``), and the best of the two is exported with ``save_pretrained`` to ``<output>/model``
(optionally pushed to the Hub at the end with ``--push-to-hub``). Only rank 0 writes files.

The script reads like timm's ``train.py``: ``main`` parses and checks the arguments, sets up the
processes and calls ``train``, which builds the pieces (``build_model``, ``build_loaders``,
``build_optimizer``) and runs ``train_one_epoch``, ``validate`` and ``save_checkpoint`` once per
epoch. ``--batch-size`` is per process: with N processes each optimiser step sees N x batch-size
images. See docs/src/training.md for a step-by-step guide.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import timm
import torch
import torch.distributed as dist
from timm.models import group_parameters
from timm.optim import create_optimizer_v2
from timm.utils import (
    ModelEmaV3,
    distribute_bn,
    init_distributed_device,
    random_seed,
    unwrap_model,
)
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm.auto import tqdm

import cprfl_zoo
from cprfl_zoo.cli_args import (
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
)
from cprfl_zoo.data import (
    ClassAwareSampler,
    MultiLabelImageList,
    RepeatFactorSampler,
    class_counts,
    class_priors,
    create_lt_dataset,
    create_transforms,
    get_lt_benchmark,
    read_class_names,
)
from cprfl_zoo.fileio import atomic_path, atomic_write_text
from cprfl_zoo.losses import (
    ANCHOR_KINDS,
    DB_LOSS_PRESETS,
    AsymmetricLoss,
    DistributionBalancedLoss,
    LogitAdjustedLoss,
    PromptAnchorLoss,
    TwoWayLoss,
    logit_adjustment_offset,
)
from cprfl_zoo.metrics import MultiLabelEvaluator
from cprfl_zoo.predict import collect_logits, eval_transform
from cprfl_zoo.synthetic import DIGIT_NAMES, make_digit_composites, write_image_list
from cprfl_zoo.text import TextConfig, encode_class_names_info
from cprfl_zoo.text.cache import read_class_embeddings

_logger = logging.getLogger("train")

CHECKPOINT_NAME = "checkpoint-last.pth"
CHECKPOINT_FORMAT = "cprfl_zoo.train/1"
MODEL_DIR = "model"
RANDOM_TEXT_ENCODER = "random"
SAVED_PREFIXES = ("local-dir:", "hf-hub:")
# Arguments that must not change when a run is resumed: they shape the model or the schedule.
RESUME_FIXED_ARGS = (
    "model",
    "embed_dim",
    "num_heads",
    "head_dim",
    "mlp_dim",
    "cosine_classifier",
    "epochs",
    "lr",
    "backbone_lr_scale",
    "pct_start",
    "ema",
    "amp",
    "trainable_text_encoder",
    "opt",
    "sched",
    "loss",
    "db_preset",
    "db_fix_init_bias",
    "la_tau",
    "sampler",
    "samples_per_class",
    "repeat_threshold",
    "anchor_weight",
    "anchor_kind",
)
# What a checkpoint written before these arguments existed was trained with.
RESUME_DEFAULTS = {
    "cosine_classifier": False,
    "opt": "adamw",
    "sched": "onecycle",
    "loss": "asl",
    "db_fix_init_bias": False,
    "sampler": "uniform",
    "anchor_weight": 0.0,
}

LOSSES = ("asl", "bce", "db", "two-way", "logit-adjusted")
SAMPLERS = ("uniform", "class-aware", "repeat-factor")
# Named settings (--recipe): defaults that explicit flags override. A dict value is per --dataset
# (the key None for any other data). See the "Recipes" section of docs/src/training.md.
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {  # the CPRFL paper's implementation details
        "opt": "adam",
        "sched": "constant",
        "weight_decay": 1e-4,
        "epochs": 30,
        "batch_size": 32,
        "lr": {"coco-lt": 1e-5, "voc-lt": 5e-5, None: 1e-5},
        "backbone_lr_scale": 1.0,
        "trainable_text_encoder": False,
        "img_size": 448,
    },
    "official-code": {  # what github.com/jiexuanyan/CPRFL train.py runs
        "opt": "adamw",
        "sched": "onecycle",
        "pct_start": 0.1,
        "weight_decay": 1e-4,
        "epochs": 80,
        "batch_size": 16,
        "lr": 1e-5,
        "backbone_lr_scale": 1.0,
        "ema": 0.998,
        "trainable_text_encoder": True,
        "img_size": 448,
    },
}

# ---------------------------------------------------------------------- arguments


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show an option's default unless it is None or False (nothing to tell the reader)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train CPRFL (timm backbone + category-prompt head) for long-tailed "
        "multi-label classification; runs under torchrun for several GPUs.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default=None,
        help="named settings that replace the defaults below (flags given explicitly still win): "
        "'paper' = Adam, constant lr 1e-5 (COCO-LT; 5e-5 on VOC-LT), weight decay 1e-4, 30 "
        "epochs, batch 32, backbone at the head's lr, frozen text, 448 px; 'official-code' = "
        "AdamW with OneCycle (10%% warm-up), lr 1e-5 for backbone and head, 80 epochs, batch 16, "
        "EMA 0.998, trainable text encoder, 448 px. See the Recipes section of "
        "docs/src/training.md",
    )
    data = parser.add_argument_group("data (choose one of --dataset, --train-list, --synthetic)")
    data.add_argument("--dataset", choices=["coco-lt", "voc-lt"], help="a benchmark")
    data.add_argument(
        "--data-root",
        type=Path,
        help="with --dataset: the image folder (COCO: holding train2017/ and val2017/; VOC: "
        "holding VOCdevkit/)",
    )
    data.add_argument(
        "--split-root",
        type=Path,
        help="with --dataset: folder with the list files (coco/coco_lt_train.txt ...); default: "
        "the cprfl_zoo cache, downloaded on first use",
    )
    data.add_argument("--train-list", type=Path, help="training list: 'path/img.jpg 3 17' lines")
    data.add_argument("--test-list", type=Path, help="test list, same format")
    data.add_argument("--image-root", type=Path, help="folder the listed paths are relative to")
    data.add_argument(
        "--classes",
        type=Path,
        help="with --train-list: class names, one per line (or 'name id' lines)",
    )
    data.add_argument(
        "--synthetic",
        action="store_true",
        help="a small generated long-tailed digits set, written to <output>/synthetic_data "
        "(to try the script without downloading data)",
    )
    data.add_argument(
        "--synthetic-images", type=positive_int, default=64, help="training images of --synthetic"
    )
    data.add_argument(
        "--aug",
        choices=["cprfl", "timm"],
        default="cprfl",
        help="training augmentation: the paper's (resize, Cutout, RandAugment) or timm's",
    )
    data.add_argument("--img-size", type=positive_int, default=448, help="input image size")
    data.add_argument(
        "--workers",
        type=non_negative_int,
        default=4,
        help="data-loading worker processes per process (0: load in the training process)",
    )
    data.add_argument(
        "--head-threshold",
        type=non_negative_int,
        default=100,
        help="head classes have at least this many training images",
    )
    data.add_argument(
        "--tail-threshold",
        type=non_negative_int,
        default=20,
        help="tail classes have fewer than this many training images",
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        default="resnet101",
        help="timm backbone name (with tag), or a saved CPRFL model to fine-tune "
        "('local-dir:FOLDER', 'hf-hub:user/repo'), whose architecture and weights it takes",
    )
    model.add_argument(
        "--pretrained",
        "--pretrained-backbone",  # its 0.1.0 name
        dest="pretrained",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start from timm's pretrained (ImageNet) backbone weights, as "
        "create_cprfl(..., pretrained=True) (--no-pretrained: random backbone, no download)",
    )
    model.add_argument(
        "--initial-checkpoint",
        default=None,
        metavar="SOURCE",
        help="initialise every weight that does not depend on the classes (backbone, projection, "
        "PI, VSI) from a saved model folder, an 'hf-hub:user/repo' id or an official CPRFL "
        ".pth checkpoint; the architecture must match",
    )
    model.add_argument(
        "--text-embeddings",
        type=Path,
        default=None,
        metavar="FILE",
        help="class embeddings to use instead of a --text-encoder: the file 'cprfl-zoo embed "
        "--output' writes (its text encoder is recorded, so set_classes works on the model), "
        "or a safetensors file with one (num_classes, m) tensor",
    )
    model.add_argument(
        "--embed-dim",
        "--dim",  # its 0.1.0 name
        dest="embed_dim",
        type=positive_int,
        default=2048,
        help="width d of the tokens, prompts and VSI (timm's embed_dim)",
    )
    model.add_argument("--num-heads", type=positive_int, default=8, help="VSI attention heads")
    model.add_argument("--head-dim", type=positive_int, default=512, help="width of each head")
    model.add_argument("--mlp-dim", type=positive_int, default=2048, help="VSI FFN hidden width")
    model.add_argument("--drop", type=fraction, default=0.1, help="VSI dropout")
    model.add_argument(
        "--cosine-classifier",
        action="store_true",
        help="score classes by cos(p'_i, p_i) times a learned scale plus a learned bias "
        "(create_cprfl(..., cosine_classifier=True)); the benchmark's recommended head for "
        "long-tailed lists, with --sampler repeat-factor",
    )
    model.add_argument(
        "--text-encoder",
        default="RN50-quickgelu",
        help="open_clip model for the class embeddings (name, hf-hub: or local-dir:), or "
        f"'{RANDOM_TEXT_ENCODER}' for seeded random embeddings (a fallback without CLIP weights)",
    )
    model.add_argument(
        "--text-pretrained", default=None, help="open_clip weights tag or file (default: openai)"
    )
    model.add_argument(
        "--text-dim",
        type=positive_int,
        default=1024,
        help=f"width of the --text-encoder {RANDOM_TEXT_ENCODER} embeddings",
    )
    model.add_argument(
        "--trainable-text-encoder",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="fine-tune the CLIP text tower with the model, re-encoding the class prompts every "
        "step (the official code's mode); needs an open_clip --text-encoder "
        "(--no-trainable-text-encoder turns off what --recipe official-code sets)",
    )
    model.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    model.add_argument("--compile", action="store_true", help="torch.compile the model")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument(
        "--opt",
        choices=["adamw", "adam"],
        default="adamw",
        help="optimiser (timm's create_optimizer_v2): AdamW (decoupled weight decay) or Adam (L2 "
        "weight decay added to the gradient, as the paper states)",
    )
    optim.add_argument(
        "--sched",
        choices=["onecycle", "constant"],
        default="onecycle",
        help="learning-rate schedule, stepped every batch: OneCycle (warm-up --pct-start, peak "
        "--lr, cosine decay to ~0 at the last step) or constant --lr",
    )
    optim.add_argument(
        "--epochs", type=positive_int, default=80, help="passes over the training list"
    )
    optim.add_argument(
        "--batch-size",
        type=positive_int,
        default=16,
        help="images per step and per process (N processes: N x this per optimiser step)",
    )
    optim.add_argument(
        "--lr",
        type=positive_float,
        default=1e-4,
        help="peak (or constant) learning rate of the head",
    )
    optim.add_argument(
        "--backbone-lr-scale",
        type=non_negative_float,
        default=0.1,
        help="backbone learning rate = lr x this (0 freezes the backbone's weights)",
    )
    optim.add_argument(
        "--weight-decay",
        type=non_negative_float,
        default=1e-4,
        help="weight decay (none on biases, norms and the backbone's no_weight_decay())",
    )
    optim.add_argument("--pct-start", type=fraction, default=0.2, help="OneCycle warm-up fraction")
    optim.add_argument(
        "--ema", type=fraction, default=0.998, help="model EMA decay (0 disables the EMA)"
    )
    optim.add_argument(
        "--amp",
        choices=["auto", "none", "bf16", "fp16"],
        default="auto",
        help="mixed precision; auto: bf16 on GPUs that support it, none on CPU",
    )
    optim.add_argument(
        "--clip-grad",
        type=positive_float,
        default=None,
        help="clip the gradient's global norm to this value (default: no clipping)",
    )

    lt = parser.add_argument_group(
        "long-tail tools (class statistics are counted on the training list)"
    )
    lt.add_argument(
        "--loss",
        choices=LOSSES,
        default="asl",
        help="training loss: asl = AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05), mean "
        "(the paper's); bce = binary cross-entropy, mean; db = Distribution-Balanced loss (Wu et "
        "al. 2020, --db-preset); two-way = two-way multi-label loss (Kobayashi 2023, Tp 4, Tn 1); "
        "logit-adjusted = binary cross-entropy on logits + tau * log(prior / (1 - prior)) "
        "(Menon et al. 2021, --la-tau)",
    )
    lt.add_argument(
        "--db-preset",
        choices=sorted(DB_LOSS_PRESETS),
        default=None,
        help="with --loss db: the official hyper-parameters of this benchmark (coco-lt: mu 0.2, "
        "lambda 2; voc-lt: mu 0.3, lambda 5); default: --dataset's, else coco-lt",
    )
    lt.add_argument(
        "--db-fix-init-bias",
        action="store_true",
        help="with --loss db: the paper's class bias -kappa*log(N/n - 1) instead of the official "
        "code's, which divides it by lambda (a bug the authors confirmed)",
    )
    lt.add_argument(
        "--la-tau",
        type=non_negative_float,
        default=None,
        help="with --loss logit-adjusted: scale tau of the log-odds offset (default 1)",
    )
    lt.add_argument(
        "--posthoc-la-tau",
        type=non_negative_float,
        default=None,
        metavar="TAU",
        help="post-hoc logit adjustment saved with the model: its logits become logit - TAU * "
        "log(pi / (1 - pi)) with the training priors pi = (n + 1) / (N + 2) (Menon et al. 2021); "
        "predict, evaluate, deploy and export use them. Changes thresholded metrics, not mAP",
    )
    lt.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default="uniform",
        help="which training images each epoch shows: uniform = every image once, shuffled "
        "(DistributedSampler); class-aware = pick a class, then images of it (the DB paper's); "
        "repeat-factor = repeat images of rare classes (LVIS); all shard across torchrun ranks",
    )
    lt.add_argument(
        "--samples-per-class",
        type=positive_int,
        default=None,
        help="with --sampler class-aware: consecutive images per class visit (default 3)",
    )
    lt.add_argument(
        "--repeat-threshold",
        type=probability,
        default=None,
        help="with --sampler repeat-factor: classes in fewer than this fraction of the images are "
        "repeated, by sqrt(threshold / fraction) (default 0.001, as LVIS)",
    )
    lt.add_argument(
        "--anchor-weight",
        type=non_negative_float,
        default=0.0,
        help="prompt anchoring: add this x the distance between the category prompts PI(W) and "
        "their values before the first step to the loss (0: off)",
    )
    lt.add_argument(
        "--anchor-kind",
        choices=ANCHOR_KINDS,
        default=None,
        help="with --anchor-weight: l2 = mean squared difference over the prompts' entries; "
        "cosine = mean of 1 - cos(prompt, anchor) over classes (default l2)",
    )

    run = parser.add_argument_group("run")
    run.add_argument("--output", type=Path, default=Path("output/train"), help="output folder")
    run.add_argument("--resume", type=Path, default=None, help="checkpoint to continue from")
    run.add_argument(
        "--export",
        choices=["last", "best"],
        default="last",
        help="what <output>/model holds: the EMA (or, without EMA, the model) after the last "
        "epoch, or the best-scoring of model and EMA on the test list over all epochs (the "
        "official code's choice; optimistic, as it selects on the test set)",
    )
    run.add_argument("--push-to-hub", default=None, metavar="REPO", help="upload to user/repo")
    run.add_argument(
        "--calibrate-list",
        type=Path,
        default=None,
        metavar="LIST",
        help="validation image list (same format and image root as the data, held out from "
        "training and test): per-class F1-optimal thresholds from it are saved with the model",
    )
    run.add_argument(
        "--stop-after-epoch",
        type=positive_int,
        default=None,
        help="end the run after this epoch, its checkpoint written (jobs with a time limit); "
        "continue with --resume",
    )
    run.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the model's initialisation, the data order and augmentation of every epoch",
    )
    run.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    return parser


def _require_file(parser: argparse.ArgumentParser, flag: str, path: Path | None) -> None:
    if path is None:
        parser.error(f"argument {flag} is required here")
    if not path.is_file():
        parser.error(f"argument {flag}: file not found: {path}")


def _require_dir(parser: argparse.ArgumentParser, flag: str, path: Path | None) -> None:
    if path is None:
        parser.error(f"argument {flag} is required here")
    if not path.is_dir():
        parser.error(f"argument {flag}: folder not found: {path}")


def _refuse(parser: argparse.ArgumentParser, owner: str, given: dict[str, Any]) -> None:
    for flag, value in given.items():
        if value is not None:
            parser.error(f"argument {flag} only applies to {owner}")


def _check_data_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    given = {"--dataset": args.dataset, "--train-list": args.train_list}
    sources = [flag for flag, value in given.items() if value is not None]
    sources += ["--synthetic"] if args.synthetic else []
    if len(sources) != 1:
        parser.error(
            "choose the data with exactly one of --dataset, --train-list or --synthetic (got "
            f"{', '.join(sources) or 'none'})"
        )
    if args.dataset is None:
        _refuse(
            parser, "--dataset", {"--data-root": args.data_root, "--split-root": args.split_root}
        )
    elif args.data_root is None:
        info = get_lt_benchmark(args.dataset)
        parser.error(f"--dataset {args.dataset} needs --data-root: {info.images}")
    else:
        _require_dir(parser, "--data-root", args.data_root)
        if args.split_root is not None:
            _require_dir(parser, "--split-root", args.split_root)
    lists = {"--test-list": args.test_list, "--image-root": args.image_root}
    lists["--classes"] = args.classes
    if args.train_list is None:
        _refuse(parser, "--train-list", lists)
    else:
        _require_file(parser, "--train-list", args.train_list)
        for flag, value in lists.items():
            (_require_dir if flag == "--image-root" else _require_file)(parser, flag, value)
    if args.calibrate_list is not None:
        _require_file(parser, "--calibrate-list", args.calibrate_list)
    if args.head_threshold < args.tail_threshold:
        parser.error(
            f"argument --head-threshold ({args.head_threshold}) must be >= --tail-threshold "
            f"({args.tail_threshold})"
        )


def _check_model_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    arch = args.model.split(".", 1)[0]
    if not args.model.startswith(SAVED_PREFIXES) and not timm.is_model(arch):
        close = timm.list_models(f"*{arch[:6]}*")[:5]
        hint = f"; similar names: {', '.join(close)}" if close else ""
        parser.error(f"argument --model: {args.model!r} is not a timm model name{hint}")
    if args.cosine_classifier and args.model.startswith(SAVED_PREFIXES):
        parser.error(
            f"argument --cosine-classifier: the saved --model {args.model} keeps its own "
            "classifier; build a new head from a timm model name to choose it"
        )
    if args.text_embeddings is not None:
        _require_file(parser, "--text-embeddings", args.text_embeddings)
        if args.trainable_text_encoder:
            parser.error(
                "argument --text-embeddings cannot be combined with a trainable encoder "
                f"(--trainable-text-encoder{_from_recipe(args, 'trainable_text_encoder')}; "
                "--no-trainable-text-encoder turns it off)"
            )
    elif args.text_encoder != RANDOM_TEXT_ENCODER:
        try:
            TextConfig.resolve(args.text_encoder, args.text_pretrained)
        except ValueError as e:
            parser.error(f"argument --text-encoder/--text-pretrained: {e}")
    elif args.text_pretrained is not None:
        parser.error("argument --text-pretrained does not apply to --text-encoder random")
    elif args.trainable_text_encoder:
        parser.error(
            f"argument --trainable-text-encoder{_from_recipe(args, 'trainable_text_encoder')} "
            "needs a CLIP --text-encoder, not random (--no-trainable-text-encoder keeps the class "
            "embeddings fixed)"
        )


def _check_run_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.output.exists() and not args.output.is_dir():
        parser.error(f"argument --output: {args.output} exists and is not a folder")
    if args.resume is not None and not args.resume.is_file():
        parser.error(f"argument --resume: checkpoint not found: {args.resume}")
    if args.stop_after_epoch is not None and args.stop_after_epoch > args.epochs:
        parser.error(
            f"argument --stop-after-epoch: {args.stop_after_epoch} is beyond --epochs {args.epochs}"
        )
    repo = args.push_to_hub
    if repo is not None and (repo.count("/") != 1 or not all(repo.split("/"))):
        parser.error(f"argument --push-to-hub: expected 'user/repo', got {repo!r}")
    if args.device is not None:
        try:
            torch.device(args.device)
        except RuntimeError as e:
            parser.error(f"argument --device: {e}")


def _check_long_tail_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse options of a loss / sampler / anchor that is not chosen; fill in their defaults."""
    if args.loss != "db":
        _refuse(parser, "--loss db", {"--db-preset": args.db_preset})
        if args.db_fix_init_bias:
            parser.error("argument --db-fix-init-bias only applies to --loss db")
    elif args.db_preset is None:
        args.db_preset = args.dataset if args.dataset in DB_LOSS_PRESETS else "coco-lt"
    if args.loss != "logit-adjusted":
        _refuse(parser, "--loss logit-adjusted", {"--la-tau": args.la_tau})
    elif args.la_tau is None:
        args.la_tau = 1.0
    if args.sampler != "class-aware":
        _refuse(parser, "--sampler class-aware", {"--samples-per-class": args.samples_per_class})
    elif args.samples_per_class is None:
        args.samples_per_class = 3
    if args.sampler != "repeat-factor":
        _refuse(parser, "--sampler repeat-factor", {"--repeat-threshold": args.repeat_threshold})
    elif args.repeat_threshold is None:
        args.repeat_threshold = 0.001
    elif args.repeat_threshold == 0:
        parser.error("argument --repeat-threshold: expected a number in (0, 1], got 0")
    if args.anchor_weight == 0:
        _refuse(parser, "--anchor-weight > 0", {"--anchor-kind": args.anchor_kind})
    elif args.anchor_kind is None:
        args.anchor_kind = "l2"


def recipe_defaults(recipe: str, dataset: str | None) -> dict[str, Any]:
    """The argument defaults of ``--recipe`` (a per-dataset value resolved for ``dataset``).

    Raises:
        KeyError: If ``recipe`` is not in :data:`RECIPES`.
    """
    values = {}
    for key, value in RECIPES[recipe].items():
        if isinstance(value, dict):
            value = value.get(dataset, value[None])
        values[key] = value
    return values


def recipe_values_kept(args: argparse.Namespace) -> dict[str, Any]:
    """The values of ``args.recipe`` that no flag overrode (empty without a recipe)."""
    if args.recipe is None:
        return {}
    values = recipe_defaults(args.recipe, args.dataset)
    return {k: v for k, v in values.items() if getattr(args, k) == v}


def _from_recipe(args: argparse.Namespace, key: str) -> str:
    """' (set by --recipe NAME)' when the recipe chose ``key``'s value, else ''."""
    return f" (set by --recipe {args.recipe})" if key in recipe_values_kept(args) else ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the arguments; inconsistent ones stop with a message naming them.

    ``--recipe`` is read first: its values become the parser's defaults, so that every flag given
    on the command line overrides them.
    """
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.recipe is not None:
        parser.set_defaults(**recipe_defaults(first.recipe, first.dataset))
    args = parser.parse_args(argv)
    for check in (_check_data_args, _check_model_args, _check_run_args, _check_long_tail_args):
        check(parser, args)
    return args


def args_to_dict(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments as plain values (paths as strings), loadable with ``weights_only=True``."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


# ---------------------------------------------------------------------- distributed helpers
@dataclass(frozen=True)
class Context:
    """Where this process runs: its rank among ``world_size`` processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str | None) -> Context:
    """Join the process group when launched by torchrun (or SLURM), with timm's helper."""
    info = SimpleNamespace(device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    init_distributed_device(info)  # sets its device, rank, local_rank, world_size
    return Context(info.rank, info.world_size, info.local_rank, torch.device(info.device))


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


@contextlib.contextmanager
def local_main_first(ctx: Context) -> Iterator[None]:
    """Run the block on each machine's first process, then on the others (downloads, caches)."""
    if ctx.local_rank != 0:
        barrier(ctx)
    yield
    if ctx.local_rank == 0:
        barrier(ctx)


def broadcast_object(ctx: Context, obj: Any) -> Any:
    if not ctx.distributed:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_batchnorm_stats(ctx: Context, *modules: nn.Module) -> None:
    """Copy rank 0's BatchNorm statistics to every rank, so that all ranks hold one model.

    DDP broadcasts buffers before each forward pass, but the last forward pass of an epoch (and
    every EMA update) uses each rank's own statistics.
    """
    if ctx.distributed:
        for module in modules:
            distribute_bn(module, ctx.world_size, reduce=False)


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed every generator from (seed, epoch, rank), so a resumed run repeats the same epochs."""
    random_seed((seed * 1_000_003 + epoch * 1_009) % 2**31, rank)


@contextlib.contextmanager
def logging_to(ctx: Context, output: Path) -> Iterator[None]:
    """Log to stdout (and, on rank 0, to <output>/log.txt); restore the previous setup after."""
    root = logging.getLogger()
    saved = (root.level, root.handlers[:])
    fmt = "%(asctime)s %(message)s" if ctx.is_main else f"%(asctime)s [rank {ctx.rank}] %(message)s"
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if ctx.is_main:
        output.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(output / "log.txt", encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    root.handlers[:] = handlers
    root.setLevel(logging.INFO if ctx.is_main else logging.WARNING)
    import huggingface_hub.utils.logging  # noqa: F401  (adds huggingface_hub's own handler)

    hub = logging.getLogger("huggingface_hub")  # its own handler would print each record twice
    hub_handlers = [h for h in hub.handlers if type(h) is logging.StreamHandler]
    for handler in hub_handlers:
        hub.removeHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            handler.close()
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        for handler in hub_handlers:
            hub.addHandler(handler)


# ---------------------------------------------------------------------- data
def class_names_for(args: argparse.Namespace) -> list[str]:
    if args.synthetic:
        return list(DIGIT_NAMES)
    if args.dataset is not None:
        return list(get_lt_benchmark(args.dataset).class_names)
    try:
        return read_class_names(args.classes)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: argument --classes: {e}") from None


def prepare_synthetic(ctx: Context, args: argparse.Namespace) -> Path:
    """Generate the ``--synthetic`` set once per machine; return its folder."""
    root = args.output / "synthetic_data"
    with local_main_first(ctx):
        if ctx.local_rank == 0 and not (root / "test.txt").is_file():
            n = args.synthetic_images
            train = make_digit_composites(
                n, img_size=64, max_digits=3, imbalance=20, pool="train", seed=args.seed
            )
            test = make_digit_composites(
                max(n // 2, 16), img_size=64, max_digits=3, pool="test", seed=args.seed + 1
            )
            write_image_list(train, root, "train")
            write_image_list(test, root, "test")
            _logger.info("generated the synthetic dataset in %s", root)
    return root


def image_root(args: argparse.Namespace) -> Path:
    """The folder the listed image paths are relative to."""
    if args.synthetic:
        return args.output / "synthetic_data"
    return args.data_root if args.dataset is not None else args.image_root


def build_datasets(
    ctx: Context, args: argparse.Namespace, model: nn.Module, names: list[str]
) -> tuple[MultiLabelImageList, MultiLabelImageList]:
    # validation sees exactly what predict / evaluate / export see: the model's data config
    tfs = [
        create_transforms(model, recipe=args.aug, is_training=True, img_size=args.img_size),
        eval_transform(model),
    ]
    try:
        if args.dataset is not None:
            with local_main_first(ctx):  # the list files are downloaded once per machine
                return tuple(
                    create_lt_dataset(
                        args.dataset, split, args.data_root, tf, split_root=args.split_root,
                        download=True,
                    )
                    for split, tf in zip(("train", "test"), tfs, strict=True)
                )  # fmt: skip
        if args.synthetic:
            root = prepare_synthetic(ctx, args)
            lists = (root / "train.txt", root / "test.txt")
        else:
            lists = (args.train_list, args.test_list)
        return tuple(
            MultiLabelImageList(path, image_root(args), transform=tf, class_names=names)
            for path, tf in zip(lists, tfs, strict=True)
        )
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


def build_train_sampler(
    ctx: Context, args: argparse.Namespace, train_set: MultiLabelImageList
) -> Sampler[int]:
    """``--sampler``: this rank's share of each epoch (call ``set_epoch`` before each epoch).

    ``uniform`` is PyTorch's ``DistributedSampler``; ``class-aware`` and ``repeat-factor`` are
    cprfl_zoo's long-tail samplers, which shard across ranks the same way (the end of the list is
    dropped so that every rank gets as many images).
    """
    shard = {"num_replicas": ctx.world_size, "rank": ctx.rank, "seed": args.seed}
    try:
        if args.sampler == "class-aware":
            return ClassAwareSampler(
                train_set, samples_per_class=args.samples_per_class, drop_last=True, **shard
            )
        if args.sampler == "repeat-factor":
            return RepeatFactorSampler(
                train_set, threshold=args.repeat_threshold, drop_last=True, **shard
            )
    except ValueError as e:
        raise SystemExit(f"error: --sampler {args.sampler}: {e}") from None
    return DistributedSampler(train_set, shuffle=True, drop_last=True, **shard)


def schedule_steps(loader: DataLoader, epochs: int) -> int:
    """Optimiser steps in ``epochs`` epochs of ``loader`` (its sampler's length may vary by epoch:
    repeat-factor sampling draws each epoch's list from ``seed + epoch``, so it is counted)."""
    sampler = loader.sampler
    if not isinstance(sampler, RepeatFactorSampler):
        return epochs * len(loader)
    total = 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        total += len(sampler) // loader.batch_size  # the loader drops the last partial batch
    sampler.set_epoch(0)
    return total


def build_loaders(
    ctx: Context, args: argparse.Namespace, model: nn.Module, names: list[str]
) -> tuple[DataLoader, DataLoader]:
    """The training and test loaders, each rank reading its share (``--sampler`` for training,
    ``DistributedSampler`` for the test list)."""
    train_set, test_set = build_datasets(ctx, args, model, names)
    samplers = [
        build_train_sampler(ctx, args, train_set),
        DistributedSampler(
            test_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=False, seed=args.seed
        ),
    ]
    common = {
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "pin_memory": ctx.device.type == "cuda",
        # Workers start afresh each epoch, seeded from the per-epoch seed (seed_epoch), so a
        # resumed run augments exactly as the uninterrupted one; persistent workers would keep
        # the random state of the epoch they started in.
        "persistent_workers": False,
    }
    train_loader = DataLoader(train_set, sampler=samplers[0], drop_last=True, **common)
    test_loader = DataLoader(test_set, sampler=samplers[1], **common)
    if len(train_loader) == 0:
        raise SystemExit(
            f"error: the training list has {len(train_set)} images, fewer than --batch-size "
            f"{args.batch_size} x {ctx.world_size} process(es)"
        )
    if ctx.is_main:
        log_data(args, train_set, len(test_set), len(train_loader), ctx.world_size)
        if args.sampler != "uniform":
            _logger.info(
                "sampler: %s; epoch 1 draws %d images per process (%d of %d distinct)",
                args.sampler, len(samplers[0]), len(set(samplers[0])), len(train_set),
            )  # fmt: skip
    return train_loader, test_loader


def log_data(
    args: argparse.Namespace, train_set: Any, num_test: int, steps: int, world_size: int
) -> None:
    counts, num_classes = train_set.class_counts, len(train_set.class_names)
    _logger.info(
        "data: %d training / %d test images, %d classes; %d steps per epoch of %d x %d images",
        len(train_set), num_test, num_classes, steps, args.batch_size, world_size,
    )  # fmt: skip
    head = int((counts >= args.head_threshold).sum())
    tail = int((counts < args.tail_threshold).sum())
    _logger.info(
        "classes: %d head (>= %d images), %d medium, %d tail (< %d images)",
        head, args.head_threshold, num_classes - head - tail, tail, args.tail_threshold,
    )  # fmt: skip


# ---------------------------------------------------------------------- model
def random_class_embeddings(args: argparse.Namespace, num_classes: int) -> tuple[Any, Any]:
    gen = torch.Generator().manual_seed(args.seed)
    emb = torch.randn(num_classes, args.text_dim, generator=gen)
    _logger.warning(
        "FALLBACK: --text-encoder random: seeded random class embeddings (%d-d, seed %d); "
        "the prompts carry no meaning of the class names",
        args.text_dim,
        args.seed,
    )
    cfg = {"model_name": f"custom:random-normal(seed={args.seed})", "text_dim": args.text_dim}
    return emb, cfg


def class_embeddings(
    ctx: Context, args: argparse.Namespace, names: list[str]
) -> tuple[torch.Tensor | None, dict[str, Any] | None]:
    """Compute the class embeddings on rank 0 (filling the cache once) and share them."""
    if args.trainable_text_encoder:
        return None, None  # the model loads the text tower and encodes the prompts itself
    if args.text_embeddings is not None:
        try:
            emb, cfg = read_class_embeddings(args.text_embeddings, names)
        except (OSError, ValueError) as e:
            raise SystemExit(f"error: --text-embeddings: {e}") from None
        _logger.info("class embeddings from %s (%s)", args.text_embeddings, cfg["model_name"])
        return emb, cfg
    if args.text_encoder == RANDOM_TEXT_ENCODER:
        return random_class_embeddings(args, len(names))
    payload: tuple[Any, Any, str | None] = (None, None, None)
    if ctx.is_main:
        try:
            info = encode_class_names_info(
                names, args.text_encoder, args.text_pretrained, device=ctx.device
            )
            payload = (info.embeddings, info.text_encoder_cfg, None)
            source = f"cache {info.cache_file}" if info.from_cache else "computed"
            _logger.info("class embeddings from %s (%s)", args.text_encoder, source)
        except Exception as e:  # sent to every rank, so that all stop with the same message
            payload = (None, None, f"{type(e).__name__}: {e}")
    emb, cfg, error = broadcast_object(ctx, payload)
    if error is not None:
        raise SystemExit(
            f"error: cannot compute class embeddings with --text-encoder {args.text_encoder}: "
            f"{error}\n(without CLIP weights, --text-encoder random gives seeded random ones)"
        )
    return emb, cfg


def model_kwargs(args: argparse.Namespace, emb: Any, cfg: Any) -> dict[str, Any]:
    """``create_cprfl`` arguments from the command line (the head sizes in this one place)."""
    kwargs: dict[str, Any] = {
        "pretrained": args.pretrained,
        "embed_dim": args.embed_dim,
        "num_heads": args.num_heads,
        "head_dim": args.head_dim,
        "mlp_hidden_dim": args.mlp_dim,
        "drop_rate": args.drop,
    }
    if args.cosine_classifier:
        kwargs["cosine_classifier"] = True
    if args.trainable_text_encoder:
        kwargs.update(trainable_text_encoder=True, text_encoder=args.text_encoder)
        if args.text_pretrained is not None:
            kwargs["text_pretrained"] = args.text_pretrained
    else:
        kwargs.update(text_embeddings=emb, text_encoder_cfg=cfg)
    pretrained_cfg = timm.get_pretrained_cfg(args.model.split(".", 1)[0])
    if pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
        kwargs["img_size"] = args.img_size  # ViT-like backbones resize their position embeddings
    return kwargs


def build_model(ctx: Context, args: argparse.Namespace, names: list[str]) -> cprfl_zoo.CPRFL:
    """The CPRFL model on ``ctx.device``, its class embeddings computed (or loaded) first."""
    emb, text_cfg = class_embeddings(ctx, args, names)
    torch.manual_seed(args.seed)
    with local_main_first(ctx):  # the backbone weights are downloaded once per machine
        if args.model.startswith(SAVED_PREFIXES):
            model = from_saved_model(args, names, emb, text_cfg)
        else:
            model = create_model(args, names, emb, text_cfg)
        if args.initial_checkpoint is not None:
            initialise_from(model, args.initial_checkpoint)
    # One data config from training to deployment: what validation uses is what is saved, and
    # what predict, evaluate, calibrate and the exported files read back.
    model.pretrained_cfg["input_size"] = (3, args.img_size, args.img_size)
    if args.aug == "cprfl":  # the paper's resize of the whole image, no crop
        model.pretrained_cfg.update(crop_pct=1.0, crop_mode="squash", interpolation="bilinear")
    model.to(ctx.device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def create_model(
    args: argparse.Namespace, names: list[str], emb: Any, text_cfg: Any
) -> cprfl_zoo.CPRFL:
    try:
        return cprfl_zoo.create_cprfl(
            args.model, class_names=names, **model_kwargs(args, emb, text_cfg)
        )
    except Exception as e:
        if not (args.pretrained or args.trainable_text_encoder):
            raise
        raise SystemExit(
            f"error: cannot create --model {args.model} with pretrained weights: "
            f"{type(e).__name__}: {e}\n(offline? --no-pretrained starts from "
            "random weights; the text tower of --trainable-text-encoder must be cached)"
        ) from e


def from_saved_model(
    args: argparse.Namespace, names: list[str], emb: Any, text_cfg: Any
) -> cprfl_zoo.CPRFL:
    """Fine-tune a saved model: its architecture and weights, this data's classes."""
    try:
        model = cprfl_zoo.create_cprfl(args.model, drop_rate=args.drop)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: cannot load --model {args.model}: {e}") from None
    if list(model.class_names) != names:
        try:
            model.set_classes(names, emb)
        except ValueError as e:
            raise SystemExit(
                f"error: --model {args.model} cannot take this data's {len(names)} classes: {e}"
            ) from None
        if text_cfg is not None:
            model.text_encoder_cfg = dict(text_cfg)
    return model


def initialise_from(model: cprfl_zoo.CPRFL, source: str) -> None:
    """Copy every class-independent weight of ``source`` into ``model`` (shapes must match)."""
    try:
        if Path(source).is_file():
            donor = cprfl_zoo.convert_official_checkpoint(source, list(model.class_names))
        else:
            folder = source if source.startswith(SAVED_PREFIXES) else f"local-dir:{source}"
            donor = cprfl_zoo.create_cprfl(folder)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: --initial-checkpoint {source}: {e}") from None
    theirs, ours = donor.state_dict(), model.state_dict()
    skipped = {"class_embeddings"}
    missing = sorted(k for k in ours if k not in theirs and k not in skipped)
    wrong = sorted(
        f"{k} {tuple(theirs[k].shape)} vs {tuple(v.shape)}"
        for k, v in ours.items()
        if k in theirs and k not in skipped and theirs[k].shape != v.shape
    )
    if missing or wrong:
        raise SystemExit(
            f"error: --initial-checkpoint {source} does not fit --model {model.config.backbone}: "
            f"missing {missing[:5]}, shapes (checkpoint vs model) {wrong[:5]}"
        )
    model.load_state_dict({k: theirs[k] if k not in skipped else v for k, v in ours.items()})
    _logger.info("initialised every class-independent weight from %s", source)


def param_groups(model: nn.Module, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Optimiser groups: backbone at lr x scale, head at lr; no weight decay on biases and norms."""
    no_decay_names = set(model.no_weight_decay())
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    groups = []
    for members in group_parameters(model, model.group_matcher()).values():
        tag = "backbone" if all(n.startswith("backbone.") for n in members) else "head"
        lr = args.lr * (args.backbone_lr_scale if tag == "backbone" else 1.0)
        trained = [n for n in members if n in named]
        exempt = [n for n in trained if named[n].ndim <= 1 or n.endswith(".bias")]
        exempt += [n for n in trained if n in no_decay_names and n not in exempt]
        split = {
            tag: ([named[n] for n in trained if n not in exempt], args.weight_decay),
            f"{tag}_no_decay": ([named[n] for n in exempt], 0.0),
        }
        groups += [
            {"params": params, "lr": lr, "weight_decay": wd, "name": name}
            for name, (params, wd) in split.items()
            if params
        ]
    return groups


def build_optimizer(
    model: nn.Module,
    args: argparse.Namespace,
    steps_per_epoch: int,
    total_steps: int | None = None,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """``--opt`` (timm's factory, over :func:`param_groups`) and the ``--sched`` schedule, stepped
    once per batch: OneCycle over ``total_steps`` (default ``epochs x steps_per_epoch``) or
    constant."""
    optimizer = create_optimizer_v2(
        model, args.opt, lr=args.lr, param_group_fn=lambda m: param_groups(m, args)
    )
    if args.sched == "constant":
        return optimizer, torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=total_steps or args.epochs * steps_per_epoch,
        pct_start=args.pct_start,
    )
    return optimizer, scheduler


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


# ---------------------------------------------------------------------- training state
@dataclass
class TrainState:
    """Everything a checkpoint restores: the model, its EMA, the optimiser and schedule, and the
    epochs done so far with their scores."""

    model: cprfl_zoo.CPRFL
    ema: ModelEmaV3 | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    anchor: PromptAnchorLoss | None = None
    train_priors: torch.Tensor | None = None  # for --posthoc-la-tau (not checkpointed)
    epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def modules(self) -> dict[str, nn.Module]:
        """The evaluated weights by name: ``model`` and, with an EMA, ``EMA``."""
        return {"model": self.model, **({"EMA": self.ema.module} if self.ema else {})}

    def record(self, entry: dict[str, Any], score: float) -> bool:
        """Append an epoch's history entry; return whether ``score`` is the best so far."""
        self.history.append(entry)
        self.epoch = entry["epoch"]
        improved = not math.isnan(score) and score > self.best_score
        if improved:
            self.best_score, self.best_epoch = score, self.epoch
        return improved


def build_state(
    ctx: Context,
    args: argparse.Namespace,
    model: cprfl_zoo.CPRFL,
    steps_per_epoch: int,
    total_steps: int | None = None,
) -> TrainState:
    """Optimiser, schedule, EMA, gradient scaler and, with ``--anchor-weight``, the prompt anchor
    (the model's prompts now, before the first step; a resumed run restores the saved one)."""
    optimizer, scheduler = build_optimizer(model, args, steps_per_epoch, total_steps)
    ema = ModelEmaV3(model, decay=args.ema) if args.ema > 0 else None
    fp16 = resolve_amp(args.amp, ctx.device) == torch.float16
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=fp16)
    anchor = None
    if args.anchor_weight > 0:
        anchor = PromptAnchorLoss.from_model(model, kind=args.anchor_kind)
    return TrainState(model, ema, optimizer, scheduler, scaler, anchor)


def build_loss(args: argparse.Namespace, train_set: Any) -> nn.Module:
    """The ``--loss`` criterion, its class statistics counted on the training list."""
    try:
        if args.loss == "asl":
            return AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05, reduction="mean")
        if args.loss == "bce":
            return AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0, reduction="mean")
        if args.loss == "two-way":
            return TwoWayLoss(tp=4.0, tn=1.0)
        if args.loss == "db":
            return DistributionBalancedLoss.from_preset(
                args.db_preset, class_counts(train_set), len(train_set),
                fix_init_bias=args.db_fix_init_bias,
            )  # fmt: skip
        if args.loss == "logit-adjusted":
            return LogitAdjustedLoss(class_priors(train_set), tau=args.la_tau)
    except ValueError as e:
        raise SystemExit(f"error: --loss {args.loss} on the training list: {e}") from None
    raise ValueError(f"unknown --loss {args.loss!r}")


# ---------------------------------------------------------------------- one epoch
def _optimizer_step(
    loss: torch.Tensor, state: TrainState, params: Iterable[nn.Parameter], clip_grad: float | None
) -> None:
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    if clip_grad is not None:
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_(params, clip_grad)
    state.scaler.step(state.optimizer)
    state.scaler.update()


def train_one_epoch(
    net: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    state: TrainState,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    clip_grad: float | None = None,
    channels_last: bool = False,
    desc: str | None = None,
    penalty: Callable[[], torch.Tensor] | None = None,
) -> dict[str, float]:
    """One pass over ``loader``: forward ``net`` (the model, or its DDP / compiled wrapper),
    step the optimiser, the schedule and the EMA once per batch.

    ``penalty``, if given, is called once per step (outside autocast) and added to the loss, e.g.
    the weighted prompt anchor.

    Returns:
        ``loss``: the mean training loss, penalty included (over every rank under DDP); ``lr``:
        the head's learning rate at the epoch's last step; with ``penalty``, ``penalty``: its
        mean.
    """
    net.train()
    loss_sum, steps, lr = torch.zeros((), device=device), 0, math.nan
    penalty_sum = torch.zeros((), device=device)
    bar = tqdm(loader, desc=desc, leave=False, disable=True if desc is None else None)
    for images, targets in bar:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = net(images)
        loss = loss_fn(logits, targets.to(device, non_blocking=True))
        if penalty is not None:
            extra = penalty()
            penalty_sum += extra.detach()
            loss = loss + extra
        _optimizer_step(loss, state, net.parameters(), clip_grad)
        lr = state.optimizer.param_groups[-1]["lr"]  # the head's, for the log
        state.scheduler.step()
        if state.ema is not None:
            state.ema.update(unwrap_model(net))
        loss_sum += loss.detach()
        steps += 1
        if not bar.disable and steps % 20 == 1:  # .item() waits for the GPU: not every step
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(loss_sum)
        dist.all_reduce(penalty_sum)
        steps *= dist.get_world_size()
    stats = {"loss": float(loss_sum) / max(steps, 1), "lr": lr}
    if penalty is not None:
        stats["penalty"] = float(penalty_sum) / max(steps, 1)
    return stats


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    evaluator: MultiLabelEvaluator,
    *,
    amp_dtype: torch.dtype | None = None,
    num_samples: int | None = None,
) -> dict[str, float]:
    """mAP (overall, head / medium / tail), CF1, OF1 ... of ``model`` on ``loader``.

    Under DDP call it on every rank with its share: ``num_samples`` (the dataset's size) drops
    the ``DistributedSampler`` padding when the shares are gathered.
    """
    model.eval()
    model.freeze_class_embeddings()  # a trainable text tower encodes the prompts once per eval
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits, targets = collect_logits(model, loader, progress=False)
    evaluator.reset()
    evaluator.update(logits, targets)
    return evaluator.compute(num_samples=num_samples)


# ---------------------------------------------------------------------- logs and exports
def nan_to_ninf(value: float) -> float:
    return -math.inf if math.isnan(value) else value


def describe(metrics: dict[str, float]) -> str:
    def pct(key: str) -> str:
        value = metrics.get(key, math.nan)
        return "n/a" if math.isnan(value) else f"{100 * value:.2f}"

    return (
        f"mAP {pct('mAP')} (head {pct('mAP_head')}, medium {pct('mAP_medium')}, "
        f"tail {pct('mAP_tail')}) CF1 {pct('CF1')} OF1 {pct('OF1')}"
    )


def card_metrics(metrics: dict[str, float]) -> dict[str, float]:
    keys = {"mAP": "mAP", "mAP_head": "head mAP", "mAP_medium": "medium mAP"}
    keys.update({"mAP_tail": "tail mAP", "CF1": "CF1", "OF1": "OF1"})
    return {
        label: 100 * metrics[key]
        for key, label in keys.items()
        if key in metrics and math.isfinite(metrics[key])
    }


def epoch_metrics(entry: dict[str, Any], which: str) -> dict[str, float]:
    """The metrics of ``which`` (``"model"`` or ``"EMA"``) in one history entry."""
    prefix = which + "/"
    return {k[len(prefix) :]: v for k, v in entry.items() if k.startswith(prefix)}


def log_epoch(args: argparse.Namespace, state: TrainState, results: dict, seconds: float) -> None:
    entry = state.history[-1]
    parts = [f"epoch {entry['epoch']}/{args.epochs}", f"loss {entry['train_loss']:.4f}"]
    parts.append(f"lr {entry['lr']:.2e}")
    parts += [f"{k} {describe(res)}" for k, res in results.items()]
    parts.append(f"best mAP {100 * state.best_score:.2f} (epoch {state.best_epoch})")
    parts.append(f"{seconds:.0f} s")
    _logger.info(" | ".join(parts))


def calibrate(module: nn.Module, args: argparse.Namespace) -> None:
    """Set per-class thresholds on ``module`` from its logits on ``--calibrate-list``."""
    from cprfl_zoo.thresholds import calibrate_thresholds

    tf = eval_transform(module)  # the data config validation used and the model saves
    try:
        data = MultiLabelImageList(
            args.calibrate_list, image_root(args), transform=tf, class_names=module.class_names
        )
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: --calibrate-list: {e}") from None
    loader = DataLoader(data, batch_size=args.batch_size, num_workers=args.workers)
    module.eval()
    module.freeze_class_embeddings()
    logits, targets = collect_logits(module, loader, progress=False)
    result = calibrate_thresholds(logits, targets)
    module.set_thresholds(result.as_list())
    _logger.info(
        "thresholds calibrated on %d images of %s: global %.3f, per class %.3f..%.3f "
        "(%d classes without a positive use the global one)",
        len(data),
        args.calibrate_list,
        result.global_threshold,
        float(result.thresholds.min()),
        float(result.thresholds.max()),
        len(result.fallback_classes),
    )


def posthoc_priors(train_set: Any) -> torch.Tensor:
    """The training priors of ``--posthoc-la-tau``, Laplace-smoothed, (n_c + 1) / (N + 2), so a
    class without training positives (or negatives) gets a finite offset."""
    counts = class_counts(train_set).double()
    return (counts + 1) / (len(train_set) + 2)


def export(
    module: nn.Module,
    args: argparse.Namespace,
    entry: dict[str, Any],
    which: str,
    priors: torch.Tensor | None = None,
) -> None:
    """``save_pretrained`` into <output>/model, with the epoch's scores in the model card."""
    metrics = card_metrics(epoch_metrics(entry, which))
    if args.posthoc_la_tau is not None and priors is not None:
        module.set_logit_adjustment(logit_adjustment_offset(priors, tau=args.posthoc_la_tau))
        # the card's OF1 / CF1 were measured on the unadjusted logits
        metrics = {k: v for k, v in metrics.items() if k not in ("OF1", "CF1")}
    if args.calibrate_list is not None:
        calibrate(module, args)
        # OF1 / CF1 were measured at 0.5 during training; the card reports thresholded metrics
        # at the thresholds the model carries, so they are left out rather than mislabelled.
        metrics = {k: v for k, v in metrics.items() if k not in ("OF1", "CF1")}
    module.save_pretrained(
        args.output / MODEL_DIR,
        repo_id=args.push_to_hub,
        metrics=metrics,
        model_card={
            "notes": f"Weights of the {which} after epoch {entry['epoch']} of {args.epochs}; "
            f"trained with cprfl_zoo's examples/train.py (--export {args.export})."
        },
    )


def export_final(args: argparse.Namespace, state: TrainState) -> tuple[dict[str, Any], str]:
    """Export the last epoch's EMA (or model) unless ``--export best`` already holds the best;
    return the exported history entry and which weights it describes."""
    if args.export == "best" and state.best_epoch > 0:  # best: unless no finite mAP was measured
        entry = state.history[state.best_epoch - 1]
        return entry, entry["best_of_epoch"]
    which = "EMA" if state.ema is not None else "model"
    export(state.modules()[which], args, state.history[-1], which, state.train_priors)
    return state.history[-1], which


def push_to_hub(args: argparse.Namespace, entry: dict[str, Any], which: str) -> None:
    exported = cprfl_zoo.CPRFL.from_pretrained(args.output / MODEL_DIR)
    info = exported.push_to_hub(args.push_to_hub, metrics=card_metrics(epoch_metrics(entry, which)))
    _logger.info("pushed to https://huggingface.co/%s (%s)", args.push_to_hub, info)


# ---------------------------------------------------------------------- checkpoints
def save_checkpoint(
    state: TrainState, args: argparse.Namespace, class_names: list[str], path: Path
) -> Path:
    """Write ``state`` to ``path`` atomically (a temporary file renamed over it): a run killed at
    any moment leaves the previous complete checkpoint. Plain tensors and values only, so that
    ``torch.load(path, weights_only=True)`` reads it."""
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "model": state.model.state_dict(),
        "ema": state.ema.module.state_dict() if state.ema is not None else None,
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "prompt_anchor": state.anchor.anchor if state.anchor is not None else None,
        "epoch": state.epoch,
        "best_score": state.best_score,
        "best_epoch": state.best_epoch,
        "history": state.history,
        "class_names": class_names,
        "args": args_to_dict(args),
    }
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return path


def load_checkpoint(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """Read ``--resume``, refusing other files, other classes and changed fixed arguments."""
    path = args.resume
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SystemExit(f"error: cannot read checkpoint --resume {path}: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise SystemExit(f"error: --resume {path} is not a checkpoint written by train.py")
    if ckpt["class_names"] != names:
        raise SystemExit(
            f"error: --resume {path} was trained on other classes ({len(ckpt['class_names'])} "
            f"classes, first {ckpt['class_names'][:3]}) than this data ({len(names)} classes)"
        )
    saved, current = ckpt["args"], args_to_dict(args)
    if "dim" in saved:  # a checkpoint of 0.1.0's train.py
        saved = {**saved, "embed_dim": saved["dim"]}
    for key in RESUME_FIXED_ARGS:
        before = saved.get(key, RESUME_DEFAULTS.get(key))
        if before != current.get(key):
            raise SystemExit(
                f"error: --{key.replace('_', '-')} is {current.get(key)!r} but the checkpoint "
                f"--resume {path} was trained with {before!r}; a resumed run must keep it"
            )
    return ckpt


def restore(state: TrainState, ckpt: dict[str, Any]) -> None:
    """Load a checkpoint of :func:`save_checkpoint` into ``state``."""
    state.model.load_state_dict(ckpt["model"])
    if state.ema is not None:
        state.ema.module.load_state_dict(ckpt["ema"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    state.scaler.load_state_dict(ckpt["scaler"])
    if state.anchor is not None:  # the prompts of the run's first start, not of this one
        state.anchor.anchor.copy_(ckpt["prompt_anchor"])
    state.epoch, state.best_score = ckpt["epoch"], ckpt["best_score"]
    state.best_epoch, state.history = ckpt["best_epoch"], ckpt["history"]


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ctx = setup_distributed(args.device)
    try:
        with logging_to(ctx, args.output):
            train(ctx, args)
    finally:
        if ctx.distributed:
            dist.destroy_process_group()
    return 0


def wrap_model(ctx: Context, args: argparse.Namespace, model: nn.Module) -> nn.Module:
    """What the training steps call: the model, in DDP under torchrun, compiled with --compile."""
    net = model
    if ctx.distributed:
        net = DistributedDataParallel(
            model, device_ids=None if ctx.device.index is None else [ctx.device.index]
        )
    return torch.compile(net) if args.compile else net


def log_environment(ctx: Context, args: argparse.Namespace) -> None:
    _logger.info(
        "cprfl_zoo %s, torch %s, timm %s; %d process(es) on %s",
        cprfl_zoo.__version__, torch.__version__, timm.__version__, ctx.world_size, ctx.device,
    )  # fmt: skip
    _logger.info("arguments: %s", json.dumps(args_to_dict(args), sort_keys=True))
    if args.recipe is not None:
        kept = recipe_values_kept(args)
        changed = sorted(k.replace("_", "-") for k in set(RECIPES[args.recipe]) - set(kept))
        _logger.info(
            "recipe %s: %s%s", args.recipe,
            ", ".join(f"{k.replace('_', '-')} {v}" for k, v in kept.items()),
            f"; overridden by flags: {', '.join(changed)}" if changed else "",
        )  # fmt: skip


def history_entry(epoch: int, stats: dict[str, float], results: dict[str, dict]) -> dict:
    """One line of metrics.json: the training loss and lr, every metric of model and EMA."""
    best = max(results, key=lambda k: nan_to_ninf(results[k]["mAP"]))
    scores = {f"{k}/{m}": v for k, res in results.items() for m, v in res.items()}
    penalty = {"train_anchor_penalty": stats["penalty"]} if "penalty" in stats else {}
    return {
        "epoch": epoch,
        "train_loss": stats["loss"],
        **penalty,
        "lr": stats["lr"],
        "best_of_epoch": best,
        **scores,
    }


def save_outputs(
    args: argparse.Namespace, state: TrainState, names: list[str], improved: bool
) -> None:
    """Rank 0, after each epoch: the best model so far (--export best), checkpoint, metrics."""
    entry = state.history[-1]
    if improved and args.export == "best":
        which = entry["best_of_epoch"]
        export(state.modules()[which], args, entry, which, state.train_priors)
    save_checkpoint(state, args, names, args.output / CHECKPOINT_NAME)
    atomic_write_text(args.output / "metrics.json", json.dumps(state.history, indent=1) + "\n")


def finish(args: argparse.Namespace, state: TrainState, seconds: float, stopped: bool) -> None:
    """Rank 0, after the last epoch: export, log the summary, push to the Hub."""
    if stopped:
        _logger.info(
            "stopping after epoch %d (--stop-after-epoch); continue with --resume %s",
            state.epoch, args.output / CHECKPOINT_NAME,
        )  # fmt: skip
        return
    entry, which = export_final(args, state)
    _logger.info(
        "done in %.0f s; best mAP %.2f at epoch %d; %s/ holds the %s of epoch %d (%s)",
        seconds, 100 * state.best_score, state.best_epoch, args.output / MODEL_DIR, which,
        entry["epoch"], describe(epoch_metrics(entry, which)),
    )  # fmt: skip
    if args.push_to_hub is not None:
        push_to_hub(args, entry, which)


def anchor_penalty(state: TrainState, weight: float) -> Callable[[], torch.Tensor] | None:
    """``weight x`` the prompt anchor's distance of the model's current prompts (float32), or None.

    It reads the prompts of ``state.model``, the module itself: under DDP its parameters are the
    ones the wrapper trains, and their gradients (task loss plus penalty) are averaged as one.
    """
    if state.anchor is None:
        return None
    anchor, model = state.anchor, state.model

    def penalty() -> torch.Tensor:
        return weight * anchor(model.get_prompts())

    return penalty


def train(ctx: Context, args: argparse.Namespace) -> TrainState:
    """Build everything, run the epochs (from ``--resume`` on), export; return the final state."""
    start_time = time.perf_counter()
    if ctx.is_main:
        log_environment(ctx, args)
    names = class_names_for(args)
    model = build_model(ctx, args, names)
    train_loader, test_loader = build_loaders(ctx, args, model, names)
    state = build_state(
        ctx, args, model, len(train_loader), total_steps=schedule_steps(train_loader, args.epochs)
    )
    if args.posthoc_la_tau is not None:
        state.train_priors = posthoc_priors(train_loader.dataset)
    if args.resume is not None:
        restore(state, load_checkpoint(args, names))
        _logger.info("resumed from %s after epoch %d", args.resume, state.epoch)
    evaluator = MultiLabelEvaluator(
        train_loader.dataset.class_counts, head_threshold=args.head_threshold,
        tail_threshold=args.tail_threshold, class_names=names,
    )  # fmt: skip
    net = wrap_model(ctx, args, model)
    amp_dtype = resolve_amp(args.amp, ctx.device)
    loss_fn = build_loss(args, train_loader.dataset).to(ctx.device)
    penalty = anchor_penalty(state, args.anchor_weight)
    if ctx.is_main:
        anchor = f"; prompt anchor x {args.anchor_weight}: {state.anchor}" if penalty else ""
        _logger.info("loss: %s%s", " ".join(str(loss_fn).split()), anchor)
    last_epoch = args.stop_after_epoch or args.epochs
    for epoch in range(state.epoch, last_epoch):
        epoch_start = time.perf_counter()
        seed_epoch(args.seed, epoch, ctx.rank)
        train_loader.sampler.set_epoch(epoch)
        stats = train_one_epoch(
            net, train_loader, state, loss_fn, device=ctx.device, amp_dtype=amp_dtype,
            clip_grad=args.clip_grad, channels_last=args.channels_last,
            desc=f"epoch {epoch + 1}/{args.epochs}" if ctx.is_main else None, penalty=penalty,
        )  # fmt: skip
        sync_batchnorm_stats(ctx, *state.modules().values())
        results = {
            which: validate(
                module, test_loader, evaluator, amp_dtype=amp_dtype,
                num_samples=len(test_loader.dataset),
            )
            for which, module in state.modules().items()
        }  # fmt: skip
        entry = history_entry(epoch + 1, stats, results)
        improved = state.record(entry, results[entry["best_of_epoch"]]["mAP"])
        if ctx.is_main:
            log_epoch(args, state, results, time.perf_counter() - epoch_start)
            save_outputs(args, state, names, improved)
    if ctx.is_main:
        finish(args, state, time.perf_counter() - start_time, stopped=last_epoch < args.epochs)
    barrier(ctx)
    return state


if __name__ == "__main__":
    sys.exit(main())
