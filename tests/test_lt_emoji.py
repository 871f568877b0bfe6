"""Tests of the emoji long-tailed benchmark's class table, splits and asset checks (issue 10).

Everything runs on small RGBA images drawn here; the npm tarballs are never needed. The RGBA
composer itself (``cprfl_zoo.synthetic.compose_rgba_set``) is tested in tests/test_synthetic.py.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _emoji
import lt_emoji
from conftest import rgba_drawings

from cprfl_zoo.metrics import long_tail_split

SUBCATEGORIES = tuple(sub for sub, shorts in _emoji.CLASSES for _ in shorts)
NUM_CLASSES = len(SUBCATEGORIES)


# ---------------------------------------------------------------------- class table and counts
def test_class_table_is_9_subcategories_of_8_distinct_emoji():
    shorts = [s for _, group in _emoji.CLASSES for s in group]
    assert len(shorts) == len(set(shorts)) == 72
    assert {len(group) for _, group in _emoji.CLASSES} == {8}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frequency_order_puts_one_class_of_every_subcategory_in_each_block(seed):
    order = _emoji.frequency_order(SUBCATEGORIES, seed)
    assert sorted(order.tolist()) == list(range(NUM_CLASSES))
    for block in range(8):
        members = order[block * 9 : (block + 1) * 9]
        assert sorted(SUBCATEGORIES[c] for c in members) == sorted({*SUBCATEGORIES})
    assert not np.array_equal(order, _emoji.frequency_order(SUBCATEGORIES, seed + 1))
    np.testing.assert_array_equal(order, _emoji.frequency_order(SUBCATEGORIES, seed))


def test_frequency_order_rejects_unequal_subcategories():
    with pytest.raises(ValueError, match="same number of classes"):
        _emoji.frequency_order(("a", "a", "b"), 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_subcategory_has_head_medium_tail_and_one_unseen_class(seed):
    counts, seen, unseen = lt_emoji.training_counts(SUBCATEGORIES, seed, 400, 100.0)
    assert len(seen) == 63 and len(unseen) == 9
    assert set(seen.tolist()) | set(unseen.tolist()) == set(range(NUM_CLASSES))
    assert (counts[unseen] == 0).all() and (counts[seen] >= 1).all()
    assert counts.max() == 400 and counts[seen].min() == 4  # imbalance 100, as COCO-LT's order
    split = long_tail_split(counts[seen].tolist(), 100, 20)
    groups = {name: [int(seen[i]) for i in idx] for name, idx in split.groups().items()}
    assert {k: len(v) for k, v in groups.items()} == {"head": 19, "medium": 22, "tail": 22}
    for sub in set(SUBCATEGORIES):
        for name, members in groups.items():
            assert any(SUBCATEGORIES[c] == sub for c in members), (sub, name)
        assert sum(SUBCATEGORIES[c] == sub for c in unseen) == 1
    # The unseen class of each subcategory is its rarest member (the last frequency block).
    order = _emoji.frequency_order(SUBCATEGORIES, seed)
    assert sorted(order[-9:].tolist()) == unseen.tolist()


# ---------------------------------------------------------------------- composition


def test_splits_use_disjoint_randomness_and_a_fixed_balanced_val_and_test():
    images, pools = rgba_drawings(NUM_CLASSES, side=8)
    cfg = replace(
        lt_emoji.EmojiConfig(),
        max_count=20,
        imbalance=10.0,
        val_per_class=2,
        test_per_class=3,
        canvas_size=16,
    )
    a = lt_emoji.compose_splits(images, pools, SUBCATEGORIES, 0, cfg)
    b = lt_emoji.compose_splits(images, pools, SUBCATEGORIES, 1, cfg)
    again = lt_emoji.compose_splits(images, pools, SUBCATEGORIES, 0, cfg)
    np.testing.assert_array_equal(a.train.images, again.train.images)
    # Balanced, all 72 classes (unseen included) in val and test; unseen never in training.
    assert a.val.targets.sum(0).tolist() == [2] * NUM_CLASSES
    assert a.test.targets.sum(0).tolist() == [3] * NUM_CLASSES
    assert (a.train.targets[:, a.unseen] == 0).all()
    assert a.train.targets.sum(0).tolist() == a.counts.tolist()
    # Val and test do not depend on the seed; training does.
    np.testing.assert_array_equal(a.val.images, b.val.images)
    np.testing.assert_array_equal(a.test.images, b.test.images)
    assert not np.array_equal(a.counts, b.counts)
    # Three different random streams: no canvas repeats across the sets, and the first
    # canvases' backgrounds differ.
    flat = {
        k: {x.tobytes() for x in s.images}
        for k, s in (("tr", a.train), ("va", a.val), ("te", a.test))
    }
    assert not (flat["tr"] & flat["va"]) and not (flat["tr"] & flat["te"])
    assert not (flat["va"] & flat["te"])
    corners = [s.images[0, 0, 0].tolist() for s in (a.train, a.val, a.test)]
    assert len({tuple(c) for c in corners}) == 3


# ---------------------------------------------------------------------- assets
def test_missing_tarballs_name_the_npm_command(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        _emoji.find_tarballs(tmp_path)
    message = str(info.value)
    assert "npm pack emoji-datasource-google@16.0.0" in message
    assert "npm pack emoji-datasource-twitter@16.0.0" in message
    assert str(tmp_path) in message


def test_one_missing_tarball_names_only_its_command(tmp_path):
    (tmp_path / _emoji.tarball_name("google")).write_bytes(b"x")
    with pytest.raises(FileNotFoundError) as info:
        _emoji.find_tarballs(tmp_path)
    assert "npm pack emoji-datasource-twitter@16.0.0" in str(info.value)
    assert "emoji-datasource-google@" not in str(info.value)


def test_tarball_with_wrong_sha256_is_refused(tmp_path):
    for style in _emoji.STYLES:
        (tmp_path / _emoji.tarball_name(style)).write_bytes(b"not the package")
    with pytest.raises(ValueError, match="sha256"):
        _emoji.find_tarballs(tmp_path)
    assert set(_emoji.find_tarballs(tmp_path, verify=False)) == set(_emoji.STYLES)


def test_benchmark_command_fails_with_the_npm_command_when_data_is_missing(tmp_path):
    with pytest.raises(SystemExit) as info:
        lt_emoji.main(["--data-dir", str(tmp_path), "--output", str(tmp_path / "r.json")])
    assert "npm pack emoji-datasource-google@16.0.0" in str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"), [("0", "a number > 0"), ("-0.003", "a number > 0"), ("nan", "finite")]
)
def test_top_backbone_lr_must_be_a_positive_number(tmp_path, capsys, value, expected):
    # 0 would otherwise fall back to 1/10 of the head's lr without a word
    with pytest.raises(SystemExit):
        lt_emoji.main(["--top-backbone-lr", value, "--output", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert "--top-backbone-lr" in err and expected in err and repr(value) in err


def test_default_data_dir_is_under_the_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("CPRFL_ZOO_CACHE", str(tmp_path))
    assert _emoji.default_data_dir() == tmp_path / "datasets" / "emoji"


# ---------------------------------------------------------------------- diagnostics
def test_push_down_share_matches_the_asl_gradient_by_hand():
    logits = torch.tensor([[2.0, -1.0], [0.5, 1.5], [-0.3, 0.2]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    out = lt_emoji.logit_diagnostics(logits, targets, {"a": [0], "b": [1]})

    def grad(z: float, positive: bool) -> float:
        # d/dz of ASL (γ- = 4, γ+ = 0, clip 0.05), focusing weight p_m^4 held constant (the
        # official ASL's disable_torch_grad_focal_loss, the loss's default).
        p = torch.sigmoid(torch.tensor(z, dtype=torch.float64))
        if positive:
            return float(p - 1)
        pm = torch.clamp(p - 0.05, min=0)
        return float(pm**4 / (1 - pm) * p * (1 - p))

    neg_a = abs(grad(0.5, False)) + abs(grad(-0.3, False))
    share_a = neg_a / (neg_a + abs(grad(2.0, True)))
    assert out["a"]["push_down_share"] == pytest.approx(share_a, abs=1e-4)
    assert out["a"]["pos_logit"] == pytest.approx(2.0)
    assert out["b"]["neg_logit"] == pytest.approx((-1.0 + 0.2) / 2, abs=1e-3)
