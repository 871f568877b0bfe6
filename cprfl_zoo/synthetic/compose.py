"""Canvases of any single-label grayscale or RGBA images with exact per-class counts.

:func:`compose_set` / :func:`compose_rgba_set` put the benchmarks' source images (Fashion-MNIST
+ MNIST, emoji) on a 2x2 grid so that class ``c`` is on exactly ``counts[c]`` canvases
(:func:`compose_canvases`), the training counts following :func:`long_tailed_counts`. Needs
Pillow (for resizing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .layout import cell_origin, long_tail_class_weights

__all__ = [
    "GRID",
    "ComposedSet",
    "SourceImages",
    "compose_canvases",
    "compose_rgba_set",
    "compose_set",
    "long_tailed_counts",
    "random_background",
    "render_canvas",
    "render_rgba_canvas",
]

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
        top, left = cell_origin(int(where), GRID, cell)
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
