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
