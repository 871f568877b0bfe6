from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import rgba_drawings

from cprfl_zoo.data import MultiLabelImageList
from cprfl_zoo.synthetic import (
    DIGIT_NAMES,
    GRID,
    SourceImages,
    compose_canvases,
    compose_rgba_set,
    compose_set,
    long_tail_class_weights,
    long_tailed_counts,
    make_digit_composites,
    render_canvas,
    render_rgba_canvas,
    write_image_list,
)


@pytest.fixture(scope="module")
def sklearn_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's own loader: the independent reference for the bundled digits."""
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    return torch.as_tensor(digits.images, dtype=torch.float32), torch.as_tensor(digits.target)


def test_shapes_ranges_and_determinism():
    a = make_digit_composites(40, img_size=32, grid=2, seed=3)
    assert a.images.shape == (40, 3, 32, 32) and a.images.dtype == torch.float32
    assert a.targets.shape == (40, 10) and a.sources.shape == (40, 4)
    assert a.class_names == DIGIT_NAMES and len(a) == 40
    assert float(a.images.min()) >= 0 and float(a.images.max()) <= 1
    assert set(a.targets.unique().tolist()) <= {0.0, 1.0}
    b = make_digit_composites(40, img_size=32, grid=2, seed=3)
    c = make_digit_composites(40, img_size=32, grid=2, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.images, c.images)


def test_labels_are_the_drawn_digits_and_empty_cells_stay_blank(sklearn_digits):
    _, labels = sklearn_digits
    data = make_digit_composites(
        60, img_size=48, grid=3, min_digits=2, max_digits=5, noise_std=0.0, pool="all", seed=1
    )
    cell = 16
    for i in range(len(data)):
        used = data.sources[i][data.sources[i] >= 0]
        assert 2 <= len(used) <= 5
        expected = torch.zeros(10)
        expected[labels[used]] = 1.0
        assert torch.equal(data.targets[i], expected)  # one digit per class, labels = digits
        image = data.images[i]
        empty = int(torch.nonzero(data.sources[i] < 0)[0])  # at least 4 of the 9 cells are empty
        r, c = divmod(empty, 3)
        background = image[:, r * cell : r * cell + 1, c * cell : c * cell + 1]
        for slot in range(9):
            r, c = divmod(slot, 3)
            region = image[:, r * cell : (r + 1) * cell, c * cell : (c + 1) * cell]
            blank = torch.equal(region, background.expand_as(region))
            assert blank == (int(data.sources[i, slot]) < 0)


def test_ink_is_the_upscaled_digit(sklearn_digits):
    images, labels = sklearn_digits
    # One digit filling the only cell: the canvas is background blended with the digit's ink.
    data = make_digit_composites(5, img_size=8, grid=1, noise_std=0.0, pool="all", seed=2)
    for i in range(5):
        ink = images[int(data.sources[i, 0])] / 16.0  # 8 px cell, size 8: no resampling
        image = data.images[i]
        bg = image[:, ink == 0]
        assert torch.allclose(bg, bg[:, :1].expand_as(bg))  # untouched where there is no ink
        full = image[:, ink == 1]
        if full.numel():
            assert torch.allclose(full, full[:, :1].expand_as(full))  # pure colour at full ink
        assert int(data.targets[i].argmax()) == int(labels[int(data.sources[i, 0])])


def test_single_digit_frequencies_follow_the_class_weights():
    weights = torch.tensor([8.0, 4, 2, 1, 1, 1, 1, 1, 0.5, 0.5])
    n = 3000
    data = make_digit_composites(n, img_size=16, grid=1, class_weights=weights, pool="all", seed=0)
    counts = data.class_counts().double()
    p = weights.double() / weights.sum()
    sigma = (n * p * (1 - p)).sqrt()
    assert bool(((counts - n * p).abs() < 4 * sigma).all()), counts


def test_long_tailed_and_balanced_sets():
    train = make_digit_composites(800, img_size=32, max_digits=3, imbalance=100, seed=0)
    counts = train.class_counts()
    assert counts[0] > 20 * counts[9] and counts[:3].sum() > 4 * counts[-3:].sum()
    test = make_digit_composites(800, img_size=32, max_digits=3, pool="test", seed=1)
    counts = test.class_counts().double()
    assert float(counts.max() / counts.min()) < 1.5


def test_train_and_test_pools_are_disjoint():
    a = make_digit_composites(300, img_size=32, pool="train", seed=0).sources
    b = make_digit_composites(300, img_size=32, pool="test", seed=0).sources
    a, b = set(a[a >= 0].tolist()), set(b[b >= 0].tolist())
    assert a and b and not a & b
    assert max(a | b) < 1797


def test_long_tail_class_weights_formula():
    w = long_tail_class_weights(5, 16.0)
    expected = torch.tensor([16.0 ** (-c / 4) for c in range(5)], dtype=torch.float64)
    assert torch.allclose(w, expected)
    assert torch.equal(long_tail_class_weights(1, 3.0), torch.ones(1, dtype=torch.float64))
    assert torch.equal(long_tail_class_weights(4, 1), torch.ones(4, dtype=torch.float64))


def test_bundled_digits_equal_sklearn_loader(sklearn_digits):
    images, labels = sklearn_digits
    data = make_digit_composites(20, img_size=8, grid=1, noise_std=0.0, pool="all", seed=5)
    from cprfl_zoo.synthetic.digits import _load_all_digits

    ours, our_labels = _load_all_digits()
    assert torch.equal(ours, images / 16.0) and torch.equal(our_labels, labels)
    assert data.sources.min() >= 0


def test_write_image_list_round_trip(tmp_path):
    data = make_digit_composites(6, img_size=32, seed=0)
    list_file = write_image_list(data, tmp_path, "train")
    assert list_file == tmp_path / "train.txt"
    assert (tmp_path / "classes.txt").read_text().split() == list(DIGIT_NAMES)
    ds = MultiLabelImageList(list_file, tmp_path, class_names=DIGIT_NAMES)
    assert len(ds) == 6 and torch.equal(ds.targets, data.targets)
    for i in range(6):
        image, target = ds[i]
        assert torch.equal(target, data.targets[i])
        expected = (data.images[i] * 255).round() / 255
        assert torch.allclose(image, expected, atol=1e-6)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_images": 0}, "num_images"),
        ({"img_size": 12}, "img_size"),
        ({"img_size": 50, "grid": 3}, "multiple of grid"),
        ({"grid": 0}, "grid"),
        ({"min_digits": 0}, "min_digits"),
        ({"min_digits": 3, "max_digits": 2}, "max_digits"),
        ({"max_digits": 5}, "max_digits"),
        ({"imbalance": 0.5}, "imbalance"),
        ({"imbalance": math.inf}, "imbalance"),
        ({"class_weights": [1.0] * 9}, "class_weights"),
        ({"class_weights": [1.0] * 9 + [-1.0]}, "class_weights"),
        ({"class_weights": [1.0] + [0.0] * 9}, "class_weights"),
        ({"pool": "val"}, "pool"),
        ({"noise_std": -1.0}, "noise_std"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    args = {"num_images": 2, "img_size": 32, **kwargs}
    with pytest.raises(ValueError, match=match):
        make_digit_composites(**args)


def test_bad_weight_and_split_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        long_tail_class_weights(0, 2.0)
    with pytest.raises(ValueError, match="split"):
        write_image_list(make_digit_composites(1, img_size=16), tmp_path, "../x")


# ---------------------------------------------------------------------- exact-count canvases
def _constant_sources(num_classes: int, per_split: int, side: int = 6) -> SourceImages:
    """Class c's images are filled with the value 10 * (c + 1); half of each class is test."""
    labels = np.repeat(np.arange(num_classes), 2 * per_split)
    is_test = np.tile(np.r_[np.zeros(per_split, bool), np.ones(per_split, bool)], num_classes)
    images = np.broadcast_to(
        (10 * (labels + 1)).astype(np.uint8)[:, None, None], (len(labels), side, side)
    ).copy()
    return SourceImages(images, labels, is_test, num_classes)


def test_long_tailed_counts_follow_exponential_profile_over_order():
    order = [2, 0, 4, 1, 3]
    counts = long_tailed_counts(5, 100, 100.0, order)
    # Rank r gets round(100 * 100 ** (-r / 4)): 100, 31.6, 10, 3.16, 1.
    expected = {2: 100, 0: 32, 4: 10, 1: 3, 3: 1}
    assert counts.tolist() == [expected[c] for c in range(5)]
    assert counts.max() / counts.min() == 100


def test_long_tailed_counts_never_zero_and_flat_without_imbalance():
    assert long_tailed_counts(4, 7, 1.0, [3, 1, 0, 2]).tolist() == [7, 7, 7, 7]
    assert long_tailed_counts(10, 2, 1000.0, np.arange(10)).min() == 1


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((1, 10, 10.0, [0]), "num_classes"),
        ((3, 0, 10.0, [0, 1, 2]), "max_count"),
        ((3, 10, 0.5, [0, 1, 2]), "imbalance"),
        ((3, 10, 10.0, [0, 1, 1]), "permutation"),
        ((3, 10, 10.0, [0, 1]), "permutation"),
    ],
)
def test_long_tailed_counts_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        long_tailed_counts(*args)


def test_compose_canvases_exact_counts_distinct_classes_and_sources():
    sources = _constant_sources(6, per_split=40)
    counts = np.array([30, 12, 5, 2, 1, 20])
    canvases = compose_canvases(counts, sources.pools(False), np.random.default_rng(0))
    seen = np.zeros(6, dtype=int)
    used = []
    for canvas in canvases:
        classes = [c for c, _ in canvas]
        assert 1 <= len(canvas) <= GRID * GRID
        assert len(set(classes)) == len(classes)
        for c, src in canvas:
            assert sources.labels[src] == c  # the label is the source image's class
            assert not sources.is_test[src]
            seen[c] += 1
            used.append(src)
    assert seen.tolist() == counts.tolist()
    assert len(used) == len(set(used))


def test_compose_canvases_object_range_and_sizes():
    sources = _constant_sources(8, per_split=50)
    canvases = compose_canvases(
        [40] * 8, sources.pools(False), np.random.default_rng(1), min_objects=2, max_objects=3
    )
    sizes = np.array([len(c) for c in canvases])
    assert sizes.max() == 3
    # Only the last canvases may fall below min_objects, when fewer classes remain.
    assert (sizes[:-2] >= 2).all()


def test_compose_canvases_is_seeded():
    sources = _constant_sources(5, per_split=30)
    counts = [20, 10, 5, 3, 1]
    a = compose_canvases(counts, sources.pools(False), np.random.default_rng(7))
    b = compose_canvases(counts, sources.pools(False), np.random.default_rng(7))
    c = compose_canvases(counts, sources.pools(False), np.random.default_rng(8))
    assert a == b
    assert a != c


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"counts": [5, 50]}, "pool has 10"),
        ({"counts": [5]}, "1 classes"),
        ({"counts": [5, -1]}, "non-negative"),
        ({"counts": [5, 5], "min_objects": 0}, "min_objects"),
        ({"counts": [5, 5], "max_objects": 5}, "max_objects"),
        ({"counts": [5, 5], "min_objects": 3, "max_objects": 2}, "min_objects"),
    ],
)
def test_compose_canvases_rejects_bad_input(kwargs, match):
    sources = _constant_sources(2, per_split=10)
    with pytest.raises(ValueError, match=match):
        compose_canvases(pools=sources.pools(False), rng=np.random.default_rng(0), **kwargs)


def test_compose_set_labels_match_pixels_and_splits():
    sources = _constant_sources(7, per_split=30)
    counts = long_tailed_counts(7, 25, 10.0, [3, 1, 4, 0, 6, 2, 5])
    train = compose_set(sources, counts, test=False, rng=np.random.default_rng(0), canvas_size=32)
    test = compose_set(sources, [6] * 7, test=True, rng=np.random.default_rng(0), canvas_size=32)
    for composed, is_test in ((train, False), (test, True)):
        used = composed.sources[composed.sources >= 0]
        assert (sources.is_test[used] == is_test).all()
        assert len(used) == len(set(used.tolist()))
        for img, target, slots in zip(
            composed.images, composed.targets, composed.sources, strict=True
        ):
            classes = sorted(sources.labels[slots[slots >= 0]].tolist())
            assert np.flatnonzero(target).tolist() == classes
            # Each class's constant value is on the canvas; nothing else but background.
            values = sorted(set(np.unique(img).tolist()) - {0})
            assert values == [10 * (c + 1) for c in classes]
    assert train.targets.sum(0).tolist() == counts.tolist()
    assert train.images.shape[1:] == (32, 32) and train.images.dtype == np.uint8
    # The test set is balanced.
    assert test.targets.sum(0).tolist() == [6] * 7


def test_compose_set_is_seeded():
    sources = _constant_sources(4, per_split=20)
    kw = {"counts": [10, 6, 3, 1], "test": False, "canvas_size": 16}
    a = compose_set(sources, rng=np.random.default_rng(3), **kw)
    b = compose_set(sources, rng=np.random.default_rng(3), **kw)
    c = compose_set(sources, rng=np.random.default_rng(4), **kw)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.targets, b.targets)
    assert not np.array_equal(a.images, c.images)


def test_render_canvas_puts_each_object_in_its_own_cell():
    objs = [np.full((5, 5), v, np.uint8) for v in (50, 100, 150, 200)]
    canvas = render_canvas(objs, 40, np.random.default_rng(0))
    cells = [canvas[r * 20 : (r + 1) * 20, c * 20 : (c + 1) * 20] for r in (0, 1) for c in (0, 1)]
    found = sorted(int(np.unique(cell[cell > 0])[0]) for cell in cells)
    assert found == [50, 100, 150, 200]
    for cell in cells:
        side = int(np.sqrt((cell > 0).sum()))
        assert 15 <= side <= 20 and (cell > 0).sum() == side * side  # 75-100 % of the cell


@pytest.mark.parametrize(
    ("n", "size", "match"), [(5, 32, "at most 4"), (1, 31, "even"), (1, 6, "at least")]
)
def test_render_canvas_rejects_bad_input(n, size, match):
    objs = [np.ones((4, 4), np.uint8)] * n
    with pytest.raises(ValueError, match=match):
        render_canvas(objs, size, np.random.default_rng(0))


def test_source_images_validate():
    img = np.zeros((3, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        SourceImages(img.astype(np.float32), np.zeros(3, int), np.zeros(3, bool), 2)
    with pytest.raises(ValueError, match="labels"):
        SourceImages(img, np.zeros(2, int), np.zeros(3, bool), 2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        SourceImages(img, np.array([0, 1, 2]), np.zeros(3, bool), 2)


def test_compose_with_replacement_reuses_a_small_pool_exactly_counts_times():
    rng = np.random.default_rng(0)
    pools = [np.array([0, 1]), np.array([2, 3]), np.array([4, 5])]
    canvases = compose_canvases([30, 5, 0], pools, rng, replace=True)
    per_class = np.zeros(3, int)
    for canvas in canvases:
        classes = [c for c, _ in canvas]
        assert len(classes) == len(set(classes)) and 1 <= len(classes) <= GRID * GRID
        for c, src in canvas:
            assert src in pools[c]
            per_class[c] += 1
    assert per_class.tolist() == [30, 5, 0]
    with pytest.raises(ValueError, match="pool has 2"):
        compose_canvases([3], [np.array([0, 1])], rng)  # without replacement


def test_rgba_set_labels_counts_and_drawn_colours_agree():
    images, pools = rgba_drawings(6)
    counts = [12, 7, 3, 1, 0, 5]
    data = compose_rgba_set(images, pools, counts, rng=np.random.default_rng(3), canvas_size=48)
    assert data.images.shape[1:] == (48, 48, 3) and data.images.dtype == np.uint8
    assert data.targets.sum(0).tolist() == counts
    assert set(data.targets.sum(1).tolist()) <= {1, 2, 3, 4}
    for canvas, target, slots in zip(data.images, data.targets, data.sources, strict=True):
        used = slots[slots >= 0]
        assert sorted(int(u) // 2 for u in used) == np.flatnonzero(target).tolist()
        for src in used:
            c, s = divmod(int(src), 2)
            # An opaque square keeps its exact colour inside, whatever its rotation.
            exact = (canvas == np.array([c, s, 255], np.uint8)).all(-1).sum()
            assert exact >= 0.5 * (0.6 * 48 / GRID) ** 2 / 2, (c, s, exact)


def test_rgba_canvas_validates_inputs():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="RGBA"):
        render_rgba_canvas([np.zeros((8, 8, 3), np.uint8)], 32, rng)
    with pytest.raises(ValueError, match="at most 4"):
        render_rgba_canvas([np.zeros((8, 8, 4), np.uint8)] * 5, 32, rng)
    with pytest.raises(ValueError, match=r"\(M, h, w, 4\)"):
        compose_rgba_set(
            np.zeros((2, 8, 8), np.uint8), [np.array([0])], [1], rng=rng, canvas_size=32
        )


def test_long_tailed_counts_share_the_digit_weights_profile():
    order = np.random.default_rng(0).permutation(63)
    counts = long_tailed_counts(63, 400, 100.0, order)
    weights = long_tail_class_weights(63, 100.0).numpy()
    np.testing.assert_array_equal(counts[order], np.maximum(np.rint(400 * weights), 1))


def test_compose_canvases_stream_is_pinned():
    # The published benchmark tables were composed with this random stream: a change that
    # reorders the draws changes every canvas, and must be a deliberate one.
    pools = [np.arange(0, 4), np.arange(4, 8), np.arange(8, 10)]
    canvases = compose_canvases([3, 2, 1], pools, np.random.default_rng([0, 1]))
    assert canvases == [[(0, 2)], [(0, 1), (1, 4)], [(1, 6), (0, 3), (2, 9)]]


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        (np.zeros((4, 4, 3), np.uint8), r"objects must be \(h, w\) uint8"),
        (np.zeros((4, 4), np.float32), r"objects must be \(h, w\) uint8, got \(4, 4\) float32"),
    ],
)
def test_render_canvas_names_a_bad_object(obj, match):
    with pytest.raises(ValueError, match=match):
        render_canvas([obj], 16, np.random.default_rng(0))


def test_compose_rgba_set_is_seeded_and_sources_are_the_drawn_classes():
    images, pools = rgba_drawings(5)
    kw = {"canvas_size": 32}
    a = compose_rgba_set(images, pools, [6, 4, 2, 1, 3], rng=np.random.default_rng(1), **kw)
    b = compose_rgba_set(images, pools, [6, 4, 2, 1, 3], rng=np.random.default_rng(1), **kw)
    c = compose_rgba_set(images, pools, [6, 4, 2, 1, 3], rng=np.random.default_rng(2), **kw)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.sources, b.sources)
    assert not np.array_equal(a.images, c.images)
    for target, slots in zip(a.targets, a.sources, strict=True):
        drawn = sorted(int(s) // 2 for s in slots[slots >= 0])  # drawing 2c + style is class c
        assert np.flatnonzero(target).tolist() == drawn
