"""Configuration and data of the emoji benchmark ``lt_emoji.py``: the splits of one seed.

The canvases come from :func:`cprfl_zoo.synthetic.compose_rgba_set`; the class-to-frequency
order from :func:`_emoji.frequency_order`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import _emoji
import numpy as np
from _heads import PAPER_HEAD, SMALL_HEAD
from _lt_emoji_tools import CPRFL_METHODS, LINEAR_METHODS

from cprfl_zoo.synthetic import ComposedSet, compose_rgba_set, long_tailed_counts

RESULTS = Path(__file__).resolve().parent / "results" / "lt_emoji.json"
BACKBONE = "tf_efficientnet_lite0"
TEMPLATE = "a photo of a {}."
METHODS = ("linear-BCE", "linear-ASL", "CPRFL-ASL", "CPRFL-ASL-random")
# The long-tail tools on both heads (issue 21), and CPRFL's cosine option, in table order.
OPTIONS = tuple(m for m in (*LINEAR_METHODS, *CPRFL_METHODS) if m not in METHODS)
REGIMES = ("frozen", "finetune-top", "finetune")
BASE_METHODS = ("linear-ASL", "CPRFL-ASL")
"""Where ``reuse_base_lr`` holds, every other method of a head trains at its base's lr."""


@dataclass(frozen=True)
class EmojiConfig:
    """Everything that defines one run of the benchmark."""

    seeds: tuple[int, ...] = (0, 1, 2)
    max_count: int = 400
    imbalance: float = 100.0
    head_threshold: int = 100
    tail_threshold: int = 20
    val_per_class: int = 20
    test_per_class: int = 30
    canvas_size: int = 96
    batch_size: int = 32
    frozen_epochs: int = 20
    finetune_epochs: int = 5
    frozen_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    frozen_cprfl_lrs: tuple[float, ...] | None = None  # CPRFL's frozen grid if not frozen_lrs
    anchor_weights: tuple[float, ...] = (30.0, 300.0)  # prompt anchoring (l2) weight grid
    finetune_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    top_start: int = 6  # finetune-top: blocks[top_start:], conv_head and bn2 train
    top_epochs: int = 20
    top_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
    top_cprfl_lrs: tuple[float, ...] | None = (3e-4, 1e-3, 3e-3)  # CPRFL's, if not top_lrs
    reuse_base_lr: tuple[str, ...] = ("finetune-top",)  # regimes whose tools reuse the base lr
    backbone_lr_ratio: float = 0.1
    top_backbone_lr: float | None = None  # finetune-top: the top stage's lr for every head
    weight_decay: float = 1e-4
    test_seed: int = 1234
    device: str = "cpu"
    threads: int = 1
    head: dict[str, int] = field(default_factory=lambda: dict(SMALL_HEAD))


CUDA = {"canvas_size": 224, "batch_size": 64, "finetune_epochs": 12, "head": dict(PAPER_HEAD)}
QUICK = {"seeds": (0,), "frozen_epochs": 4, "finetune_epochs": 1, "frozen_lrs": (1e-3,)}
QUICK.update(top_epochs=2, top_lrs=(1e-3,), top_cprfl_lrs=None)


def backbone_lr_ratio(cfg: EmojiConfig, regime: str, lr: float) -> float:
    """The backbone's lr over the head's: ``top_backbone_lr / lr`` in ``finetune-top`` when
    ``top_backbone_lr`` is set (the same trained-top lr whatever the head's), else the config's
    ``backbone_lr_ratio``."""
    if regime == "finetune-top" and cfg.top_backbone_lr is not None:
        return cfg.top_backbone_lr / lr
    return cfg.backbone_lr_ratio


def lr_grid(cfg: EmojiConfig | dict[str, Any], regime: str, method: str) -> tuple[float, ...]:
    """The learning-rate grid of a method in a regime (a config or its saved dict)."""
    get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
    if regime == "finetune-top":
        cprfl = get("top_cprfl_lrs")
        return tuple(cprfl if method.startswith("CPRFL") and cprfl else get("top_lrs"))
    if regime != "frozen":
        return tuple(get("finetune_lrs"))
    cprfl = get("frozen_cprfl_lrs")
    if method.startswith("CPRFL") and cprfl:
        return tuple(cprfl)
    return tuple(get("frozen_lrs"))


def epochs_of(cfg: EmojiConfig | dict[str, Any], regime: str) -> int:
    """The number of training epochs of a regime (a config or its saved dict)."""
    key = {"frozen": "frozen_epochs", "finetune-top": "top_epochs"}.get(regime, "finetune_epochs")
    return int(cfg[key] if isinstance(cfg, dict) else getattr(cfg, key))


def config_for(device: str = "cpu", quick: bool = False, **overrides: Any) -> EmojiConfig:
    """The CPU configuration, the CUDA one, or the quick one, with overrides."""
    cfg = EmojiConfig(device=device)
    if device.startswith("cuda"):
        cfg = replace(cfg, **CUDA)
    if quick:
        cfg = replace(cfg, **QUICK)
    return replace(cfg, **overrides) if overrides else cfg


@dataclass(frozen=True)
class EmojiSplits:
    """The composed sets of one seed, and the split of the seen classes."""

    train: ComposedSet
    val: ComposedSet
    test: ComposedSet
    seen: np.ndarray  # class indices trained on
    unseen: np.ndarray  # class indices held out of training
    counts: np.ndarray  # (C,) training positives per class, 0 for unseen
    order: np.ndarray


def training_counts(
    subcategories: Sequence[str], seed: int, max_count: int, imbalance: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class training counts: the last frequency block unseen, the rest long-tailed.

    Args:
        subcategories: (C,) subcategory of each class.
        seed: Seed of the frequency order.
        max_count: Count of the most frequent class.
        imbalance: Ratio between the most and least frequent seen class.

    Returns:
        counts (C,) int64 (0 for unseen classes), seen class indices, unseen class indices.
    """
    order = _emoji.frequency_order(tuple(subcategories), seed)
    block = len(set(subcategories))
    seen_order, unseen = order[:-block], np.sort(order[-block:])
    counts_seen = long_tailed_counts(
        len(seen_order), max_count, imbalance, np.arange(len(seen_order))
    )
    counts = np.zeros(len(order), dtype=np.int64)
    counts[seen_order] = counts_seen
    return counts, np.sort(seen_order), unseen


def compose_splits(
    images: np.ndarray,
    pools: Sequence[np.ndarray],
    subcategories: Sequence[str],
    seed: int,
    cfg: EmojiConfig,
) -> EmojiSplits:
    """Compose the long-tailed training set of ``seed`` and the fixed balanced val / test sets.

    The three sets use disjoint random streams: ``[seed, 1]`` for training, ``[test_seed, 2]``
    for validation and ``[test_seed, 3]`` for test (``test_seed`` is far from the seeds).

    Args:
        images: (M, h, w, 4) RGBA drawings.
        pools: Per class, its drawings' indices.
        subcategories: Per class, its subcategory.
        seed: The seed of the frequency order and of the training composition.
        cfg: The configuration.

    Returns:
        The splits.
    """
    counts, seen, unseen = training_counts(subcategories, seed, cfg.max_count, cfg.imbalance)
    num_classes = len(pools)

    def compose(per_class: Sequence[int], stream: list[int]) -> ComposedSet:
        return compose_rgba_set(
            images,
            pools,
            per_class,
            rng=np.random.default_rng(stream),
            canvas_size=cfg.canvas_size,
        )

    return EmojiSplits(
        train=compose(counts, [seed, 1]),
        val=compose([cfg.val_per_class] * num_classes, [cfg.test_seed, 2]),
        test=compose([cfg.test_per_class] * num_classes, [cfg.test_seed, 3]),
        seen=seen,
        unseen=unseen,
        counts=counts,
        order=_emoji.frequency_order(tuple(subcategories), seed),
    )
