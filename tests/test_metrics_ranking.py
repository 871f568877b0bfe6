"""cprfl_zoo.metrics.ranking: average precision, mAP, and the input checks."""

import math

import numpy as np
import pytest
import torch
from conftest import random_problem
from sklearn.metrics import average_precision_score

from cprfl_zoo.metrics import average_precision, mean_average_precision


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


def test_ap_matches_sklearn_without_ties():
    scores, targets = random_problem()
    ours = average_precision(scores, targets)
    ref = average_precision_score(targets.numpy(), scores.numpy(), average=None)
    assert ours.dtype == torch.float64 and ours.shape == (9,)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-12)


def test_ap_ties_are_one_threshold_group_like_sklearn():
    scores, targets = random_problem(seed=1)
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
    scores, targets = random_problem(seed=2)
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
    scores, targets = random_problem(seed=4)
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


def test_chunked_ap_equals_unchunked(monkeypatch):
    import cprfl_zoo.metrics._chunks as chunks

    scores, targets = random_problem(n=40, c=9, seed=5)
    scores[:, 2] = scores[:, 2].round()  # ties
    targets[:, 7] = 0  # no positive: NaN
    whole = average_precision(scores, targets)
    monkeypatch.setattr(chunks, "CHUNK_ELEMENTS", 50)  # one class per chunk
    assert torch.equal(average_precision(scores, targets).nan_to_num(-1), whole.nan_to_num(-1))
    monkeypatch.setattr(chunks, "CHUNK_ELEMENTS", 120)  # three classes per chunk
    assert torch.equal(average_precision(scores, targets).nan_to_num(-1), whole.nan_to_num(-1))
    # the checks name the right class from any chunk
    scores[3, 8] = float("nan")
    with pytest.raises(ValueError, match=r"NaN \(classes \[8\]\)"):
        average_precision(scores, targets)
