"""cprfl_zoo.metrics.long_tail: the head / medium / tail split and its mAP."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import LT_SPLITS_SKIP, lt_splits_dir, random_problem
from sklearn.metrics import average_precision_score

from cprfl_zoo.data import read_image_list
from cprfl_zoo.metrics import LongTailSplit, long_tail_map, long_tail_split

LT_SPLITS = lt_splits_dir()


def test_long_tail_split_boundaries():
    counts = [100, 99, 20, 19, 0, 1000, 55]
    split = long_tail_split(counts)
    assert split.head == (0, 5)
    assert split.medium == (1, 2, 6)
    assert split.tail == (3, 4)
    assert split.group_of(0) == "head" and split.group_of(2) == "medium"
    assert split.group_of(3) == "tail"
    assert split.class_counts == tuple(counts)
    with pytest.raises(IndexError, match="class index 7"):
        split.group_of(7)


def test_long_tail_split_custom_thresholds_and_tensor_input():
    split = long_tail_split(torch.tensor([10, 9, 5, 4, 3]), head_threshold=10, tail_threshold=4)
    assert (split.head, split.medium, split.tail) == ((0,), (1, 2, 3), (4,))
    same = long_tail_split(torch.tensor([50.0, 5.0]), head_threshold=5, tail_threshold=5)
    assert (same.head, same.medium, same.tail) == ((0, 1), (), ())


@pytest.mark.parametrize(
    ("counts", "kwargs", "match"),
    [
        ([], {}, "non-empty 1-D"),
        ([[1, 2]], {}, "non-empty 1-D"),
        ([3, -1], {}, r"non-negative; classes \[1\]"),
        ([3.5, 2], {}, "whole numbers"),
        ([3, 2], {"head_threshold": 10, "tail_threshold": 20}, "head_threshold .10. must be >="),
        ([3, 2], {"head_threshold": -1}, "head_threshold must be a non-negative int"),
        ([3, 2], {"tail_threshold": 2.5}, "tail_threshold must be a non-negative int"),
    ],
)
def test_long_tail_split_bad_inputs(counts, kwargs, match):
    with pytest.raises(ValueError, match=match):
        long_tail_split(counts, **kwargs)


@pytest.mark.skipif(
    not all((LT_SPLITS / sub / "class_freq.json").is_file() for sub in ("coco", "voc")),
    reason=LT_SPLITS_SKIP + ", with each benchmark's class_freq.json (positives per class)",
)
@pytest.mark.parametrize(
    ("sub", "list_name", "num_classes", "sizes"),
    [("coco", "coco_lt_train.txt", 80, (22, 33, 25)), ("voc", "voc_lt_train.txt", 20, (6, 6, 8))],
)
def test_long_tail_split_on_real_benchmarks(sub, list_name, num_classes, sizes):
    freq = json.loads((LT_SPLITS / sub / "class_freq.json").read_text())["class_freq"]
    split = long_tail_split(freq)
    assert (len(split.head), len(split.medium), len(split.tail)) == sizes
    # the same split from counting the training list itself
    counts = read_image_list(LT_SPLITS / sub / list_name, num_classes).class_counts()
    assert counts.tolist() == freq
    assert long_tail_split(counts) == split


@pytest.mark.filterwarnings("ignore:No positive class found:UserWarning")
def test_long_tail_map_groups():
    scores, targets = random_problem(n=200, c=6, seed=5)
    targets[:, 4] = 0  # a tail class without test positives
    split = long_tail_split([150, 120, 50, 30, 5, 2])
    out = long_tail_map(scores, targets, split)
    ap = average_precision_score(targets.numpy(), scores.numpy(), average=None)
    assert out.head == pytest.approx(ap[[0, 1]].mean(), abs=1e-12)
    assert out.medium == pytest.approx(ap[[2, 3]].mean(), abs=1e-12)
    assert out.tail == pytest.approx(ap[5], abs=1e-12)  # class 4 excluded
    assert out.map == pytest.approx(ap[[0, 1, 2, 3, 5]].mean(), abs=1e-12)
    assert out.excluded == (4,)
    d = out.as_dict(scale=100)
    assert set(d) == {"mAP", "mAP_head", "mAP_medium", "mAP_tail"}
    assert d["mAP_tail"] == pytest.approx(100 * ap[5])
    # counts instead of a split, and an empty group gives NaN
    out2 = long_tail_map(scores, targets, [150] * 6)
    assert out2.head == pytest.approx(out2.map) and math.isnan(out2.tail)


def test_long_tail_map_split_size_checked():
    with pytest.raises(ValueError, match="split covers 3 classes but scores have 4"):
        long_tail_map(torch.randn(5, 4), torch.ones(5, 4), [1, 2, 3])


def test_long_tail_split_is_a_value_object():
    split = long_tail_split([100, 5])
    assert isinstance(split, LongTailSplit)
    assert split.groups() == {"head": (0,), "medium": (), "tail": (1,)}


@pytest.mark.parametrize(
    ("counts", "match"),
    [
        # inf used to be cast to a negative int: "classes [0] are negative"
        ([math.inf, 200.0], r"class_counts\[0\] is inf, not a finite count"),
        ([3, math.nan], r"class_counts\[1\] is nan, not a finite count"),
        (["12", "3"], r"class_counts\[0\] is '12' \(str\), not a count"),
        ([5, 2**70], r"class_counts\[1\] is 1180591620717411303424, more than a count can be"),
        ([True, 3], r"class_counts\[0\] is True \(bool\), not a count"),
        (torch.tensor([True, False]), r"class_counts\[0\] is True \(bool\)"),
        (np.array([3, 4], dtype=bool), r"class_counts\[0\] is True \(bool\)"),
        (torch.tensor([[3, 4]]), r"non-empty 1-D sequence, got shape \(1, 2\)"),
        ("12", r"1-D sequence of counts, got str"),
    ],
)
def test_long_tail_split_names_bad_counts(counts, match):
    with pytest.raises(ValueError, match=match):
        long_tail_split(counts)


def test_long_tail_split_accepts_numpy_counts():
    split = long_tail_split(np.array([150, 40, 3], dtype=np.int64), np.int64(100), np.int32(20))
    assert (split.head, split.medium, split.tail) == ((0,), (1,), (2,))
    assert long_tail_split([150.0, 3.0]).class_counts == (150, 3)
