"""``evaluate_logits`` and the ``evaluate`` / ``calibrate`` commands' checks (the commands' main
runs are in tests/test_predict.py)."""

from __future__ import annotations

import shutil

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


# ---------------------------------------------------------------------- calibrate --output
@pytest.fixture(scope="module")
def saved_and_images(tmp_path_factory: pytest.TempPathFactory):
    """A tiny saved model and a two-image list whose images have no label at all."""
    from conftest import tiny_cprfl
    from PIL import Image

    root = tmp_path_factory.mktemp("calibrate")
    model = tiny_cprfl(["cat", "dog"])
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 32, 32), crop_pct=1.0)
    saved = model.save_pretrained(root / "model")
    (root / "images").mkdir()
    for i in range(2):
        Image.new("RGB", (40, 40), (60 * i, 90, 30)).save(root / "images" / f"{i}.png")
    (root / "unlabelled.txt").write_text("0.png\n1.png\n")
    return saved, root


def _calibrate(saved, root, output, *extra):
    from cprfl_zoo.cli import main

    argv = ["calibrate", str(saved), str(root / "unlabelled.txt"), "--images", str(root / "images")]
    return main([*argv, "--workers", "0", "--no-progress", "--output", str(output), *extra])


def test_calibrate_without_positives_saves_nothing(saved_and_images, tmp_path, capsys) -> None:
    # used to save 0.5 everywhere as a "calibrated" model (OF1 nan) that evaluate then trusted
    saved, root = saved_and_images
    assert _calibrate(saved, root, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "no image has a positive label" in err and "nothing was saved" in err
    assert not (tmp_path / "out").exists()


def test_calibrate_output_rules(saved_and_images, tmp_path, capsys) -> None:
    saved, root = saved_and_images
    before = {p.name: p.read_bytes() for p in saved.iterdir()}
    cases = {
        saved: "inside the folder of MODEL",  # over the model it reads
        saved / "sub": "inside the folder of MODEL",
        root: "holds files but no saved model",  # a data folder
        root / "unlabelled.txt": "is a file; give a folder",
    }
    other = tmp_path / "other"
    shutil.copytree(saved, other)
    cases[other] = "already holds a saved model; pass --overwrite"
    for output, message in cases.items():
        assert _calibrate(saved, root, output) == 1, output
        assert message in capsys.readouterr().err
    # --overwrite replaces another saved model, never MODEL's folder or a data folder
    assert _calibrate(saved, root, saved, "--overwrite") == 1
    assert _calibrate(saved, root, root, "--overwrite") == 1
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before
    assert _calibrate(saved, root, other, "--overwrite") == 1  # refused later: no positives
    assert "no image has a positive label" in capsys.readouterr().err
