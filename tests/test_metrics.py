import json
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import average_precision_score, precision_score, recall_score

from cprfl_zoo.data import read_image_list
from cprfl_zoo.metrics import (
    LongTailSplit,
    MultiLabelEvaluator,
    average_precision,
    gather_for_metrics,
    long_tail_map,
    long_tail_split,
    mean_average_precision,
    threshold_metrics,
)

LT_SPLITS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "lt_splits"


def _random_problem(n=300, c=9, seed=0, p=0.3):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, c, generator=g)
    targets = (torch.rand(n, c, generator=g) < p).float()
    targets[0] = 1.0  # every class has at least one positive
    return scores, targets


def _reference_ap(scores, targets):
    """AP from the definition: sum over distinct thresholds of (R_n - R_{n-1}) * P_n."""
    aps = []
    for k in range(scores.shape[1]):
        s, t = scores[:, k].tolist(), targets[:, k].tolist()
        num_pos = sum(t)
        ap, prev_recall = 0.0, 0.0
        for thr in sorted(set(s), reverse=True):
            tp = sum(ti for si, ti in zip(s, t, strict=True) if si >= thr)
            npred = sum(1 for si in s if si >= thr)
            recall = tp / num_pos
            ap += (recall - prev_recall) * tp / npred
            prev_recall = recall
        aps.append(ap)
    return torch.tensor(aps, dtype=torch.float64)


# ---------------------------------------------------------------- average precision


def test_ap_matches_sklearn_without_ties():
    scores, targets = _random_problem()
    ours = average_precision(scores, targets)
    ref = average_precision_score(targets.numpy(), scores.numpy(), average=None)
    assert ours.dtype == torch.float64 and ours.shape == (9,)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-12)


def test_ap_ties_are_one_threshold_group_like_sklearn():
    scores, targets = _random_problem(seed=1)
    coarse = (scores * 2).round()  # many ties per class
    assert coarse[:, 0].unique().numel() < 20
    ours = average_precision(coarse, targets)
    np.testing.assert_allclose(
        ours.numpy(),
        average_precision_score(targets.numpy(), coarse.numpy(), average=None),
        atol=1e-12,
    )
    np.testing.assert_allclose(ours.numpy(), _reference_ap(coarse, targets).numpy(), atol=1e-12)
    # independent of the order of tied samples
    perm = torch.randperm(coarse.shape[0], generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(average_precision(coarse[perm], targets[perm]), ours)


def test_ap_hand_example_with_tie():
    # ranks: 0.9 (pos), {0.5 pos, 0.5 neg} tied, 0.1 (pos)
    scores = torch.tensor([0.9, 0.5, 0.5, 0.1])
    targets = torch.tensor([1, 1, 0, 1])
    # thresholds: 0.9 -> P=1, R=1/3; 0.5 -> P=2/3, R=2/3; 0.1 -> P=3/4, R=1
    expected = (1 / 3) * 1 + (1 / 3) * (2 / 3) + (1 / 3) * (3 / 4)
    ap = average_precision(scores, targets)
    assert ap.dim() == 0
    assert ap.item() == pytest.approx(expected, abs=1e-12)


def test_ap_on_logits_equals_ap_on_probabilities():
    scores, targets = _random_problem(seed=2)
    torch.testing.assert_close(
        average_precision(scores, targets), average_precision(scores.sigmoid(), targets)
    )


def test_ap_perfect_and_bool_targets():
    targets = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 0]], dtype=torch.bool)
    scores = torch.tensor([[3.0, 0.0], [2.0, 1.0], [1.0, 2.0], [0.0, -1.0]])
    torch.testing.assert_close(
        average_precision(scores, targets), torch.ones(2, dtype=torch.float64)
    )


def test_map_excludes_and_reports_classes_without_positives(caplog):
    scores, targets = _random_problem(seed=4)
    targets[:, [2, 5]] = 0
    with caplog.at_level("WARNING", logger="cprfl_zoo.metrics"):
        result = mean_average_precision(scores, targets, class_names=list("abcdefghi"))
    assert result.excluded == (2, 5)
    assert result.num_evaluated == 7
    assert torch.isnan(result.ap[[2, 5]]).all()
    keep = [0, 1, 3, 4, 6, 7, 8]
    ref = average_precision_score(targets[:, keep].numpy(), scores[:, keep].numpy(), average=None)
    assert result.map == pytest.approx(ref.mean(), abs=1e-12)
    assert "2 of 9 classes" in caplog.text and "'c'" in caplog.text and "'f'" in caplog.text


def test_map_all_classes_without_positives_is_nan():
    result = mean_average_precision(torch.randn(4, 3), torch.zeros(4, 3))
    assert math.isnan(result.map) and result.excluded == (0, 1, 2)


@pytest.mark.parametrize(
    ("scores", "targets", "match"),
    [
        (torch.randn(5, 3), torch.zeros(5, 4), "does not match scores shape"),
        (torch.randn(2, 3, 4), torch.zeros(2, 3, 4), r"shape \(N, C\)"),
        (torch.randn(0, 3), torch.zeros(0, 3), "empty"),
        (torch.tensor([[0.1, float("nan")]]), torch.zeros(1, 2), r"NaN \(classes \[1\]\)"),
        (torch.randn(3, 2), torch.tensor([[0, 1], [2, 0], [0, 0]]), r"0/1 values; classes \[0\]"),
        (torch.randn(3, 2), torch.tensor([[0, -1], [1, 0], [0, 0]]), r"classes \[1\]"),
    ],
)
def test_ap_bad_inputs(scores, targets, match):
    with pytest.raises(ValueError, match=match):
        average_precision(scores, targets)


def test_ap_rejects_non_tensors():
    with pytest.raises(TypeError, match=r"scores must be a torch\.Tensor"):
        average_precision(np.zeros((2, 2)), torch.zeros(2, 2))
    with pytest.raises(TypeError, match=r"targets must be a torch\.Tensor"):
        average_precision(torch.zeros(2, 2), [[0, 1], [1, 0]])


def test_map_class_names_length_checked():
    with pytest.raises(ValueError, match="class_names has 2 names for 3 classes"):
        mean_average_precision(torch.randn(4, 3), torch.ones(4, 3), class_names=["a", "b"])


# ---------------------------------------------------------------- long-tail split


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


@pytest.mark.skipif(not LT_SPLITS.is_dir(), reason="../shared/data/lt_splits not available")
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
    scores, targets = _random_problem(n=200, c=6, seed=5)
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


# ---------------------------------------------------------------- threshold metrics


def _reference_prf(scores, targets, threshold=None, top_k=None):
    """OP/OR/OF1/CP/CR/CF1 with plain Python loops, from the definitions."""
    n, c = scores.shape
    tgt = targets.tolist()
    pred = [[True] * c for _ in range(n)]
    for i in range(n):
        row = scores[i].tolist()
        if top_k is not None:
            keep = sorted(range(c), key=lambda j: -row[j])[:top_k]
            pred[i] = [j in keep for j in range(c)]
        if threshold is not None:
            pred[i] = [pred[i][j] and row[j] >= threshold for j in range(c)]
    tp = [sum(pred[i][j] and tgt[i][j] == 1 for i in range(n)) for j in range(c)]
    npred = [sum(pred[i][j] for i in range(n)) for j in range(c)]
    ngt = [sum(tgt[i][j] == 1 for i in range(n)) for j in range(c)]
    op = sum(tp) / sum(npred)
    orec = sum(tp) / sum(ngt)
    valid = [j for j in range(c) if ngt[j] > 0]
    cp = sum(tp[j] / npred[j] if npred[j] else 0.0 for j in valid) / len(valid)
    cr = sum(tp[j] / ngt[j] for j in valid) / len(valid)
    return {
        "OP": op,
        "OR": orec,
        "OF1": 2 * op * orec / (op + orec),
        "CP": cp,
        "CR": cr,
        "CF1": 2 * cp * cr / (cp + cr),
    }


@pytest.mark.parametrize(
    "kwargs",
    [{"threshold": 0.0}, {"threshold": 0.8}, {"top_k": 3}, {"top_k": 3, "threshold": 0.0}],
)
def test_threshold_metrics_against_reference(kwargs):
    scores, targets = _random_problem(n=60, c=7, seed=6)
    targets[:, 6] = 0  # a class without positives: out of CP/CR, its predictions still FPs
    ours = threshold_metrics(scores, targets, **kwargs)
    ref = _reference_prf(scores, targets, **kwargs)
    for key, value in ours.as_dict().items():
        assert value == pytest.approx(ref[key], abs=1e-12), key
    assert ours.excluded == (6,)
    assert math.isnan(ours.recall[6].item())


def test_threshold_metrics_agree_with_sklearn():
    scores, targets = _random_problem(n=80, c=5, seed=7)
    pred = (scores >= 0.3).numpy()
    out = threshold_metrics(scores, targets, threshold=0.3)
    y = targets.numpy()
    assert out.overall_precision == pytest.approx(precision_score(y, pred, average="micro"))
    assert out.overall_recall == pytest.approx(recall_score(y, pred, average="micro"))
    assert out.class_precision == pytest.approx(
        precision_score(y, pred, average="macro", zero_division=0)
    )
    assert out.class_recall == pytest.approx(recall_score(y, pred, average="macro"))


def test_threshold_metrics_never_predicted_class_has_precision_zero():
    scores = torch.tensor([[5.0, -5.0], [5.0, -5.0], [-5.0, -5.0]])
    targets = torch.tensor([[1, 1], [0, 0], [1, 0]])
    out = threshold_metrics(scores, targets, threshold=0.0)
    assert out.precision.tolist() == [0.5, 0.0]
    assert out.recall.tolist() == [0.5, 0.0]
    assert out.class_precision == pytest.approx(0.25)
    assert out.overall_precision == pytest.approx(0.5)
    assert out.overall_recall == pytest.approx(1 / 3)
    nothing = threshold_metrics(scores, targets, threshold=10.0)
    assert nothing.overall_precision == 0.0 and nothing.overall_f1 == 0.0
    assert nothing.class_f1 == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "give a threshold, a top_k, or both"),
        ({"top_k": 0}, r"top_k must be an int in \[1, 4\]"),
        ({"top_k": 5}, r"top_k must be an int in \[1, 4\]"),
        ({"top_k": 2.0}, "top_k must be an int"),
        ({"threshold": "0.5"}, "threshold must be a number"),
        ({"threshold": float("nan")}, "threshold must not be NaN"),
    ],
)
def test_threshold_metrics_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        threshold_metrics(torch.randn(3, 4), torch.ones(3, 4), **kwargs)


# ---------------------------------------------------------------- DDP gather and evaluator


def test_gather_for_metrics_without_process_group_is_identity():
    assert not dist.is_initialized()
    x = torch.randn(5, 3)
    assert gather_for_metrics(x) is x
    assert gather_for_metrics(x, num_samples=5) is x
    with pytest.raises(ValueError, match="num_samples=4 but the single process holds 5 rows"):
        gather_for_metrics(x, num_samples=4)
    with pytest.raises(ValueError, match="0-d tensor"):
        gather_for_metrics(torch.tensor(1.0))
    with pytest.raises(TypeError, match=r"must be a torch\.Tensor"):
        gather_for_metrics([1, 2])


def _gather_worker(rank, world_size, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        # unequal sizes: rank r holds r + 2 rows whose values encode (rank, row)
        x = torch.stack([torch.tensor([rank, i]) for i in range(rank + 2)])
        gathered = gather_for_metrics(x)
        # DistributedSampler over 7 samples on 2 ranks: 4 rows each, rank 1's last is padding
        y = torch.arange(4) + 10 * rank
        trimmed = gather_for_metrics(y, num_samples=7)
        torch.save({"gathered": gathered, "trimmed": trimmed}, Path(out_dir) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gather_for_metrics_two_gloo_processes(tmp_path):
    # fork: the workers reuse the imported torch instead of re-importing it (seconds each)
    mp.start_processes(
        _gather_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="fork"
    )
    expected = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1], [1, 2]])
    for rank in range(2):
        out = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert torch.equal(out["gathered"], expected)
        assert out["trimmed"].tolist() == [0, 1, 2, 3, 10, 11, 12]


def test_evaluator_accumulates_batches():
    scores, targets = _random_problem(n=90, c=5, seed=8)
    counts = [300, 150, 40, 25, 3]
    ev = MultiLabelEvaluator(counts, threshold=0.5, top_k=2)
    with pytest.raises(ValueError, match="call update"):
        ev.compute()
    for i in range(0, 90, 32):
        ev.update(scores[i : i + 32], targets[i : i + 32])
    res = ev.compute(num_samples=90)
    lt = long_tail_map(scores, targets, counts).as_dict()
    for key in lt:
        assert res[key] == pytest.approx(lt[key], abs=1e-12)
    thr = threshold_metrics(scores.sigmoid(), targets, threshold=0.5).as_dict()
    top = threshold_metrics(scores, targets, top_k=2).as_dict()
    for key in thr:
        assert res[key] == pytest.approx(thr[key], abs=1e-12)
        assert res[f"{key}_top2"] == pytest.approx(top[key], abs=1e-12)
    ev.reset()
    ev.update(scores, targets)
    assert MultiLabelEvaluator(top_k=None).split is None
    with pytest.raises(ValueError, match=r"must both be \(B, C\)"):
        ev.update(scores[:, :2], targets)


def test_long_tail_split_is_a_value_object():
    split = long_tail_split([100, 5])
    assert isinstance(split, LongTailSplit)
    assert split.groups() == {"head": (0,), "medium": (), "tail": (1,)}
