"""cprfl_zoo.metrics.thresholded: OP, OR, OF1, CP, CR, CF1."""

import math

import pytest
import torch
from conftest import random_problem
from sklearn.metrics import precision_score, recall_score

from cprfl_zoo.metrics import threshold_metrics


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
            per_class = threshold if isinstance(threshold, list) else [threshold] * c
            pred[i] = [pred[i][j] and row[j] >= per_class[j] for j in range(c)]
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
    [
        {"threshold": 0.0},
        {"threshold": 0.8},
        {"top_k": 3},
        {"top_k": 3, "threshold": 0.0},
        {"threshold": [0.9, -0.5, 0.0, 1.2, 0.3, -1.0, 0.1]},  # one per class
        {"top_k": 2, "threshold": [0.9, -0.5, 0.0, 1.2, 0.3, -1.0, 0.1]},
    ],
)
def test_threshold_metrics_against_reference(kwargs):
    scores, targets = random_problem(n=60, c=7, seed=6)
    targets[:, 6] = 0  # a class without positives: out of CP/CR, its predictions still FPs
    ours = threshold_metrics(scores, targets, **kwargs)
    ref = _reference_prf(scores, targets, **kwargs)
    if isinstance(kwargs.get("threshold"), list):  # the same as a tensor
        as_tensor = {**kwargs, "threshold": torch.tensor(kwargs["threshold"])}
        again = threshold_metrics(scores, targets, **as_tensor)
        assert again.as_dict() == ours.as_dict() and torch.equal(again.precision, ours.precision)
    for key, value in ours.as_dict().items():
        assert value == pytest.approx(ref[key], abs=1e-12), key
    assert ours.excluded == (6,)
    assert math.isnan(ours.recall[6].item())


def test_threshold_metrics_agree_with_sklearn():
    scores, targets = random_problem(n=80, c=5, seed=7)
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
        ({"threshold": [0.5, 0.5]}, r"one number or one per class \(4\), got shape \(2,\)"),
        ({"threshold": torch.zeros(3, 4)}, "one number or one per class"),
        ({"threshold": [0.5, float("nan"), 0.5, 0.5]}, "must not be NaN"),
    ],
)
def test_threshold_metrics_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        threshold_metrics(torch.randn(3, 4), torch.ones(3, 4), **kwargs)


def test_a_score_exactly_on_the_threshold_is_predicted():
    # ">=" not ">": the rule prediction uses with the calibrated thresholds
    scores = torch.tensor([[0.5, 0.25], [0.5, 0.75], [0.4, 0.25]])
    targets = torch.tensor([[1, 1], [0, 1], [1, 0]])
    out = threshold_metrics(scores, targets, threshold=0.5)
    assert out.precision.tolist() == [0.5, 1.0]
    assert out.recall.tolist() == [0.5, 0.5]
    per_class = threshold_metrics(scores, targets, threshold=torch.tensor([0.5, 0.25]))
    assert per_class.precision.tolist() == [0.5, 2 / 3]
    assert per_class.recall.tolist() == [0.5, 1.0]


def test_numpy_scalars_are_thresholds():
    import numpy as np

    scores, targets = random_problem(n=30, c=4, seed=2)
    expected = threshold_metrics(scores, targets, threshold=0.25).as_dict()
    for value in (np.float32(0.25), np.float64(0.25), np.float16(0.25)):
        assert threshold_metrics(scores, targets, threshold=value).as_dict() == expected
    assert threshold_metrics(scores, targets, threshold=np.int64(0)).as_dict() == (
        threshold_metrics(scores, targets, threshold=0).as_dict()
    )
    with pytest.raises(ValueError, match="threshold must be a number"):
        threshold_metrics(scores, targets, threshold=np.bool_(True))


def test_per_class_thresholds_and_from_logits_against_reference():
    scores, targets = random_problem(n=50, c=5, seed=4)
    limits = torch.tensor([0.2, 0.4, 0.5, 0.6, 0.8])
    ours = threshold_metrics(scores, targets, threshold=limits, from_logits=True)
    probs = scores.float().sigmoid()
    # prob >= t_j  <=>  prob - t_j >= 0 (exact in float32): one global threshold of 0
    ref = _reference_prf(probs - limits, targets, threshold=0.0)
    for key, value in ours.as_dict().items():
        assert value == pytest.approx(ref[key], abs=1e-12), key
    top = threshold_metrics(scores, targets, top_k=2, from_logits=True).as_dict()
    assert top == pytest.approx(_reference_prf(probs, targets, top_k=2), abs=1e-12)
    with pytest.raises(ValueError, match=r"one number or one per class \(5\), got shape \(4,\)"):
        threshold_metrics(scores, targets, threshold=limits[:4])


@pytest.mark.parametrize(
    "kwargs", [{"threshold": 0.1}, {"top_k": 2}, {"top_k": 3, "threshold": 0.0}]
)
def test_row_chunks_count_the_same(kwargs, monkeypatch):
    import cprfl_zoo.metrics._chunks as chunks

    scores, targets = random_problem(n=45, c=6, seed=9)
    whole = threshold_metrics(scores, targets, **kwargs)
    monkeypatch.setattr(chunks, "CHUNK_ELEMENTS", 13)  # two rows per chunk
    chunked = threshold_metrics(scores, targets, **kwargs)
    assert chunked.as_dict() == whole.as_dict()
    assert torch.equal(chunked.precision, whole.precision)
    assert torch.equal(chunked.recall.nan_to_num(-1), whole.recall.nan_to_num(-1))
