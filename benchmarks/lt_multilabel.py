"""Long-tailed multi-label accuracy benchmark on real offline images (issue 7).

Composes a long-tailed multi-label set of 20 classes (10 Fashion-MNIST clothing classes, 10
MNIST digits) with 1-4 objects per canvas (:func:`cprfl_zoo.synthetic.compose_set`), trains four
heads with the same budget on an ImageNet backbone and prints mAP overall / head / medium /
tail, mean ± std over seeds: ``linear-BCE`` and ``linear-ASL`` (global pool + Linear),
``CPRFL-ASL`` (class embeddings from all-MiniLM-L6-v2, passed as ``create_cprfl(text_encoder=)``)
and ``CPRFL-ASL-random`` (random unit-norm embeddings).

Data, weights and encoder come from installed packages (``benchmarks/_assets.py``; a missing
one stops with the command that installs it). Protocol: training counts decay exponentially
from 300 to 3 over a seeded class order, sources from the training images only; a fixed
balanced test set (40 canvases per class) from the test images only; 128 px canvases, backbone
tokens computed once (``--finetune`` trains the backbone too); a CPRFL head of width 256, 4 VSI
heads of 64, FFN 512; AdamW, one-cycle to lr 1e-3 (1e-4 with ``--finetune``), 25 epochs, batch
32; head / medium / tail >= 100, 20-99, < 20 training positives (halved with ``--quick``);
3 seeds. Details and results: ``docs/src/benchmark_accuracy.md``.

Run: ``python benchmarks/lt_multilabel.py [--quick] [--finetune]``.
Writes ``benchmarks/results/lt_multilabel.json``.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import _assets
import _lt_train
import numpy as np
import torch
import torch.nn.functional as F
from _heads import CPRFLOnTokens, OnImages, PooledLinear, make_cprfl, make_loss
from _lt_multilabel_data import (
    BACKBONE,
    CLASS_NAMES,
    CLOTHING,
    DIGITS,
    METHODS,
    QUICK,
    TEMPLATE,
    BenchConfig,
    build_sources,
    config_for,
)
from _lt_multilabel_report import environment, format_table, summary_rows, write_json
from _lt_train import to_input
from torch import nn

from cprfl_zoo.synthetic import SourceImages, compose_set, long_tailed_counts

# Re-exported: benchmarks/thresholds_f1.py and the tests use them as lt_multilabel.<name>.
__all__ = ["CLOTHING", "DIGITS", "QUICK", "BenchConfig", "PooledLinear", "SourceImages"]
__all__ += ["build_sources", "compose_set", "long_tailed_counts", "to_input"]
RESULTS = Path(__file__).resolve().parent / "results" / "lt_multilabel.json"
_log = _lt_train.logger("lt_multilabel")


def extract_tokens(backbone: nn.Module, canvases: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """Local backbone tokens (N, v, d0) of all canvases, as CPRFL.forward_features returns them."""
    return _lt_train.extract_tokens(backbone, canvases, "cpu", batch_size)


def train(module, get_batch: Callable, targets, loss_fn, cfg: BenchConfig, seed: int) -> None:
    """``_lt_train.train`` with the configuration's budget; ``get_batch(idx)``."""
    kw = {"lr": cfg.lr, "epochs": cfg.epochs, "batch_size": cfg.batch_size}
    batch = lambda idx, training: get_batch(idx)  # noqa: E731
    _lt_train.train(module, batch, targets, loss_fn, **kw, weight_decay=cfg.weight_decay, seed=seed)


def predict(module: nn.Module, get_batch: Callable, n: int, batch: int) -> torch.Tensor:
    """Logits of ``n`` samples, in order; ``get_batch(idx)``."""
    return _lt_train.predict(module, lambda idx, training: get_batch(idx), n, batch)


def build_method(method, cfg, backbone, backbone_state, text_encoder, seed) -> nn.Module:
    """The trainable module of one method (token head, or backbone + head with --finetune)."""
    num_classes, width = len(CLASS_NAMES), backbone.num_features
    if method.startswith("linear"):
        head = PooledLinear(width, num_classes)
        return OnImages(copy.deepcopy(backbone), head) if cfg.finetune else head
    if method == "CPRFL-ASL":
        embed = {"text_encoder": text_encoder}
    else:
        g = torch.Generator().manual_seed(10_000 + seed)
        embed = {"text_embeddings": F.normalize(torch.randn(num_classes, 384, generator=g), dim=-1)}
    model = make_cprfl(BACKBONE, backbone_state, CLASS_NAMES, cfg.head, **embed)
    if cfg.finetune:
        return model
    model.backbone.requires_grad_(False)
    return CPRFLOnTokens(model)


def run_benchmark(cfg: BenchConfig, fashion_dir: Path | None = None) -> dict[str, Any]:
    """Run the whole benchmark and return the results document."""
    from cprfl_zoo.metrics import long_tail_map, long_tail_split

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    start, feature_s = time.perf_counter(), 0.0
    _log(f"config: {asdict(cfg)}; torch threads {torch.get_num_threads()}")
    fashion = _assets.load_fashion_mnist(_assets.ensure_fashion_mnist(fashion_dir))
    sources = build_sources(fashion, _assets.load_mnist_5k())
    backbone, backbone_state, check = _lt_train.imagenet_backbone(BACKBONE)
    text_encoder = _assets.MiniLMTextEncoder(TEMPLATE)
    objects = {"canvas_size": cfg.canvas_size, "min_objects": cfg.min_objects}
    objects["max_objects"] = cfg.max_objects

    def inputs(images: np.ndarray) -> Callable[[torch.Tensor], torch.Tensor]:
        nonlocal feature_s
        if cfg.finetune:
            return lambda idx: to_input(images[idx.numpy()])
        t = time.perf_counter()
        tokens = extract_tokens(backbone, images)
        feature_s += time.perf_counter() - t
        return tokens.__getitem__

    try:
        per_class = [cfg.test_per_class] * len(CLASS_NAMES)
        rng = np.random.default_rng([cfg.test_seed, 2])
        test = compose_set(sources, per_class, test=True, rng=rng, **objects)
        test_targets, test_batch = torch.from_numpy(test.targets).float(), inputs(test.images)
        per_seed: list[dict[str, Any]] = []
        splits = []
        for seed in cfg.seeds:
            order = np.random.default_rng([seed, 0]).permutation(len(CLASS_NAMES))
            counts = long_tailed_counts(len(CLASS_NAMES), cfg.max_count, cfg.imbalance, order)
            rng = np.random.default_rng([seed, 1])
            trainset = compose_set(sources, counts, test=False, rng=rng, **objects)
            split = long_tail_split(counts.tolist(), cfg.head_threshold, cfg.tail_threshold)
            targets, train_batch = (
                torch.from_numpy(trainset.targets).float(),
                inputs(trainset.images),
            )
            _log(f"seed {seed}: {len(targets)} training canvases")
            for method in METHODS:
                torch.manual_seed(seed)
                module = build_method(method, cfg, backbone, backbone_state, text_encoder, seed)
                t = time.perf_counter()
                train(module, train_batch, targets, make_loss(method), cfg, seed)
                row = {"seed": seed, "method": method, "train_s": round(time.perf_counter() - t, 2)}
                scores = predict(module, test_batch, len(test_targets), 256)
                result = long_tail_map(scores, test_targets, split, class_names=CLASS_NAMES)
                row.update({k: round(v, 2) for k, v in result.as_dict(100).items()})
                per_seed.append(row)
                _log(f"seed {seed} {method}: {row}")
            names = {g: [CLASS_NAMES[i] for i in getattr(split, g)] for g in ("head", "medium")}
            names["tail"] = [CLASS_NAMES[i] for i in split.tail]
            splits.append({"counts": counts.tolist(), "order": order.tolist(), **names})
            splits[-1]["num_train_canvases"] = len(targets)
    finally:
        torch.set_num_threads(threads)
    return {
        "benchmark": "lt_multilabel",
        "config": asdict(cfg),
        "thresholds": {"head": cfg.head_threshold, "tail": cfg.tail_threshold},
        "class_names": CLASS_NAMES,
        "template": TEMPLATE,
        "backbone": BACKBONE,
        "imagenet_check": check,
        "num_test_canvases": len(test_targets),
        "rows": summary_rows(per_seed, METHODS),
        "per_seed": per_seed,
        "splits": splits,
        "feature_extraction_s": round(feature_s, 1),
        "runtime_s": round(time.perf_counter() - start, 1),
        "environment": environment(),
    }


def run(quick: bool = False) -> list[dict]:
    """Run the benchmark (frozen-feature mode) and return one row per method."""
    doc = run_benchmark(config_for(quick))
    write_json(doc, RESULTS)
    return doc["rows"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, fewer images and epochs")
    parser.add_argument("--finetune", action="store_true", help="train the backbone too (slow)")
    parser.add_argument("--epochs", type=int, help="override the number of epochs")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    parser.add_argument("--lr", type=float, help="override the peak learning rate")
    parser.add_argument("--threads", type=int, help="torch threads (default 1: fastest here)")
    parser.add_argument("--fashion-dir", type=Path, help="folder of the Fashion-MNIST idx files")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("epochs", "seeds", "lr", "threads")}
    overrides = {k: tuple(v) if k == "seeds" else v for k, v in overrides.items() if v}
    doc = run_benchmark(config_for(args.quick, args.finetune, **overrides), args.fashion_dir)
    write_json(doc, args.output)
    print(format_table(doc))
    print(f"results written to {args.output}")


if __name__ == "__main__":
    main()
