"""Train CPRFL on COCO-LT, VOC-LT, your own image lists or a tiny synthetic set.

One process (CPU or one GPU):

    python examples/train.py --dataset coco-lt --data-root /data/coco --output runs/coco

Several GPUs or machines, with DistributedDataParallel:

    torchrun --nproc_per_node 4 examples/train.py --dataset coco-lt --data-root /data/coco ...

The recipe is the paper's: AdamW (backbone at a tenth of the head's learning rate, no weight decay
on biases and norms), OneCycle with peak 1e-4, the asymmetric loss with gamma_neg 4, gamma_pos 0,
clip 0.05, a model EMA with decay 0.998, automatic mixed precision. Each epoch the model and its
EMA are evaluated on the test list (mAP overall and on the head / medium / tail classes, counted
on the training list), a checkpoint is written atomically (``checkpoint-last.pth``, resumable with
``--resume``), and the best of the two is exported with ``save_pretrained`` to ``<output>/model``
(optionally pushed to the Hub at the end with ``--push-to-hub``). Only rank 0 writes files.

``--batch-size`` is per process: with N processes each optimiser step sees N x batch-size images.
See docs/src/training.md for a step-by-step guide.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.distributed as dist
from timm.models import group_parameters
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

import cprfl_zoo
from cprfl_zoo.cli_args import (
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from cprfl_zoo.data import (
    MultiLabelImageList,
    create_lt_dataset,
    create_transforms,
    get_lt_benchmark,
    read_class_names,
)
from cprfl_zoo.fileio import atomic_path, atomic_write_text
from cprfl_zoo.losses import AsymmetricLoss
from cprfl_zoo.metrics import MultiLabelEvaluator
from cprfl_zoo.synthetic import DIGIT_NAMES, make_digit_composites, write_image_list
from cprfl_zoo.text import TextConfig, encode_class_names_info

_logger = logging.getLogger("train")

CHECKPOINT_NAME = "checkpoint-last.pth"
CHECKPOINT_FORMAT = "cprfl_zoo.train/1"
MODEL_DIR = "model"
RANDOM_TEXT_ENCODER = "random"
# Arguments that must not change when a run is resumed: they shape the model or the schedule.
RESUME_FIXED_ARGS = (
    "model",
    "dim",
    "num_heads",
    "head_dim",
    "mlp_dim",
    "epochs",
    "lr",
    "backbone_lr_scale",
    "pct_start",
    "max_steps",
    "ema",
    "amp",
    "trainable_text_encoder",
)


# ---------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train CPRFL (timm backbone + category-prompt head) for long-tailed "
        "multi-label classification; runs under torchrun for several GPUs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
        help="a tiny generated long-tailed digits set, written to <output>/synthetic_data "
        "(smoke tests)",
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
    data.add_argument("--workers", type=non_negative_int, default=4, help="loader processes")
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
    model.add_argument("--model", default="resnet101", help="timm backbone name (with tag)")
    model.add_argument(
        "--pretrained-backbone",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start from timm's pretrained (ImageNet) backbone weights",
    )
    model.add_argument("--dim", type=positive_int, default=2048, help="prompt / VSI width d")
    model.add_argument("--num-heads", type=positive_int, default=8, help="VSI attention heads")
    model.add_argument("--head-dim", type=positive_int, default=512, help="width of each head")
    model.add_argument("--mlp-dim", type=positive_int, default=2048, help="VSI FFN hidden width")
    model.add_argument("--drop", type=fraction, default=0.1, help="VSI dropout")
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
        action="store_true",
        help="fine-tune the CLIP text tower with the model, re-encoding the class prompts every "
        "step (the official code's mode); needs an open_clip --text-encoder",
    )
    model.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    model.add_argument("--compile", action="store_true", help="torch.compile the model")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=positive_int, default=80)
    optim.add_argument("--batch-size", type=positive_int, default=16, help="per process")
    optim.add_argument("--lr", type=positive_float, default=1e-4, help="peak learning rate (head)")
    optim.add_argument(
        "--backbone-lr-scale",
        type=non_negative_float,
        default=0.1,
        help="backbone learning rate = lr x this (0 freezes the backbone's weights)",
    )
    optim.add_argument("--weight-decay", type=non_negative_float, default=1e-4)
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
        "--clip-grad", type=positive_float, default=None, help="clip the gradient norm"
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
        "--max-steps",
        type=positive_int,
        default=None,
        help="at most this many optimiser steps per epoch (smoke tests, quick looks)",
    )
    run.add_argument(
        "--stop-after-epoch",
        type=positive_int,
        default=None,
        help="end the run after this epoch, its checkpoint written (jobs with a time limit); "
        "continue with --resume",
    )
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    run.add_argument(
        "--dump-weights-digest",
        action="store_true",
        help="every rank writes the SHA-256 of its final weights to "
        "<output>/weights-digest-rank<r>.json (to check that DDP ranks agree)",
    )
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


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject inconsistent arguments with a message that names the argument."""
    sources = [
        flag
        for flag, given in (
            ("--dataset", args.dataset is not None),
            ("--train-list", args.train_list is not None),
            ("--synthetic", args.synthetic),
        )
        if given
    ]
    if len(sources) != 1:
        got = ", ".join(sources) if sources else "none"
        parser.error(
            f"choose the data with exactly one of --dataset, --train-list or --synthetic (got "
            f"{got})"
        )
    if args.dataset is not None:
        if args.data_root is None:
            info = get_lt_benchmark(args.dataset)
            parser.error(f"--dataset {args.dataset} needs --data-root: {info.images}")
        _require_dir(parser, "--data-root", args.data_root)
        if args.split_root is not None:
            _require_dir(parser, "--split-root", args.split_root)
    else:
        for flag, value in (("--data-root", args.data_root), ("--split-root", args.split_root)):
            if value is not None:
                parser.error(f"argument {flag} only applies to --dataset")
    if args.train_list is not None:
        _require_file(parser, "--train-list", args.train_list)
        _require_file(parser, "--test-list", args.test_list)
        _require_dir(parser, "--image-root", args.image_root)
        _require_file(parser, "--classes", args.classes)
    else:
        for flag, value in (
            ("--test-list", args.test_list),
            ("--image-root", args.image_root),
            ("--classes", args.classes),
        ):
            if value is not None:
                parser.error(f"argument {flag} only applies to --train-list")
    if args.calibrate_list is not None:
        _require_file(parser, "--calibrate-list", args.calibrate_list)
    if args.head_threshold < args.tail_threshold:
        parser.error(
            f"argument --head-threshold ({args.head_threshold}) must be >= --tail-threshold "
            f"({args.tail_threshold})"
        )
    if not timm.is_model(args.model.split(".", 1)[0]):
        close = timm.list_models(f"*{args.model.split('.', 1)[0][:6]}*")[:5]
        hint = f"; similar names: {', '.join(close)}" if close else ""
        parser.error(f"argument --model: {args.model!r} is not a timm model name{hint}")
    if args.text_encoder == RANDOM_TEXT_ENCODER:
        if args.text_pretrained is not None:
            parser.error("argument --text-pretrained does not apply to --text-encoder random")
        if args.trainable_text_encoder:
            parser.error(
                "argument --trainable-text-encoder needs a CLIP --text-encoder, not random"
            )
    else:
        try:
            TextConfig.resolve(args.text_encoder, args.text_pretrained)
        except ValueError as e:
            parser.error(f"argument --text-encoder/--text-pretrained: {e}")
    if args.output.exists() and not args.output.is_dir():
        parser.error(f"argument --output: {args.output} exists and is not a folder")
    if args.resume is not None and not args.resume.is_file():
        parser.error(f"argument --resume: checkpoint not found: {args.resume}")
    if args.stop_after_epoch is not None and args.stop_after_epoch > args.epochs:
        parser.error(
            f"argument --stop-after-epoch: {args.stop_after_epoch} is beyond --epochs {args.epochs}"
        )
    if args.push_to_hub is not None and (
        args.push_to_hub.count("/") != 1 or not all(args.push_to_hub.split("/"))
    ):
        parser.error(f"argument --push-to-hub: expected 'user/repo', got {args.push_to_hub!r}")
    if args.device is not None:
        try:
            torch.device(args.device)
        except RuntimeError as e:
            parser.error(f"argument --device: {e}")


# ---------------------------------------------------------------------- distributed helpers
@dataclass(frozen=True)
class Context:
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


def setup_distributed(device_arg: str | None) -> Context:
    """Initialise the process group when launched by torchrun (``WORLD_SIZE`` > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        device = torch.device(device_arg or ("cuda" if torch.cuda.is_available() else "cpu"))
        return Context(0, 1, 0, device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    wanted = torch.device(device_arg or ("cuda" if torch.cuda.is_available() else "cpu"))
    if wanted.type == "cuda":
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = wanted, "gloo"
    dist.init_process_group(backend=backend)
    return Context(dist.get_rank(), dist.get_world_size(), local_rank, device)


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


def sync_buffers(ctx: Context, *modules: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every rank, so all ranks hold one model.

    DDP broadcasts buffers before each forward pass, but the last forward pass of an epoch
    updates each rank's statistics with its own batch.
    """
    if not ctx.distributed:
        return
    for module in modules:
        for buf in module.buffers():
            dist.broadcast(buf.data, src=0)


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed every generator from (seed, epoch, rank), so a resumed run repeats the same epochs."""
    value = (seed * 1_000_003 + epoch * 1_009 + rank) % (2**31)
    torch.manual_seed(value)
    random.seed(value)
    with contextlib.suppress(ImportError):
        import numpy as np

        np.random.seed(value)


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
    try:
        yield
    finally:
        for handler in handlers:
            handler.close()
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]


# ---------------------------------------------------------------------- files
def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename it over ``path``."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def state_digest(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def args_to_dict(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments as plain values (paths as strings), loadable with ``weights_only=True``."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


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


def build_datasets(
    ctx: Context, args: argparse.Namespace, model: nn.Module, names: list[str]
) -> tuple[MultiLabelImageList, MultiLabelImageList]:
    size = args.img_size
    train_tf = create_transforms(model, recipe=args.aug, is_training=True, img_size=size)
    test_tf = create_transforms(model, recipe=args.aug, is_training=False, img_size=size)
    try:
        if args.dataset is not None:
            with local_main_first(ctx):  # the list files are downloaded once per machine
                train = create_lt_dataset(
                    args.dataset, "train", args.data_root, train_tf, split_root=args.split_root,
                    download=True,
                )  # fmt: skip
                test = create_lt_dataset(
                    args.dataset, "test", args.data_root, test_tf, split_root=args.split_root,
                    download=True,
                )  # fmt: skip
            return train, test
        if args.synthetic:
            root = prepare_synthetic(ctx, args)
            lists, image_root = (root / "train.txt", root / "test.txt"), root
        else:
            lists, image_root = (args.train_list, args.test_list), args.image_root
        train = MultiLabelImageList(lists[0], image_root, transform=train_tf, class_names=names)
        test = MultiLabelImageList(lists[1], image_root, transform=test_tf, class_names=names)
        return train, test
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


def build_loaders(
    ctx: Context, args: argparse.Namespace, train: Dataset, test: Dataset
) -> tuple[DataLoader, DataLoader, DistributedSampler]:
    train_sampler = DistributedSampler(
        train, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=args.seed,
        drop_last=True,
    )  # fmt: skip
    test_sampler = DistributedSampler(
        test, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=False
    )
    common = {
        "num_workers": args.workers,
        "pin_memory": ctx.device.type == "cuda",
        "persistent_workers": args.workers > 0,
    }
    train_loader = DataLoader(
        train, batch_size=args.batch_size, sampler=train_sampler, drop_last=True, **common
    )
    test_loader = DataLoader(test, batch_size=args.batch_size, sampler=test_sampler, **common)
    if len(train_loader) == 0:
        raise SystemExit(
            f"error: the training list has {len(train)} images, fewer than --batch-size "
            f"{args.batch_size} x {ctx.world_size} process(es)"
        )
    return train_loader, test_loader, train_sampler


# ---------------------------------------------------------------------- model
def class_embeddings(
    ctx: Context, args: argparse.Namespace, names: list[str]
) -> tuple[torch.Tensor | None, dict[str, Any] | None]:
    """Compute the class embeddings on rank 0 (filling the cache once) and share them."""
    if args.trainable_text_encoder:
        return None, None  # the model loads the text tower and encodes the prompts itself
    if args.text_encoder == RANDOM_TEXT_ENCODER:
        gen = torch.Generator().manual_seed(args.seed)
        emb = torch.randn(len(names), args.text_dim, generator=gen)
        _logger.warning(
            "FALLBACK: --text-encoder random: seeded random class embeddings (%d-d, seed %d); "
            "the prompts carry no meaning of the class names",
            args.text_dim,
            args.seed,
        )
        cfg = {"model_name": f"custom:random-normal(seed={args.seed})", "embed_dim": args.text_dim}
        return emb, cfg
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


def build_model(
    ctx: Context,
    args: argparse.Namespace,
    names: list[str],
    emb: torch.Tensor | None,
    cfg: dict[str, Any] | None,
) -> cprfl_zoo.CPRFL:
    kwargs: dict[str, Any] = {}
    if args.trainable_text_encoder:
        kwargs.update(trainable_text_encoder=True, text_encoder=args.text_encoder)
        if args.text_pretrained is not None:
            kwargs["text_pretrained"] = args.text_pretrained
    else:
        kwargs.update(text_embeddings=emb, text_encoder_cfg=cfg)
    pretrained_cfg = timm.get_pretrained_cfg(args.model.split(".", 1)[0])
    if pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
        kwargs["img_size"] = args.img_size  # ViT-like backbones resize their position embeddings
    torch.manual_seed(args.seed)
    with local_main_first(ctx):  # the backbone weights are downloaded once per machine
        try:
            model = cprfl_zoo.create_cprfl(
                args.model,
                class_names=names,
                pretrained_backbone=args.pretrained_backbone,
                dim=args.dim,
                num_heads=args.num_heads,
                head_dim=args.head_dim,
                mlp_hidden_dim=args.mlp_dim,
                drop_rate=args.drop,
                **kwargs,
            )
        except Exception as e:
            if not (args.pretrained_backbone or args.trainable_text_encoder):
                raise
            raise SystemExit(
                f"error: cannot create --model {args.model} with pretrained weights: "
                f"{type(e).__name__}: {e}\n(offline? --no-pretrained-backbone starts from "
                "random weights; the text tower of --trainable-text-encoder must be cached)"
            ) from e
    # What predict.py and the model card read: the size trained at, and the matching crop.
    model.pretrained_cfg["input_size"] = (3, args.img_size, args.img_size)
    if args.aug == "cprfl":
        model.pretrained_cfg.update(crop_pct=1.0, interpolation="bilinear")
    return model


def param_groups(model: nn.Module, args: argparse.Namespace) -> list[dict[str, Any]]:
    """AdamW groups: backbone at lr x scale, head at lr; no weight decay on biases and norms."""
    no_decay_names = set(model.no_weight_decay())
    named = dict(model.named_parameters())
    groups = []
    for members in group_parameters(model, model.group_matcher()).values():
        backbone = all(n.startswith("backbone.") for n in members)
        scale = args.backbone_lr_scale if backbone else 1.0
        decay, no_decay = [], []
        for name in members:
            param = named[name]
            if not param.requires_grad:
                continue
            if param.ndim <= 1 or name.endswith(".bias") or name in no_decay_names:
                no_decay.append(param)
            else:
                decay.append(param)
        tag = "backbone" if backbone else "head"
        for suffix, params, wd in (("", decay, args.weight_decay), ("_no_decay", no_decay, 0.0)):
            if params:
                groups.append(
                    {
                        "params": params,
                        "lr": args.lr * scale,
                        "weight_decay": wd,
                        "name": tag + suffix,
                    }
                )
    return groups


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


# ---------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(
    ctx: Context,
    model: nn.Module,
    loader: DataLoader,
    evaluator: MultiLabelEvaluator,
    amp_dtype: torch.dtype | None,
    channels_last: bool,
) -> dict[str, float]:
    model.eval()
    model.freeze_class_embeddings()  # a trainable text tower encodes the prompts once per eval
    evaluator.reset()
    for images, targets in loader:
        images = images.to(ctx.device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        evaluator.update(logits.float(), targets)
    return evaluator.compute(num_samples=len(loader.dataset))


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


def calibrate(module: nn.Module, args: argparse.Namespace) -> None:
    """Set per-class thresholds on ``module`` from its logits on ``--calibrate-list``."""
    from cprfl_zoo.predict import collect_logits
    from cprfl_zoo.thresholds import calibrate_thresholds

    tf = create_transforms(module, recipe=args.aug, is_training=False, img_size=args.img_size)
    if args.synthetic:
        root = args.output / "synthetic_data"
    else:
        root = args.data_root if args.dataset is not None else args.image_root
    try:
        data = MultiLabelImageList(
            args.calibrate_list, root, transform=tf, class_names=module.class_names
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


def export(module: nn.Module, args: argparse.Namespace, entry: dict[str, Any], which: str) -> None:
    """``save_pretrained`` into <output>/model, with the epoch's scores in the model card."""
    if args.calibrate_list is not None:
        calibrate(module, args)
    module.save_pretrained(
        args.output / MODEL_DIR,
        repo_id=args.push_to_hub,
        metrics=card_metrics(epoch_metrics(entry, which)),
        model_card={
            "notes": f"Weights of the {which} after epoch {entry['epoch']} of {args.epochs}; "
            f"trained with cprfl_zoo's examples/train.py (--export {args.export})."
        },
    )


# ---------------------------------------------------------------------- checkpoints
def load_checkpoint(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
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
    saved = ckpt["args"]
    current = args_to_dict(args)
    for key in RESUME_FIXED_ARGS:
        if saved.get(key) != current.get(key):
            flag = "--" + key.replace("_", "-")
            raise SystemExit(
                f"error: {flag} is {current.get(key)!r} but the checkpoint --resume {path} was "
                f"trained with {saved.get(key)!r}; a resumed run must keep it"
            )
    return ckpt


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    ctx = setup_distributed(args.device)
    try:
        with logging_to(ctx, args.output):
            return train(ctx, args)
    finally:
        if ctx.distributed:
            dist.destroy_process_group()


def train(ctx: Context, args: argparse.Namespace) -> int:
    start_time = time.perf_counter()
    if ctx.is_main:
        _logger.info(
            "cprfl_zoo %s, torch %s, timm %s; %d process(es) on %s",
            cprfl_zoo.__version__,
            torch.__version__,
            timm.__version__,
            ctx.world_size,
            ctx.device,
        )
        _logger.info("arguments: %s", json.dumps(args_to_dict(args), sort_keys=True))

    names = class_names_for(args)
    emb, text_cfg = class_embeddings(ctx, args, names)
    model = build_model(ctx, args, names, emb, text_cfg)
    train_set, test_set = build_datasets(ctx, args, model, names)
    train_loader, test_loader, train_sampler = build_loaders(ctx, args, train_set, test_set)
    steps_per_epoch = len(train_loader)
    if args.max_steps is not None:
        steps_per_epoch = min(steps_per_epoch, args.max_steps)
    if ctx.is_main:
        counts = train_set.class_counts
        _logger.info(
            "data: %d training / %d test images, %d classes; %d steps per epoch of %d x %d images",
            len(train_set),
            len(test_set),
            len(names),
            steps_per_epoch,
            args.batch_size,
            ctx.world_size,
        )
        head = int((counts >= args.head_threshold).sum())
        tail = int((counts < args.tail_threshold).sum())
        _logger.info(
            "classes: %d head (>= %d images), %d medium, %d tail (< %d images)",
            head,
            args.head_threshold,
            len(names) - head - tail,
            tail,
            args.tail_threshold,
        )

    model.to(ctx.device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = ModelEmaV3(model, decay=args.ema) if args.ema > 0 else None
    optimizer = torch.optim.AdamW(param_groups(model, args), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=args.epochs * steps_per_epoch,
        pct_start=args.pct_start,
    )
    amp_dtype = resolve_amp(args.amp, ctx.device)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp_dtype == torch.float16)
    loss_fn = AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05, reduction="mean")
    evaluator = MultiLabelEvaluator(
        train_set.class_counts,
        head_threshold=args.head_threshold,
        tail_threshold=args.tail_threshold,
        class_names=names,
    )

    start_epoch, best_score, best_epoch, history = 0, -math.inf, 0, []
    if args.resume is not None:
        ckpt = load_checkpoint(args, names)
        model.load_state_dict(ckpt["model"])
        if ema is not None:
            ema.module.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, best_score = ckpt["epoch"], ckpt["best_score"]
        best_epoch, history = ckpt["best_epoch"], ckpt["history"]
        if ctx.is_main:
            _logger.info("resumed from %s after epoch %d", args.resume, start_epoch)
        del ckpt

    net: nn.Module = model
    if ctx.distributed:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids)
    if args.compile:
        net = torch.compile(net)

    output = args.output
    stopped_early = False
    for epoch in range(start_epoch, args.epochs):
        epoch_start = time.perf_counter()
        seed_epoch(args.seed, epoch, ctx.rank)
        train_sampler.set_epoch(epoch)
        net.train()
        loss_sum = torch.zeros((), device=ctx.device)
        step_lr = math.nan
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{args.epochs}",
            disable=True if not ctx.is_main else None,
            leave=False,
        )
        for step, (images, targets) in enumerate(train_loader):
            if step >= steps_per_epoch:
                break
            images = images.to(ctx.device, non_blocking=True)
            targets = targets.to(ctx.device, non_blocking=True)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = net(images)
            loss = loss_fn(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if args.clip_grad is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            step_lr = optimizer.param_groups[-1]["lr"]  # the head's, for the log
            scheduler.step()
            if ema is not None:
                ema.update(model)
            loss_sum += loss.detach()
            bar.update()
            if not bar.disable and step % 20 == 0:  # .item() waits for the GPU: not every step
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        bar.close()
        if ctx.distributed:
            dist.all_reduce(loss_sum)
        train_loss = float(loss_sum) / (steps_per_epoch * ctx.world_size)
        sync_buffers(ctx, model, *([ema.module] if ema is not None else []))

        results = {
            "model": evaluate(ctx, model, test_loader, evaluator, amp_dtype, args.channels_last)
        }
        if ema is not None:
            results["EMA"] = evaluate(
                ctx, ema.module, test_loader, evaluator, amp_dtype, args.channels_last
            )
        which = max(results, key=lambda k: nan_to_ninf(results[k]["mAP"]))
        score = results[which]["mAP"]
        improved = not math.isnan(score) and score > best_score
        if improved:
            best_score, best_epoch = score, epoch + 1
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "lr": step_lr,
                "best_of_epoch": which,
                **{f"{k}/{m}": v for k, res in results.items() for m, v in res.items()},
            }
        )
        if ctx.is_main:
            parts = [f"epoch {epoch + 1}/{args.epochs}", f"loss {train_loss:.4f}"]
            parts.append(f"lr {step_lr:.2e}")
            parts += [f"{k} {describe(res)}" for k, res in results.items()]
            parts.append(f"best mAP {100 * best_score:.2f} (epoch {best_epoch})")
            parts.append(f"{time.perf_counter() - epoch_start:.0f} s")
            _logger.info(" | ".join(parts))
            if improved and args.export == "best":
                export(model if which == "model" else ema.module, args, history[-1], which)
            atomic_torch_save(
                {
                    "format": CHECKPOINT_FORMAT,
                    "model": model.state_dict(),
                    "ema": ema.module.state_dict() if ema is not None else None,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": epoch + 1,
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    "history": history,
                    "class_names": names,
                    "args": args_to_dict(args),
                },
                output / CHECKPOINT_NAME,
            )
            atomic_write_text(output / "metrics.json", json.dumps(history, indent=1) + "\n")
        if args.stop_after_epoch is not None and epoch + 1 >= args.stop_after_epoch:
            stopped_early = epoch + 1 < args.epochs
            if ctx.is_main and stopped_early:
                _logger.info(
                    "stopping after epoch %d (--stop-after-epoch); continue with --resume %s",
                    epoch + 1,
                    output / CHECKPOINT_NAME,
                )
            break

    if args.dump_weights_digest:
        digest = {
            "rank": ctx.rank,
            "world_size": ctx.world_size,
            "model": state_digest(model),
            "ema": state_digest(ema.module) if ema is not None else None,
        }
        atomic_write_text(output / f"weights-digest-rank{ctx.rank}.json", json.dumps(digest))

    if ctx.is_main and not stopped_early:
        if args.export == "last" or best_epoch == 0:  # best: unless no finite mAP was measured
            which = "EMA" if ema is not None else "model"
            export(ema.module if ema is not None else model, args, history[-1], which)
            entry = history[-1]
        else:
            entry = history[best_epoch - 1]
            which = entry["best_of_epoch"]
        _logger.info(
            "done in %.0f s; best mAP %.2f at epoch %d; %s/ holds the %s of epoch %d (%s)",
            time.perf_counter() - start_time,
            100 * best_score,
            best_epoch,
            output / MODEL_DIR,
            which,
            entry["epoch"],
            describe(epoch_metrics(entry, which)),
        )
        if args.push_to_hub is not None:
            exported = cprfl_zoo.CPRFL.from_pretrained(output / MODEL_DIR)
            metrics = card_metrics(epoch_metrics(entry, which))
            info = exported.push_to_hub(args.push_to_hub, metrics=metrics)
            _logger.info("pushed to https://huggingface.co/%s (%s)", args.push_to_hub, info)
    barrier(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
