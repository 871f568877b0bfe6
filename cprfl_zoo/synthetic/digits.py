"""Composites of scikit-learn's bundled 8 x 8 handwritten digits, for offline quick starts.

:func:`make_digit_composites` (torch, vectorised) colours and jitters digits over noisy dark
backgrounds, classes drawn i.i.d. with long-tailed weights; training and test images come from
disjoint halves of the digit pool. :func:`write_image_list` saves them as PNG files with an
image-list file in the format of :class:`cprfl_zoo.data.MultiLabelImageList`. Needs scikit-learn
(``pip install "cprfl-zoo[examples]"``).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..fileio import atomic_write_text
from .layout import cell_origin, long_tail_class_weights

_logger = logging.getLogger(__name__)

__all__ = ["DIGIT_NAMES", "SyntheticMultiLabelData", "make_digit_composites", "write_image_list"]

DIGIT_NAMES: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)
_POOLS = ("train", "test", "all")
_POOL_SEED = 20240815  # fixed, so the train / test halves of the digit pool never change


@dataclass(frozen=True)
class SyntheticMultiLabelData:
    """Composed multi-label images and their labels.

    Attributes:
        images: ``(N, 3, H, W)`` float32 images with values in [0, 1].
        targets: ``(N, C)`` float32 multi-hot targets.
        class_names: The C class names, in target order.
        sources: ``(N, grid * grid)`` int64 index into scikit-learn's ``load_digits()`` of the
            digit drawn in each cell (row-major), ``-1`` for an empty cell.
    """

    images: torch.Tensor
    targets: torch.Tensor
    class_names: tuple[str, ...]
    sources: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def class_counts(self) -> torch.Tensor:
        """Return the ``(C,)`` int64 number of images showing each class."""
        return self.targets.sum(0).round().long()


def _digits_file() -> Path | None:
    # scikit-learn's bundled digits, found without importing sklearn (which takes seconds).
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


@functools.lru_cache(maxsize=1)
def _load_all_digits() -> tuple[torch.Tensor, torch.Tensor]:
    path = _digits_file()
    if path is not None:
        with gzip.open(path, "rt", encoding="ascii") as f:
            rows = [[int(v) for v in line.split(",")] for line in f if line.strip()]
        data = torch.tensor(rows, dtype=torch.float32)
        images, labels = data[:, :-1].reshape(-1, 8, 8), data[:, -1].long()
    else:
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:
            raise ImportError(
                "the synthetic digits dataset needs scikit-learn's bundled digits: "
                "pip install 'cprfl-zoo[examples]' (or pip install scikit-learn)"
            ) from e
        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32)
        labels = torch.as_tensor(digits.target, dtype=torch.long)
    return images / 16.0, labels


def _load_digit_pool(pool: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images, labels = _load_all_digits()
    index = torch.arange(len(labels))
    if pool != "all":
        perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_POOL_SEED))
        half = len(labels) // 2
        index = perm[:half] if pool == "train" else perm[half:]
        index = index.sort().values
    return images[index], labels[index], index


def _check_int(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def make_digit_composites(
    num_images: int,
    *,
    img_size: int = 64,
    grid: int = 2,
    min_digits: int = 1,
    max_digits: int | None = None,
    imbalance: float = 1.0,
    class_weights: Sequence[float] | torch.Tensor | None = None,
    pool: str = "train",
    noise_std: float = 0.05,
    seed: int = 0,
) -> SyntheticMultiLabelData:
    """Compose multi-label images of several handwritten digits with chosen label frequencies.

    Each image gets ``k`` distinct digit classes, ``k`` uniform in ``[min_digits, max_digits]``,
    drawn without replacement with probabilities proportional to the class weights; each class
    is shown by a random digit image of the pool, upscaled to 60-100 % of a cell, in a random
    bright colour, at a random position inside a random free cell, over a dark random background
    with Gaussian noise. With ``imbalance > 1`` the class frequencies are long-tailed
    (:func:`long_tail_class_weights`).

    Args:
        num_images: Number of images N.
        img_size: Side of the square images in pixels; a multiple of ``grid``, with cells of at
            least 8 pixels.
        grid: Cells per side; an image holds at most ``grid * grid`` digits.
        min_digits: Fewest digits (labels) per image, at least 1.
        max_digits: Most digits per image, at most ``min(grid * grid, 10)`` (the default).
        imbalance: Ratio between the most and least frequent class weight; 1 gives uniform
            weights (a balanced set), e.g. 50 a long-tailed one. Ignored with ``class_weights``.
        class_weights: Explicit non-negative weights for the 10 classes (at least
            ``max_digits`` of them positive).
        pool: Which digit images to draw from: ``"train"`` or ``"test"`` (two fixed, disjoint
            halves of scikit-learn's 1797 digits) or ``"all"``.
        noise_std: Standard deviation of the background noise.
        seed: Seed of the composition; the same arguments give the same images.

    Returns:
        A :class:`SyntheticMultiLabelData` with class names :data:`DIGIT_NAMES`.

    Raises:
        ValueError: If an argument is out of range (the message names it).
        ImportError: If scikit-learn is not installed.
    """
    num_classes = len(DIGIT_NAMES)
    _check_int("num_images", num_images, 1)
    _check_int("grid", grid, 1)
    _check_int("img_size", img_size, 8 * grid)
    if img_size % grid:
        raise ValueError(f"img_size ({img_size}) must be a multiple of grid ({grid})")
    cells = grid * grid
    if max_digits is None:
        max_digits = min(cells, num_classes)
    _check_int("min_digits", min_digits, 1)
    _check_int("max_digits", max_digits, min_digits)
    if max_digits > min(cells, num_classes):
        raise ValueError(
            f"max_digits ({max_digits}) must be at most {min(cells, num_classes)}: an image has "
            f"{cells} cells and there are {num_classes} digit classes"
        )
    if pool not in _POOLS:
        raise ValueError(f"pool must be one of {_POOLS}, got {pool!r}")
    if not isinstance(noise_std, (int, float)) or not 0 <= noise_std < math.inf:
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
    if class_weights is None:
        weights = long_tail_class_weights(num_classes, imbalance)
    else:
        weights = torch.as_tensor(class_weights, dtype=torch.float64).flatten()
        if weights.numel() != num_classes:
            raise ValueError(
                f"class_weights has {weights.numel()} values; expected one per digit class "
                f"({num_classes})"
            )
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
            raise ValueError("class_weights must be finite and non-negative")
        if int((weights > 0).sum()) < max_digits:
            raise ValueError(
                f"class_weights has {int((weights > 0).sum())} positive values, fewer than "
                f"max_digits ({max_digits})"
            )

    digit_images, digit_labels, digit_index = _load_digit_pool(pool)
    class_sizes = torch.bincount(digit_labels, minlength=num_classes)
    class_starts = torch.cumsum(class_sizes, 0) - class_sizes
    by_label = torch.argsort(digit_labels, stable=True)  # pool positions grouped by class
    gen = torch.Generator().manual_seed(int(seed))
    n, cell = num_images, img_size // grid

    # Every random choice is drawn up front, vectorised: per image the number of digits, their
    # classes (a weighted draw without replacement), their cells, and per digit the pool image,
    # size, offset and colour.
    counts = torch.randint(min_digits, max_digits + 1, (n,), generator=gen)
    classes = torch.multinomial(weights.expand(n, -1), max_digits, generator=gen)
    slots = torch.rand((n, cells), generator=gen).argsort(dim=1)[:, :max_digits]
    pick = (torch.rand((n, max_digits), generator=gen) * class_sizes[classes]).long()
    pool_pos = by_label[class_starts[classes] + pick]
    low = max(8, round(0.6 * cell))
    sizes = torch.randint(low, cell + 1, (n, max_digits), generator=gen)
    jitter = torch.rand((n, max_digits, 2), generator=gen)
    colours = 0.5 + 0.5 * torch.rand((n, max_digits, 3), generator=gen)
    background = torch.rand((n, 3, 1, 1), generator=gen) * 0.3
    noise = torch.randn((n, 3, img_size, img_size), generator=gen)
    images = background + noise_std * noise

    used = torch.arange(max_digits)[None] < counts[:, None]
    targets = torch.zeros(n, num_classes)
    targets[torch.nonzero(used)[:, 0], classes[used]] = 1.0
    sources = torch.full((n, cells), -1, dtype=torch.long)
    rows = torch.nonzero(used)[:, 0]
    sources[rows, slots[used]] = digit_index[pool_pos[used]]

    for size in sorted(set(sizes[used].tolist())):
        sel = used & (sizes == size)
        img_idx, digit_idx = torch.nonzero(sel, as_tuple=True)
        ink = F.interpolate(
            digit_images[pool_pos[sel]][:, None],
            size=(size, size),
            mode="bilinear",
            align_corners=False,
        ).clamp(0, 1)
        offsets = (jitter[sel] * (cell - size + 1)).long().clamp(max=cell - size)
        tops, lefts = cell_origin(slots[sel], grid, cell)
        tops, lefts = tops + offsets[:, 0], lefts + offsets[:, 1]
        for m, (i, d) in enumerate(zip(img_idx.tolist(), digit_idx.tolist(), strict=True)):
            top, left = int(tops[m]), int(lefts[m])
            region = images[i, :, top : top + size, left : left + size]
            region.mul_(1 - ink[m]).add_(colours[i, d, :, None, None] * ink[m])
    images.clamp_(0, 1)
    return SyntheticMultiLabelData(images, targets, DIGIT_NAMES, sources)


def write_image_list(
    data: SyntheticMultiLabelData, root: str | os.PathLike[str], split: str
) -> Path:
    """Save composed images as PNG files and list them in an image-list file.

    Writes ``<root>/images/<split>/<index>.png``, ``<root>/<split>.txt`` (``images/<split>/00000.png
    3 7`` per line, the format of :class:`cprfl_zoo.data.MultiLabelImageList` with ``image_root``
    = ``root``) and ``<root>/classes.txt`` (one class name per line). The text files are written
    atomically, the list last, so an interrupted call never leaves a list naming missing images.

    Args:
        data: The images and targets.
        root: The dataset folder (created if needed).
        split: Name of the split, e.g. ``"train"``; letters, digits, ``-`` and ``_`` only.

    Returns:
        The path of the list file.

    Raises:
        ValueError: For a bad split name.
    """
    from PIL import Image

    if not split or not all(ch.isalnum() or ch in "-_" for ch in split):
        raise ValueError(
            f"split must be a non-empty name of letters, digits, - and _; got {split!r}"
        )
    root = Path(root)
    folder = root / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    pixels = (data.images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    lines = []
    for i in range(len(data)):
        rel = f"images/{split}/{i:05d}.png"
        Image.fromarray(pixels[i].numpy()).save(root / rel)
        ids = torch.nonzero(data.targets[i]).flatten().tolist()
        lines.append(" ".join([rel, *map(str, ids)]))
    atomic_write_text(root / "classes.txt", "\n".join(data.class_names) + "\n")
    list_file = root / f"{split}.txt"
    atomic_write_text(list_file, "\n".join(lines) + "\n")
    _logger.info("wrote %d %s images and %s", len(data), split, list_file)
    return list_file


# ---------------------------------------------------------------------- exact-count canvases
