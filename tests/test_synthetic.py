from __future__ import annotations

import math

import pytest
import torch

from cprfl_zoo.data import MultiLabelImageList
from cprfl_zoo.synthetic import (
    DIGIT_NAMES,
    long_tail_class_weights,
    make_digit_composites,
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
    from cprfl_zoo.synthetic import _load_all_digits

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
