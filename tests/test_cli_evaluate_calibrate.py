"""``evaluate_logits`` and the ``evaluate`` / ``calibrate`` commands' checks (the commands' main
runs are in tests/test_predict.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import random_problem

from cprfl_zoo.cli import evaluate_logits
from cprfl_zoo.thresholds import calibrate_thresholds


def test_evaluate_logits_counts_a_probability_on_its_threshold() -> None:
    logits = torch.tensor([[0.7, -2.0], [1.7, 3.0]])
    probs = logits.float().sigmoid()
    targets = torch.tensor([[1, 0], [1, 1]])
    out = evaluate_logits(logits, targets, probs[0].clone())  # row 0 sits on the thresholds
    assert out["OP"] == pytest.approx(75.0) and out["OR"] == pytest.approx(100.0)


def test_evaluate_logits_reproduces_the_calibrated_f1() -> None:
    logits, targets = random_problem(n=70, c=6, seed=11)
    logits[:, 2] = 18.0 + torch.rand(70)  # saturated: probability 1.0 everywhere
    result = calibrate_thresholds(logits, targets)
    out = evaluate_logits(logits, targets, torch.full((6,), result.global_threshold))
    assert out["OF1"] == pytest.approx(100 * result.global_f1, abs=1e-12)


def test_evaluate_logits_chunked_equals_unchunked(monkeypatch) -> None:
    import cprfl_zoo.metrics._chunks as chunks

    logits, targets = random_problem(n=60, c=7, seed=12)
    thresholds = torch.linspace(0.2, 0.8, 7)
    counts = [500, 120, 60, 30, 10, 5, 1]
    whole = evaluate_logits(logits, targets, thresholds, counts)
    monkeypatch.setattr(chunks, "CHUNK_ELEMENTS", 9)
    assert evaluate_logits(logits, targets, thresholds, counts) == whole
