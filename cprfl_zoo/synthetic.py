"""Long-tailed multi-label canvases composed from single-label images: the one composer.

Every composed image is a square canvas cut into a ``grid x grid`` layout of cells; each object
(a single-label source image of one class) sits in its own cell, resized to a fraction of it at
a random offset, and the canvas is labelled with the classes it shows. Two front ends share the
class-frequency profile (:func:`long_tail_class_weights`), the cell geometry and the checks:

* :func:`make_digit_composites` (torch, vectorised): scikit-learn's bundled 8 x 8 handwritten
  digits, coloured and jittered over noisy dark backgrounds, classes drawn i.i.d. with
  long-tailed weights. For quick starts, smoke tests and examples that must run offline in
  seconds; training and test images come from disjoint halves of the digit pool.
  :func:`write_image_list` saves them as PNG files with an image-list file in the format of
  :class:`cprfl_zoo.data.MultiLabelImageList`. Needs scikit-learn
  (``pip install "cprfl-zoo[examples]"``).
* :func:`compose_set` / :func:`compose_rgba_set` (numpy): any single-label grayscale or RGBA
  source images (the benchmarks' Fashion-MNIST + MNIST and emoji sets) on a 2x2 grid with
  *exact* class counts: class ``c`` is on exactly ``counts[c]`` canvases
  (:func:`compose_canvases`), the training counts following :func:`long_tailed_counts`.
  Needs Pillow (for resizing).
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

import numpy as np
import torch
import torch.nn.functional as F

from .fileio import atomic_write_text

_logger = logging.getLogger(__name__)

__all__ = [
    "DIGIT_NAMES",
    "GRID",
    "ComposedSet",
    "SourceImages",
    "SyntheticMultiLabelData",
    "compose_canvases",
    "compose_rgba_set",
    "compose_set",
    "long_tail_class_weights",
    "long_tailed_counts",
    "make_digit_composites",
    "random_background",
    "render_canvas",
    "render_rgba_canvas",
    "write_image_list",
]

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


def long_tail_class_weights(num_classes: int, imbalance: float) -> torch.Tensor:
    """Geometrically decreasing class weights, from 1 for class 0 to ``1 / imbalance``.

    Args:
        num_classes: Number of classes C (at least 1).
        imbalance: Ratio of the first to the last weight (1 for uniform weights).

    Returns:
        ``(C,)`` float64 weights ``imbalance ** (-c / (C - 1))``.

    Raises:
        ValueError: If ``num_classes < 1`` or ``imbalance`` is not a finite number >= 1.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(imbalance, (int, float)) or not math.isfinite(imbalance) or imbalance < 1:
        raise ValueError(f"imbalance must be a finite number >= 1, got {imbalance!r}")
    if num_classes == 1:
        return torch.ones(1, dtype=torch.float64)
    exponents = torch.arange(num_classes, dtype=torch.float64) / (num_classes - 1)
    return float(imbalance) ** -exponents


def _cell_origin(slot, grid: int, cell: int):
    """Top and left pixel of cell ``slot`` (row-major) of a ``grid x grid`` layout of ``cell`` px.

    Works on ints, numpy arrays and tensors alike.
    """
    return (slot // grid) * cell, (slot % grid) * cell


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
        tops, lefts = _cell_origin(slots[sel], grid, cell)
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
GRID = 2  # cells per side of compose_set's canvases: at most GRID * GRID objects each
MIN_SCALE = 0.75  # smallest grayscale object, as a fraction of the cell
MIN_RGBA_SCALE = 0.6  # smallest RGBA object, as a fraction of the cell
MAX_ROTATION = 30.0  # RGBA objects are rotated by up to this many degrees either way


@dataclass(frozen=True)
class SourceImages:
    """Single-label grayscale source images of all classes, split into training and test.

    Attributes:
        images: (M, h, w) uint8 grayscale images.
        labels: (M,) class index of each image, in [0, num_classes).
        is_test: (M,) True for the images of the sources' test split.
        num_classes: Number of classes.
    """

    images: np.ndarray
    labels: np.ndarray
    is_test: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        if self.images.ndim != 3 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be (M, h, w) uint8, got {self.images.shape} {self.images.dtype}"
            )
        m = len(self.images)
        if self.labels.shape != (m,) or self.is_test.shape != (m,):
            raise ValueError(
                f"labels {self.labels.shape} and is_test {self.is_test.shape} must both be ({m},)"
            )
        if m and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes})")

    def pools(self, test: bool) -> list[np.ndarray]:
        """Indices of the images of each class in the training (or test) split, increasing."""
        mask = self.is_test == test
        return [np.flatnonzero(mask & (self.labels == c)) for c in range(self.num_classes)]


@dataclass(frozen=True)
class ComposedSet:
    """A composed multi-label set with exact class counts.

    Attributes:
        images: (N, S, S) (grayscale) or (N, S, S, 3) (RGB) uint8 canvases.
        targets: (N, C) uint8 multi-hot labels.
        sources: (N, GRID*GRID) index of the source image pasted in each object slot, -1 for
            unused slots.
        counts: (C,) number of canvases holding each class.
    """

    images: np.ndarray
    targets: np.ndarray
    sources: np.ndarray
    counts: np.ndarray


def long_tailed_counts(
    num_classes: int, max_count: int, imbalance: float, order: Sequence[int]
) -> np.ndarray:
    """Per-class counts following :func:`long_tail_class_weights` over a given class order.

    The class at rank ``r`` of ``order`` gets ``round(max_count * imbalance ** (-r / (C - 1)))``
    positives (at least 1): ``max_count`` for the first class, ``max_count / imbalance`` for the
    last.

    Args:
        num_classes: C (at least 2).
        max_count: Count of the most frequent class.
        imbalance: Ratio of the largest to the smallest count (>= 1).
        order: A permutation of ``range(C)``; ``order[r]`` is the class of rank ``r``.

    Returns:
        (C,) int64 counts indexed by class.

    Raises:
        ValueError: For a bad number of classes, count, imbalance or order.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if max_count < 1:
        raise ValueError(f"max_count must be positive, got {max_count}")
    if not imbalance >= 1:
        raise ValueError(f"imbalance must be >= 1, got {imbalance}")
    order = np.asarray(order)
    if order.shape != (num_classes,) or not np.array_equal(np.sort(order), np.arange(num_classes)):
        raise ValueError(f"order must be a permutation of range({num_classes}), got {order}")
    weights = long_tail_class_weights(int(num_classes), float(imbalance)).numpy()
    counts = np.empty(num_classes, dtype=np.int64)
    counts[order] = np.maximum(np.rint(max_count * weights), 1)
    return counts


def compose_canvases(
    counts: Sequence[int],
    pools: Sequence[np.ndarray],
    rng: np.random.Generator,
    min_objects: int = 1,
    max_objects: int = GRID * GRID,
    replace: bool = False,
) -> list[list[tuple[int, int]]]:
    """Group class occurrences into canvases of distinct classes.

    Each canvas draws a size k uniformly in [min_objects, max_objects], then k distinct classes
    with probability proportional to their remaining counts, until every count is used. When
    fewer than k classes are left, the canvas takes all of them (the last canvases can hold
    fewer than ``min_objects`` objects). Each class's source images are drawn from its pool
    (without replacement unless ``replace``).

    Args:
        counts: (C,) number of canvases that must hold each class.
        pools: C arrays of source-image indices to draw each class's objects from.
        rng: The random generator (the only source of randomness).
        min_objects: Smallest number of objects per canvas.
        max_objects: Largest number of objects per canvas (at most 4, one per grid cell).
        replace: Draw each class's source images with replacement (for pools of a few images,
            such as one drawing per emoji style).

    Returns:
        The canvases, each a list of (class, source index) pairs.

    Raises:
        ValueError: If the object range is invalid, a count negative or a pool too small.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if len(pools) != len(counts):
        raise ValueError(f"{len(pools)} pools given for {len(counts)} classes")
    if not 1 <= min_objects <= max_objects <= GRID * GRID:
        raise ValueError(
            f"need 1 <= min_objects <= max_objects <= {GRID * GRID}, got {min_objects}, "
            f"{max_objects}"
        )
    if (counts < 0).any():
        raise ValueError(f"counts must be non-negative, got {counts}")
    draws = []
    for c, (n, pool) in enumerate(zip(counts, pools, strict=True)):
        if (n > len(pool) and not replace) or (n > 0 and len(pool) == 0):
            raise ValueError(f"class {c} needs {n} source images but its pool has {len(pool)}")
        draws.append(list(rng.choice(np.asarray(pool), size=int(n), replace=replace)))
    remaining = counts.copy()
    canvases: list[list[tuple[int, int]]] = []
    while remaining.sum() > 0:
        k = int(rng.integers(min_objects, max_objects + 1))
        available = np.flatnonzero(remaining)
        k = min(k, len(available))
        weights = remaining[available] / remaining[available].sum()
        chosen = rng.choice(available, size=k, replace=False, p=weights)
        canvas = []
        for c in chosen:
            remaining[c] -= 1
            canvas.append((int(c), int(draws[c].pop())))
        canvases.append(canvas)
    return canvases


def random_background(canvas_size: int, rng: np.random.Generator) -> np.ndarray:
    """A varied RGB background: a flat colour or a linear gradient, plus pixel noise.

    Returns:
        (S, S, 3) float32 image in [0, 255].
    """
    low, high = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.linspace(-0.5, 0.5, canvas_size, dtype=np.float32)
    t = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    if rng.random() < 0.3:  # flat colour
        t = np.zeros_like(t)
    image = low + (high - low) * t[..., None]
    image += rng.normal(0, rng.uniform(0, 12), size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255)


def _render(objects: Sequence[np.ndarray], canvas_size: int, rng: np.random.Generator, rgba: bool):
    """Paste objects into distinct random cells; the draw order is that of the published runs.

    Per canvas: (RGBA only) the background, then the cells; per object its side, (RGBA only) its
    angle, then its top and left offsets in the cell.
    """
    from PIL import Image

    if len(objects) > GRID * GRID:
        raise ValueError(f"at most {GRID * GRID} objects fit on a canvas, got {len(objects)}")
    if canvas_size % GRID or canvas_size < 4 * GRID:
        raise ValueError(f"canvas_size must be even and at least {4 * GRID}, got {canvas_size}")
    cell = canvas_size // GRID
    if rgba:
        background = random_background(canvas_size, rng).astype(np.uint8)
        canvas = Image.fromarray(background).convert("RGBA")
    else:
        canvas = np.zeros((canvas_size, canvas_size), dtype=np.uint8)
    cells = rng.permutation(GRID * GRID)[: len(objects)]
    min_side = int(np.ceil((MIN_RGBA_SCALE if rgba else MIN_SCALE) * cell))
    for obj, where in zip(objects, cells, strict=True):
        expected = "(h, w, 4) uint8 RGBA" if rgba else "(h, w) uint8"
        if obj.dtype != np.uint8 or obj.ndim != (3 if rgba else 2) or (rgba and obj.shape[2] != 4):
            raise ValueError(f"objects must be {expected}, got {obj.shape} {obj.dtype}")
        side = int(rng.integers(min_side, cell + 1))
        patch = Image.fromarray(obj).resize((side, side), Image.BILINEAR)
        if rgba:
            angle = float(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
            patch = patch.rotate(angle, resample=Image.BILINEAR)
        top, left = _cell_origin(int(where), GRID, cell)
        top += int(rng.integers(0, cell - side + 1))
        left += int(rng.integers(0, cell - side + 1))
        if rgba:
            canvas.alpha_composite(patch, (left, top))
        else:
            canvas[top : top + side, left : left + side] = np.asarray(patch)
    return np.asarray(canvas.convert("RGB")) if rgba else canvas


def render_canvas(
    objects: Sequence[np.ndarray], canvas_size: int, rng: np.random.Generator
) -> np.ndarray:
    """Paste up to four grayscale objects (75-100 % of a cell) into distinct cells of a 2x2 grid.

    Args:
        objects: (h, w) uint8 images.
        canvas_size: S, the side of the canvas in pixels (even, at least 8).
        rng: The random generator for cells, sizes and offsets.

    Returns:
        (S, S) uint8 canvas, black where no object is.

    Raises:
        ValueError: For more objects than cells, a bad object or an odd or too small canvas.
    """
    return _render(objects, canvas_size, rng, rgba=False)


def render_rgba_canvas(
    objects: Sequence[np.ndarray], canvas_size: int, rng: np.random.Generator
) -> np.ndarray:
    """Alpha-composite up to four RGBA objects, one per cell of a 2x2 grid, on a background.

    Each object is resized to 60-100 % of a cell, rotated by up to 30 degrees either way and
    placed at a random offset in its own cell over :func:`random_background`.

    Args:
        objects: (h, w, 4) uint8 RGBA images.
        canvas_size: S, the side of the canvas in pixels (even, at least 8).
        rng: The random generator for the background, cells, sizes, angles and offsets.

    Returns:
        (S, S, 3) uint8 canvas.

    Raises:
        ValueError: For more objects than cells, an object that is not RGBA, or an odd or too
            small canvas.
    """
    return _render(objects, canvas_size, rng, rgba=True)


def _compose(images, pools, counts, rng, canvas_size, min_objects, max_objects, rgba):
    canvases = compose_canvases(counts, pools, rng, min_objects, max_objects, replace=rgba)
    n = len(canvases)
    shape = (n, canvas_size, canvas_size, 3) if rgba else (n, canvas_size, canvas_size)
    out = np.zeros(shape, dtype=np.uint8)
    targets = np.zeros((n, len(pools)), dtype=np.uint8)
    slots = np.full((n, GRID * GRID), -1, dtype=np.int64)
    for i, canvas in enumerate(canvases):
        idx = [src for _, src in canvas]
        out[i] = _render([images[j] for j in idx], canvas_size, rng, rgba)
        targets[i, [cls for cls, _ in canvas]] = 1
        slots[i, : len(idx)] = idx
    return ComposedSet(out, targets, slots, np.asarray(counts, dtype=np.int64))


def compose_set(
    sources: SourceImages,
    counts: Sequence[int],
    *,
    test: bool,
    rng: np.random.Generator,
    canvas_size: int,
    min_objects: int = 1,
    max_objects: int = GRID * GRID,
) -> ComposedSet:
    """Compose and render a grayscale multi-label set from one split of the sources.

    No source image is used twice within one set (:func:`compose_canvases`); canvases are
    rendered by :func:`render_canvas`.

    Args:
        sources: The single-label source images.
        counts: (C,) number of canvases holding each class.
        test: Draw from the sources' test split (else from their training split).
        rng: The random generator (the only source of randomness).
        canvas_size: Side of the canvases in pixels.
        min_objects: Smallest number of objects per canvas.
        max_objects: Largest number of objects per canvas.

    Returns:
        The composed set, images (N, S, S) uint8.
    """
    pools = sources.pools(test)
    return _compose(
        sources.images, pools, counts, rng, canvas_size, min_objects, max_objects, rgba=False
    )


def compose_rgba_set(
    images: np.ndarray,
    pools: Sequence[np.ndarray],
    counts: Sequence[int],
    *,
    rng: np.random.Generator,
    canvas_size: int,
    min_objects: int = 1,
    max_objects: int = GRID * GRID,
) -> ComposedSet:
    """Compose and render a multi-label set of RGBA objects, sources drawn with replacement.

    Class ``c`` is on exactly ``counts[c]`` canvases (:func:`compose_canvases`); each of its
    objects is a source image drawn at random from ``pools[c]`` (e.g. the same emoji in two
    drawing styles), rendered by :func:`render_rgba_canvas`.

    Args:
        images: (M, h, w, 4) uint8 RGBA source images.
        pools: C arrays of indices into ``images``, the drawings of each class.
        counts: (C,) number of canvases holding each class (0 leaves a class out).
        rng: The random generator (the only source of randomness).
        canvas_size: Side of the canvases in pixels.
        min_objects: Smallest number of objects per canvas.
        max_objects: Largest number of objects per canvas.

    Returns:
        The composed set, images (N, S, S, 3) uint8.

    Raises:
        ValueError: If ``images`` is not (M, h, w, 4) uint8 or an argument is out of range.
    """
    if images.ndim != 4 or images.shape[3] != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be (M, h, w, 4) uint8, got {images.shape} {images.dtype}")
    return _compose(images, pools, counts, rng, canvas_size, min_objects, max_objects, rgba=True)
