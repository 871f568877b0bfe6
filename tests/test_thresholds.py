"""Per-class decision thresholds: the model's API, saving, and F1 calibration (offline)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import tiny_cprfl

from cprfl_zoo import CPRFL, create_cprfl
from cprfl_zoo.hub import build_model_card
from cprfl_zoo.thresholds import (
    DEFAULT_THRESHOLD,
    best_f1_thresholds,
    calibrate_thresholds,
    validate_thresholds,
)

NAMES = ["cat", "dog", "zebra", "kite"]


def _model(thresholds=None) -> CPRFL:
    return tiny_cprfl(NAMES, thresholds=thresholds)


# ---------------------------------------------------------------------- model API
def test_uncalibrated_model_uses_one_half() -> None:
    model = _model()
    assert model.thresholds is None
    got = model.get_thresholds()
    assert got.dtype == torch.float32 and got.shape == (4,)
    assert torch.equal(got, torch.full((4,), 0.5))
    assert "thresholds" not in model.model_args


def test_set_get_and_save_round_trip(tmp_path: Path) -> None:
    model = _model()
    model.set_thresholds([0.1, 0.25, 0.9, 1.0])
    assert model.thresholds == [0.1, 0.25, 0.9, 1.0]
    assert torch.allclose(model.get_thresholds(), torch.tensor([0.1, 0.25, 0.9, 1.0]))
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["model_args"]["thresholds"] == [0.1, 0.25, 0.9, 1.0]
    for loaded in (
        CPRFL.from_pretrained(tmp_path / "m"),
        timm.create_model(f"local-dir:{tmp_path / 'm'}", pretrained=True),
        create_cprfl(f"local-dir:{tmp_path / 'm'}"),
    ):
        assert loaded.thresholds == [0.1, 0.25, 0.9, 1.0]
    card = (tmp_path / "m" / "README.md").read_text()
    assert "from 0.100 to 1.000" in card


def test_constructor_and_scalar() -> None:
    assert _model(thresholds=[0.2, 0.3, 0.4, 0.5]).thresholds == [0.2, 0.3, 0.4, 0.5]
    model = _model()
    model.set_thresholds(0.7)
    assert model.thresholds == [0.7] * 4
    model.set_thresholds(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    assert model.thresholds == pytest.approx([0.1, 0.2, 0.3, 0.4])
    model.set_thresholds(None)
    assert model.thresholds is None


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ([0.5, 0.5], r"has 2 values but the model has 4 classes"),
        ([0.5, 0.5, 1.5, 0.5], r"thresholds\[2\] is 1.5; thresholds are probabilities in \[0, 1\]"),
        ([0.5, math.nan, 0.5, 0.5], r"thresholds\[1\] is nan"),
        ([0.5, "0.5", 0.5, 0.5], r"thresholds\[1\] is '0.5' \(str\), not a number"),
        ([0.5, True, 0.5, 0.5], r"thresholds\[1\] is True \(bool\)"),
        ("0.5", r"must be a number or a sequence of 4 numbers"),
        (torch.zeros(2, 2), r"1-D real tensor of 4 values, got shape \(2, 2\)"),
    ],
)
def test_bad_thresholds_are_named(values, match) -> None:
    with pytest.raises(ValueError, match=match):
        _model().set_thresholds(values)


def test_set_classes_drops_thresholds_with_a_warning(caplog) -> None:
    model = _model(thresholds=[0.2, 0.3, 0.4, 0.5])
    with caplog.at_level(logging.WARNING, logger="cprfl_zoo.model"):
        model.set_classes(["a", "b"], torch.randn(2, 16))
    assert model.thresholds is None
    assert torch.equal(model.get_thresholds(), torch.full((2,), 0.5))
    assert "thresholds belonged to the old classes" in caplog.text


def test_bad_saved_thresholds_name_the_file(tmp_path: Path) -> None:
    _model(thresholds=[0.2, 0.3, 0.4, 0.5]).save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    cfg = json.loads(path.read_text())
    cfg["model_args"]["thresholds"] = [0.2, 0.3, 0.4]
    path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config.json: model_args.thresholds has 3 values"):
        CPRFL.from_pretrained(tmp_path / "m")


def test_model_card_warns_about_softmax_and_shows_predict_first() -> None:
    card = build_model_card(_model(), repo_id="me/m")
    assert "softmax" in card and "wrong" in card
    assert card.index("model.predict(") < card.index(".sigmoid()")
    assert "Not calibrated: every class uses probability 0.5" in card


def _f1s_by_hand(probs: torch.Tensor, targets: torch.Tensor, t: list[float]) -> tuple[float, float]:
    """OF1 and CF1 (percent) of ``probs[:, c] >= t[c]`` from the definitions, in plain Python."""
    n, c = probs.shape
    pred = [[probs[i, j].item() >= t[j] for j in range(c)] for i in range(n)]
    gt = [[targets[i, j].item() == 1 for j in range(c)] for i in range(n)]
    tp = [sum(pred[i][j] and gt[i][j] for i in range(n)) for j in range(c)]
    npred = [sum(pred[i][j] for i in range(n)) for j in range(c)]
    ngt = [sum(gt[i][j] for i in range(n)) for j in range(c)]
    op, orec = sum(tp) / sum(npred), sum(tp) / sum(ngt)
    cp = sum(tp[j] / npred[j] if npred[j] else 0.0 for j in range(c)) / c
    cr = sum(tp[j] / ngt[j] for j in range(c)) / c
    return 200 * op * orec / (op + orec), 200 * cp * cr / (cp + cr)


@pytest.mark.parametrize("thresholds", [None, [0.2, 0.7, 0.45, 0.9]])
def test_card_metrics_use_the_models_thresholds_and_the_card_says_which(thresholds) -> None:
    from cprfl_zoo.model_card import card_metrics

    model = _model(thresholds=thresholds)
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(40, 4, generator=g) * 2
    targets = (torch.rand(40, 4, generator=g) < 0.4).float()
    targets[0] = 1
    got = card_metrics(model, logits, targets, train_class_counts=[150, 50, 30, 5])
    expected_of1, expected_cf1 = _f1s_by_hand(logits.sigmoid(), targets, thresholds or [0.5] * 4)
    assert got["OF1"] == pytest.approx(expected_of1) and got["CF1"] == pytest.approx(expected_cf1)
    assert set(got) == {"mAP", "head mAP", "medium mAP", "tail mAP", "OF1", "CF1"}
    assert 0 <= got["mAP"] <= 100  # percent
    card = build_model_card(model, metrics=got)
    assert "| Metric | Value (%) |" in card and f"| CF1 | {got['CF1']:.2f} |" in card
    if thresholds is None:
        assert "OF1, CF1: predictions at probability 0.5 for every class" in card
    else:
        assert "OF1, CF1: predictions at the model's calibrated per-class thresholds" in card


# ---------------------------------------------------------------------- calibration
def _brute_force_best_f1(probs: list[float], targets: list[int]) -> float:
    """Best F1 of ``prob >= t`` over every candidate threshold (each distinct score, and 'none')."""
    positives = sum(targets)
    best = 0.0
    for t in set(probs):
        tp = sum(1 for p, y in zip(probs, targets, strict=True) if p >= t and y)
        predicted = sum(1 for p in probs if p >= t)
        best = max(best, 2 * tp / (predicted + positives))
    return best


def _f1_at(probs: torch.Tensor, targets: torch.Tensor, t: float) -> float:
    pred = probs >= t
    tp = float((pred & targets.bool()).sum())
    return 2 * tp / (float(pred.sum()) + float(targets.sum()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_class_thresholds_reach_the_brute_force_best_f1(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n, c = 60, 7
    targets = (torch.rand(n, c, generator=g) < torch.linspace(0.05, 0.6, c)).long()
    targets[0, :] = 1  # every class has a positive
    logits = 2.0 * targets + torch.randn(n, c, generator=g)
    logits[:, 3] = torch.round(logits[:, 3])  # heavy ties
    probs = logits.double().sigmoid()
    thresholds, f1 = best_f1_thresholds(probs, targets.bool())
    for j in range(c):
        expected = _brute_force_best_f1(probs[:, j].tolist(), targets[:, j].tolist())
        assert f1[j].item() == pytest.approx(expected, abs=1e-12)
        assert _f1_at(probs[:, j], targets[:, j], thresholds[j].item()) == pytest.approx(expected)
        # the midpoint rule: strictly between the last kept score and the next one
        kept = probs[:, j][probs[:, j] >= thresholds[j]]
        dropped = probs[:, j][probs[:, j] < thresholds[j]]
        if len(dropped):
            assert thresholds[j] == pytest.approx((kept.min() + dropped.max()).item() / 2)


def test_calibration_result_global_threshold_and_fallback() -> None:
    g = torch.Generator().manual_seed(3)
    n, c = 80, 5
    targets = (torch.rand(n, c, generator=g) < 0.3).long()
    targets[:, 4] = 0  # no validation positive
    logits = 3.0 * targets - 1.5 + torch.randn(n, c, generator=g)
    result = calibrate_thresholds(logits, targets)
    probs = logits.double().sigmoid()
    # global: brute-force best micro F1 over the flattened scores
    expected_global = _brute_force_best_f1(probs.flatten().tolist(), targets.flatten().tolist())
    assert result.global_f1 == pytest.approx(expected_global)
    assert _f1_at(probs.flatten(), targets.flatten(), result.global_threshold) == pytest.approx(
        expected_global
    )
    assert result.fallback_classes == (4,)
    assert result.thresholds[4].item() == pytest.approx(result.global_threshold)
    assert math.isnan(result.class_f1[4])
    assert result.thresholds.dtype == torch.float32
    assert result.num_positives.tolist() == targets.sum(0).tolist()
    assert len(result.as_list()) == c
    # probabilities in, same thresholds out
    same = calibrate_thresholds(probs, targets, from_logits=False)
    assert torch.allclose(same.thresholds, result.thresholds)
    # min_positives and an explicit fallback
    few = calibrate_thresholds(logits, targets, min_positives=1000, fallback=0.9)
    assert few.fallback_classes == tuple(range(c))
    assert torch.allclose(few.thresholds, torch.full((c,), 0.9))


def test_calibrated_thresholds_beat_one_global_threshold_on_a_shifted_tail() -> None:
    """A tail class scored lower than the head: per-class thresholds recover its F1."""
    g = torch.Generator().manual_seed(4)
    n = 400
    targets = torch.zeros(n, 2, dtype=torch.long)
    targets[:200, 0] = 1
    targets[:20, 1] = 1
    logits = torch.randn(n, 2, generator=g) * 0.3
    logits[:, 0] += 2.0 * targets[:, 0]
    logits[:, 1] += 1.0 * targets[:, 1] - 2.0  # the tail class's scores sit lower
    result = calibrate_thresholds(logits, targets)
    probs = logits.sigmoid()
    tail_global = _f1_at(probs[:, 1], targets[:, 1], result.global_threshold)
    tail_class = _f1_at(probs[:, 1], targets[:, 1], result.thresholds[1].item())
    assert tail_class > tail_global + 0.3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"targets": -1}, r"targets must be multi-hot 0/1 values"),
        ({"min_positives": 0}, r"min_positives must be an int >= 1"),
        ({"fallback": 2.0}, r"fallback\[0\] is 2.0"),
        ({"scores": 3.0, "from_logits": False}, r"scores are not probabilities"),
    ],
)
def test_bad_calibration_inputs(kwargs, match) -> None:
    scores = torch.rand(6, 3)
    targets = torch.tensor([[1, 0, 0]] * 6)
    if "targets" in kwargs:
        targets = targets.clone()
        targets[0, 1] = kwargs.pop("targets")
    if "scores" in kwargs:
        scores = scores + kwargs.pop("scores")
    with pytest.raises(ValueError, match=match):
        calibrate_thresholds(scores, targets, **kwargs)


def test_validate_thresholds_accepts_numpy() -> None:
    import numpy as np

    assert validate_thresholds(np.array([0.25, 0.75]), 2) == [0.25, 0.75]
    assert DEFAULT_THRESHOLD == 0.5


# ---------------------------------------------------------------------- float32 exactness
def _prob32(logits: torch.Tensor) -> torch.Tensor:
    """The probabilities prediction compares with the thresholds: float32 sigmoid."""
    return logits.float().sigmoid()


def test_issue_example_keep_all_cut_predicts_every_sample() -> None:
    # used to report F1 1.0 and then predict [[False], [True]]: the float64 cut rounded up
    logits = torch.tensor([[0.7], [1.7]])
    result = calibrate_thresholds(logits, torch.ones(2, 1))
    assert result.class_f1[0].item() == 1.0
    assert (_prob32(logits) >= result.thresholds).all()
    assert (_prob32(logits) >= result.global_threshold).all()
    # a margin of a few float32 steps below the lowest probability, no more
    lowest = _prob32(logits).min()
    assert lowest - 1e-6 < result.thresholds[0] <= lowest


def _column_cases(seed: int, n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Columns with the hard cases: ties, logits saturating to 1.0 and 0.0, adjacent floats."""
    g = torch.Generator().manual_seed(seed)
    targets = (torch.rand(n, 8, generator=g) < 0.4).long()
    targets[0] = 1
    logits = 2.0 * targets + torch.randn(n, 8, generator=g)
    logits[:, 1] = 17.0 + 5 * torch.rand(n, generator=g)  # every probability is 1.0
    logits[::2, 2] = 20.0 + torch.rand(n // 2, generator=g)  # half saturated
    logits[:, 3] = torch.round(logits[:, 3])  # heavy ties
    targets[:, 4] = 1  # all positive: keep every sample
    base = torch.tensor(0.3).float()
    logits[:, 5] = base + torch.arange(n) * 1e-7  # neighbouring float32 values
    logits[::3, 6] = -110.0  # probability 0.0
    logits[:, 7] = logits[:, 7].double().float()
    return logits, targets


def _best_f1_float32(probs: torch.Tensor, targets: torch.Tensor) -> float:
    return _brute_force_best_f1(probs.tolist(), targets.tolist())


@pytest.mark.parametrize("seed", range(6))
def test_calibrated_thresholds_give_the_f1_they_report(seed: int) -> None:
    logits, targets = _column_cases(seed)
    result = calibrate_thresholds(logits, targets)
    probs = _prob32(logits)
    for j in range(logits.shape[1]):
        column, truth = probs[:, j], targets[:, j]
        f1 = _f1_at(column, truth, result.thresholds[j])  # float32 against float32
        assert f1 == result.class_f1[j].item(), j
        assert f1 == pytest.approx(_best_f1_float32(column, truth), abs=1e-15), j
        # the threshold separates the same samples as the lowest kept one does
        kept = column >= result.thresholds[j]
        if (~kept).any():
            assert column[~kept].max() < result.thresholds[j] <= column[kept].min()
    flat, flat_truth = probs.flatten(), targets.flatten()
    assert _f1_at(flat, flat_truth, result.global_threshold) == result.global_f1
    assert result.global_f1 == pytest.approx(_best_f1_float32(flat, flat_truth), abs=1e-15)
    assert result.global_threshold == float(torch.tensor(result.global_threshold).float())


def test_saturated_logits_tie_and_get_one_cut() -> None:
    # logits 17 and 30 both have float32 probability 1.0: no threshold separates them
    logits = torch.tensor([[30.0], [17.0], [0.0]])
    result = calibrate_thresholds(logits, torch.tensor([[1], [0], [0]]))
    assert result.class_f1[0].item() == pytest.approx(2 / 3)
    assert (_prob32(logits) >= result.thresholds).flatten().tolist() == [True, True, False]


def test_probability_inputs_are_taken_in_float32() -> None:
    probs = torch.tensor([[0.6], [0.6 + 1e-12], [0.2]], dtype=torch.float64)
    result = calibrate_thresholds(probs, torch.tensor([[0], [1], [0]]), from_logits=False)
    # equal in float32, so one group: keeping the positive keeps the negative too
    assert result.class_f1[0].item() == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", [0, 1])
def test_global_cut_equals_one_sorted_column(seed: int, monkeypatch) -> None:
    """The histogram search finds the cut a sort of the flattened column finds, bit for bit."""
    import cprfl_zoo.thresholds as thresholds_module

    logits, targets = _column_cases(seed, n=60)
    expected_t, expected_f1 = best_f1_thresholds(
        _prob32(logits).reshape(-1, 1), targets.view(-1, 1).bool()
    )
    for refine in (32, 1):  # one pass over the candidate bins, or one pass per bin
        monkeypatch.setattr(thresholds_module, "_REFINE_BINS", refine)
        result = calibrate_thresholds(logits, targets)
        assert result.global_threshold == expected_t.item()
        assert result.global_f1 == expected_f1.item()


def test_chunked_calibration_equals_unchunked(monkeypatch) -> None:
    import cprfl_zoo.metrics._chunks as chunks

    logits, targets = _column_cases(3, n=50)
    whole = calibrate_thresholds(logits, targets, min_positives=3)
    monkeypatch.setattr(chunks, "CHUNK_ELEMENTS", 7)  # one class (50 rows) per chunk
    chunked = calibrate_thresholds(logits, targets, min_positives=3)
    assert torch.equal(whole.thresholds, chunked.thresholds)
    assert torch.equal(whole.class_f1.nan_to_num(-7), chunked.class_f1.nan_to_num(-7))
    assert (whole.global_threshold, whole.global_f1) == (
        chunked.global_threshold,
        chunked.global_f1,
    )
    assert whole.fallback_classes == chunked.fallback_classes
    assert torch.equal(whole.num_positives, chunked.num_positives)


def test_a_class_with_exactly_min_positives_keeps_its_own_threshold() -> None:
    targets = torch.zeros(10, 2, dtype=torch.long)
    targets[:2, 0] = 1  # exactly two validation positives
    targets[:6, 1] = 1
    logits = torch.linspace(3, -3, 10)[:, None].repeat(1, 2)
    result = calibrate_thresholds(logits, targets, min_positives=2)
    assert result.fallback_classes == ()
    assert result.class_f1[0].item() == 1.0
    probs = _prob32(logits[:, 0])
    assert (probs >= result.thresholds[0]).tolist() == [True] * 2 + [False] * 8
    assert calibrate_thresholds(logits, targets, min_positives=3).fallback_classes == (0,)


def test_calibration_without_classes_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"shape \(4, 0\): no class to calibrate"):
        calibrate_thresholds(torch.zeros(4, 0), torch.zeros(4, 0))


@pytest.mark.parametrize(
    ("values", "match"),
    [
        # a (1, C) array used to read as one value: "has 1 values but the model has 4 classes"
        (np.full((1, 4), 0.5), r"must be a 1-D array of 4 values, got shape \(1, 4\)"),
        (np.array(0.5), r"1-D array of 4 values, got shape \(\)"),
        (torch.full((4,), 0.5, device="meta"), r"tensor on the meta device"),
        (10**400, r"thresholds\[0\] is 100000000000... \(too large for a float\)"),
        ([0.5, 0.5, 10**400, 0.5], r"thresholds\[2\] is 100000000000... \(too large"),
    ],
    ids=["row-array", "0-d-array", "meta", "huge-int", "huge-int-in-list"],
)
def test_more_bad_thresholds_are_named(values, match) -> None:
    with pytest.raises(ValueError, match=match):
        _model().set_thresholds(values)


def test_numpy_scalars_are_thresholds() -> None:
    model = _model()
    for value in (np.float32(0.25), np.float64(0.25), np.float16(0.25)):
        model.set_thresholds(value)
        assert model.thresholds == [0.25] * 4
    model.set_thresholds(np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32))
    assert model.get_thresholds().tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
