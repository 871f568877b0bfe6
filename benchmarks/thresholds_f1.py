"""One global threshold against per-class thresholds, on the accuracy benchmark's setup.

Trains the ``CPRFL-ASL`` head of ``benchmarks/lt_multilabel.py`` (same data, backbone, text
encoder, head sizes and budget) and calibrates thresholds with
:func:`cprfl_zoo.thresholds.calibrate_thresholds` on a **long-tailed validation set** composed
from held-out training images (the last 100 training images of every class, never used for
training; class ``c`` is on ``n_c / 3.33`` validation canvases, 90 down to 1). On the balanced
test set it prints, side by side, OF1 / CF1 and the mean F1 of the head, medium and tail classes
with:

1. ``0.5``: the uncalibrated default;
2. ``global``: the one threshold that maximises validation OF1 (the peers' single threshold,
   but chosen on validation data instead of fixed at 0.7 or 0.8);
3. ``per-class``: each class's F1-optimal validation threshold (classes without a validation
   positive get the global one);
4. ``per-class (>= 5 positives)``: the same, but classes with fewer than 5 validation positives
   get the global one.

Run: ``python benchmarks/thresholds_f1.py [--quick] [--seeds 0 1 2]``.
Writes ``benchmarks/results/thresholds_f1.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import lt_multilabel as lt
import numpy as np
import torch
from _lt_train import imagenet_backbone

RESULTS = Path(__file__).resolve().parent / "results" / "thresholds_f1.json"
HELD_OUT = 100  # training images per class kept for the validation set
VAL_FRACTION = 0.3  # validation canvases per class, relative to the training count
RULES = ("0.5", "global", "per-class", "per-class (>= 5 positives)")


def _log(message: str) -> None:
    print(f"[thresholds_f1] {message}", file=sys.stderr, flush=True)


def split_sources(sources: lt.SourceImages) -> tuple[lt.SourceImages, lt.SourceImages]:
    """(training sources without the held-out images, validation sources of only those)."""
    held = np.zeros(len(sources.labels), bool)
    for c, pool in enumerate(sources.pools(test=False)):
        held[np.sort(pool)[-HELD_OUT:]] = True
        assert len(pool) - HELD_OUT >= 300, (c, len(pool))
    train = lt.SourceImages(
        sources.images, sources.labels, sources.is_test | held, sources.num_classes
    )
    val = lt.SourceImages(sources.images, sources.labels, held, sources.num_classes)
    return train, val


def class_f1(probs: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """(C,) F1 of each class at its threshold (NaN for a class without a positive)."""
    pred = probs >= thresholds[None]
    t = targets.bool()
    tp = (pred & t).sum(0).double()
    denom = pred.sum(0).double() + t.sum(0).double()
    return torch.where(t.sum(0) > 0, 2 * tp / denom.clamp_min(1), float("nan"))


def score_rules(
    val_logits: torch.Tensor,
    val_targets: torch.Tensor,
    test_logits: torch.Tensor,
    test_targets: torch.Tensor,
    split: Any,
) -> dict[str, dict[str, float]]:
    """OF1, CF1 and head/medium/tail mean F1 on the test set for each threshold rule."""
    from cprfl_zoo.metrics import threshold_metrics
    from cprfl_zoo.thresholds import calibrate_thresholds

    c = test_logits.shape[1]
    cal = calibrate_thresholds(val_logits, val_targets)
    cal5 = calibrate_thresholds(val_logits, val_targets, min_positives=5)
    rules = {
        "0.5": torch.full((c,), 0.5),
        "global": torch.full((c,), cal.global_threshold),
        "per-class": cal.thresholds,
        "per-class (>= 5 positives)": cal5.thresholds,
    }
    probs = test_logits.sigmoid()
    out = {}
    for name, thr in rules.items():
        m = threshold_metrics(probs - thr[None], test_targets, threshold=0.0)
        f1 = class_f1(probs, test_targets, thr)
        row = {"OF1": 100 * m.overall_f1, "CF1": 100 * m.class_f1}
        for group, members in split.groups().items():
            row[f"F1_{group}"] = 100 * float(f1[list(members)].nanmean()) if members else None
        out[name] = row
    out["_global_threshold"] = {"value": cal.global_threshold}
    return out


def run(cfg: lt.BenchConfig, fashion_dir: Path | None = None) -> dict[str, Any]:
    """Train CPRFL-ASL per seed, calibrate on validation, score the rules on the test set."""
    from cprfl_zoo.metrics import long_tail_split

    start = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    fashion = lt._assets.load_fashion_mnist(lt._assets.ensure_fashion_mnist(fashion_dir))
    sources = lt.build_sources(fashion, lt._assets.load_mnist_5k())
    train_sources, val_sources = split_sources(sources)
    backbone, backbone_state, _ = imagenet_backbone(lt.BACKBONE, check=False)
    text_encoder = lt._assets.MiniLMTextEncoder(lt.TEMPLATE)
    compose = {"canvas_size": cfg.canvas_size, "min_objects": cfg.min_objects}
    compose["max_objects"] = cfg.max_objects
    test = lt.compose_set(
        sources,
        [cfg.test_per_class] * len(lt.CLASS_NAMES),
        test=True,
        rng=np.random.default_rng([cfg.test_seed, 2]),
        **compose,
    )
    test_tokens = lt.extract_tokens(backbone, test.images)
    test_targets = torch.from_numpy(test.targets).float()
    per_seed = []
    for seed in cfg.seeds:
        order = np.random.default_rng([seed, 0]).permutation(len(lt.CLASS_NAMES))
        counts = lt.long_tailed_counts(len(lt.CLASS_NAMES), cfg.max_count, cfg.imbalance, order)
        val_counts = np.maximum(1, np.round(counts * VAL_FRACTION)).astype(int)
        trainset = lt.compose_set(
            train_sources, counts, test=False, rng=np.random.default_rng([seed, 1]), **compose
        )
        valset = lt.compose_set(
            val_sources, val_counts, test=True, rng=np.random.default_rng([seed, 3]), **compose
        )
        train_tokens = lt.extract_tokens(backbone, trainset.images)
        val_tokens = lt.extract_tokens(backbone, valset.images)
        targets = torch.from_numpy(trainset.targets).float()
        split = long_tail_split(counts.tolist(), cfg.head_threshold, cfg.tail_threshold)
        torch.manual_seed(seed)
        module = lt.build_method("CPRFL-ASL", cfg, backbone, backbone_state, text_encoder, seed)
        lt.train(module, train_tokens.__getitem__, targets, lt.make_loss("CPRFL-ASL"), cfg, seed)
        val_logits = lt.predict(module, val_tokens.__getitem__, len(val_tokens), 256)
        test_logits = lt.predict(module, test_tokens.__getitem__, len(test_tokens), 256)
        val_targets = torch.from_numpy(valset.targets).float()
        scores = score_rules(val_logits, val_targets, test_logits, test_targets, split)
        glob = scores.pop("_global_threshold")["value"]
        per_seed.append({"seed": seed, "global_threshold": round(glob, 4), "rules": scores})
        _log(f"seed {seed}: global threshold {glob:.3f}; {scores}")
    rows = []
    for rule in RULES:
        row: dict[str, Any] = {"rule": rule}
        for key in ("OF1", "CF1", "F1_head", "F1_medium", "F1_tail"):
            values = [s["rules"][rule][key] for s in per_seed if s["rules"][rule][key] is not None]
            row[key] = round(statistics.fmean(values), 2)
            row[f"{key}_std"] = round(statistics.pstdev(values), 2) if len(values) > 1 else 0.0
        rows.append(row)
    return {
        "benchmark": "thresholds_f1",
        "config": asdict(cfg),
        "held_out_per_class": HELD_OUT,
        "val_fraction": VAL_FRACTION,
        "rows": rows,
        "per_seed": per_seed,
        "runtime_s": round(time.perf_counter() - start, 1),
    }


def format_table(doc: dict[str, Any]) -> str:
    """The rows as a markdown table (mean ± std over seeds, percentages)."""
    keys = ("OF1", "CF1", "F1_head", "F1_medium", "F1_tail")
    lines = [
        "| thresholds | " + " | ".join(keys) + " |",
        "| --- |" + " --- |" * len(keys),
    ]
    for row in doc["rows"]:
        cells = [f"{row[k]:.1f} ± {row[f'{k}_std']:.1f}" for k in keys]
        lines.append(f"| {row['rule']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, fewer images and epochs")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    parser.add_argument("--fashion-dir", type=Path, help="folder of the Fashion-MNIST idx files")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    cfg = lt.config_for(quick=args.quick)
    if args.seeds:
        cfg = replace(cfg, seeds=tuple(args.seeds))
    doc = run(cfg, args.fashion_dir)
    from cprfl_zoo.fileio import atomic_write_text

    atomic_write_text(args.output, json.dumps(doc, indent=2), mode=0o644)
    print(format_table(doc))
    print(f"written: {args.output} ({doc['runtime_s']:.0f} s)")


if __name__ == "__main__":
    main()
