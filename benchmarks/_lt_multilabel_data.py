"""Configuration and sources of ``lt_multilabel.py``: 10 Fashion-MNIST classes, 10 MNIST digits."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from _heads import SMALL_HEAD

from cprfl_zoo.synthetic import SourceImages

CLOTHING = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker"]
CLOTHING += ["Bag", "Ankle boot"]
DIGITS = [f"digit {w}" for w in ("zero", "one", "two", "three", "four", "five", "six", "seven")]
DIGITS += ["digit eight", "digit nine"]
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
    head: dict[str, int] = field(default_factory=lambda: dict(SMALL_HEAD))


# Half the images: the head / tail thresholds halve with them.
QUICK = {"seeds": (0,), "max_count": 150, "head_threshold": 50, "tail_threshold": 10}
QUICK.update(test_per_class=25, epochs=15)


def config_for(quick: bool = False, finetune: bool = False, **overrides: Any) -> BenchConfig:
    cfg = replace(BenchConfig(), **QUICK) if quick else BenchConfig()
    if finetune:
        cfg = replace(cfg, finetune=True, lr=1e-4)
    return replace(cfg, **overrides) if overrides else cfg


def build_sources(fashion: dict, mnist: tuple[np.ndarray, np.ndarray, np.ndarray]) -> SourceImages:
    """Pool Fashion-MNIST (classes 0-9) and the MNIST digits (classes 10-19)."""
    (ftr_x, ftr_y), (fte_x, fte_y) = fashion["train"], fashion["test"]
    m_x, m_y, m_test = mnist
    images = np.concatenate([ftr_x, fte_x, m_x])
    labels = np.concatenate([ftr_y, fte_y, m_y + 10])
    is_test = np.concatenate([np.zeros(len(ftr_y), bool), np.ones(len(fte_y), bool), m_test])
    return SourceImages(images, labels, is_test, num_classes=len(CLASS_NAMES))
