"""Prediction (model.predict, Predictor) and the predict / evaluate / calibrate commands."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_cprfl
from PIL import Image

from cprfl_zoo import CPRFL
from cprfl_zoo.cli import evaluate_logits, main
from cprfl_zoo.metrics import average_precision
from cprfl_zoo.predict import Prediction, Predictor, eval_transform, find_images

NAMES = ["cat", "dog", "zebra", "kite", "bus"]


@pytest.fixture(scope="module")
def model() -> CPRFL:
    model = tiny_cprfl(NAMES)
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 64, 64), crop_pct=1.0)
    return model


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    g = torch.Generator().manual_seed(0)
    (root / "sub").mkdir()
    for i in range(6):
        pixels = (torch.rand(40, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
        where = root / "sub" if i >= 4 else root
        Image.fromarray(pixels).save(where / f"img{i}.png")
    (root / "broken.jpg").write_bytes(b"not an image")
    (root / "notes.txt").write_text("ignored")
    return root


def _reference_probs(model: CPRFL, paths: list[Path]) -> torch.Tensor:
    transform = eval_transform(model)
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return torch.sigmoid(model(batch))


def test_predict_applies_sigmoid_and_thresholds(model: CPRFL, photos: Path) -> None:
    paths = sorted(photos.glob("img*.png"))
    probs = _reference_probs(model, paths)
    thresholds = probs.median(0).values  # a mix of kept and dropped labels
    model.set_thresholds(thresholds.tolist())
    try:
        preds = model.predict([Image.open(p) for p in paths])
    finally:
        model.set_thresholds(None)
    assert len(preds) == len(paths)
    for row, pred in enumerate(preds):
        expected = [i for i in range(len(NAMES)) if probs[row, i] >= thresholds[i]]
        assert pred.indices == expected
        assert pred.labels == [NAMES[i] for i in expected]
        assert pred.probabilities == pytest.approx(probs[row, expected].tolist(), abs=1e-6)
    # a per-call override: one number, or one per class; paths and tensors work too
    everything = model.predict(paths, thresholds=0.0)
    assert all(p.indices == list(range(len(NAMES))) for p in everything)
    assert model.predict(str(paths[0]), thresholds=[1.0] * len(NAMES))[0].labels == []
    batch = torch.stack([eval_transform(model)(Image.open(p).convert("RGB")) for p in paths])
    assert [p.indices for p in model.predict(batch, thresholds=0.5)] == [
        [i for i in range(len(NAMES)) if probs[r, i] >= 0.5] for r in range(len(paths))
    ]


def test_predict_keeps_training_mode_and_rejects_bad_input(model: CPRFL) -> None:
    model.train()
    try:
        model.predict(torch.zeros(1, 3, 64, 64))
        assert model.training
    finally:
        model.eval()
    with pytest.raises(TypeError, match=r"images\[0\] is int, not a PIL image or a path"):
        model.predict([3])
    with pytest.raises(ValueError, match=r"thresholds has 2 values but the model has 5 classes"):
        model.predict(torch.zeros(1, 3, 64, 64), thresholds=[0.5, 0.5])


def test_find_images(photos: Path) -> None:
    found = find_images([photos])
    assert [p.name for p in found] == [
        "broken.jpg",
        "img0.png",
        "img1.png",
        "img2.png",
        "img3.png",
        "img4.png",
        "img5.png",
    ]
    assert find_images([str(photos / "img*.png"), photos / "img0.png"]) == sorted(
        photos.glob("img*.png")
    )
    with pytest.raises(FileNotFoundError, match=r"nothing\.png: no such file"):
        find_images([photos / "nothing.png"])


def test_predictor_skips_unreadable_files_by_name(model: CPRFL, photos: Path, caplog) -> None:
    paths = find_images([photos])
    predictor = Predictor(model, batch_size=3, num_workers=0, progress=False)
    preds, failures = predictor.predict_files(paths, thresholds=0.5)
    assert [f[0] for f in failures] == [str(photos / "broken.jpg")]
    assert "cannot identify image file" in failures[0][1]
    assert "broken.jpg" in caplog.text
    good = [p for p in paths if p.suffix == ".png"]
    assert [p.source for p in preds] == [str(p) for p in good]
    probs = _reference_probs(model, good)
    for row, pred in enumerate(preds):
        assert pred.indices == (probs[row] >= 0.5).nonzero().flatten().tolist()
    assert isinstance(predictor([Image.open(good[0])])[0], Prediction)
    # the deploy module predicts the same labels
    deployed, _ = Predictor(model.deploy(), progress=False).predict_files(good, thresholds=0.5)
    assert [p.indices for p in deployed] == [p.indices for p in preds]


# ---------------------------------------------------------------------- commands
@pytest.fixture(scope="module")
def saved(model: CPRFL, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model.save_pretrained(tmp_path_factory.mktemp("saved") / "model")


def test_predict_command_writes_jsonl_and_csv(saved: Path, photos: Path, tmp_path, capsys) -> None:
    out = tmp_path / "preds.jsonl"
    argv = ["predict", str(saved), str(photos), "--output", str(out), "--workers", "0"]
    assert main([*argv, "--threshold", "0.5", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"skipped {photos / 'broken.jpg'}" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and rows[0]["image"] == str(photos / "img0.png")
    model = CPRFL.from_pretrained(saved).eval()
    probs = _reference_probs(model, [photos / "img0.png"])[0]
    assert rows[0]["indices"] == (probs >= 0.5).nonzero().flatten().tolist()
    assert rows[0]["labels"] == [NAMES[i] for i in rows[0]["indices"]]
    out_csv = tmp_path / "preds.csv"
    assert main(["predict", f"local-dir:{saved}", str(photos / "**" / "img*.png"), "--output",
                 str(out_csv), "--workers", "0", "--threshold", "0"]) == 0  # fmt: skip
    table = list(csv.DictReader(out_csv.open()))
    assert len(table) == 6 and table[0]["labels"] == ";".join(NAMES)


def test_predict_command_errors(saved: Path, photos: Path, tmp_path, capsys) -> None:
    assert main(["predict", str(saved), str(tmp_path / "none.png")]) == 1
    assert "none.png: no such file or folder" in capsys.readouterr().err
    assert main(["predict", str(saved), str(photos), "--output", "x.txt"]) == 1
    assert "use a .jsonl or .csv" in capsys.readouterr().err
    assert main(["predict", str(saved), str(photos / "broken.jpg"), "--workers", "0"]) == 1
    assert "none of the 1 images could be read" in capsys.readouterr().err


@pytest.fixture(scope="module")
def image_list(photos: Path) -> Path:
    g = torch.Generator().manual_seed(1)
    lines = []
    for i in range(6):
        name = f"sub/img{i}.png" if i >= 4 else f"img{i}.png"
        ids = (torch.rand(len(NAMES), generator=g) < 0.5).nonzero().flatten().tolist()
        lines.append(" ".join([name, *map(str, ids)]))
    path = photos.parent / "val.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_evaluate_and_calibrate_commands(
    saved: Path, photos: Path, image_list: Path, tmp_path, capsys
) -> None:
    freq = tmp_path / "freq.txt"
    freq.write_text("500\n150\n50\n30\n5\n")
    out = tmp_path / "metrics.json"
    base = [str(saved), str(image_list), "--images", str(photos), "--workers", "0"]
    assert main(["evaluate", *base, "--class-freq", str(freq), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| mAP_tail |" in printed and "uncalibrated 0.5 thresholds" in printed
    metrics = json.loads(out.read_text())["metrics"]
    # independent reference: per-class AP by sklearn-free ranking, F1 at 0.5 by counting
    model = CPRFL.from_pretrained(saved).eval()
    paths = [photos / line.split()[0] for line in image_list.read_text().splitlines()]
    probs = _reference_probs(model, paths)
    targets = torch.zeros(len(paths), len(NAMES))
    for r, line in enumerate(image_list.read_text().splitlines()):
        for i in line.split()[1:]:
            targets[r, int(i)] = 1
    ap = average_precision(probs, targets)
    assert metrics["mAP"] == pytest.approx(100 * float(ap[~ap.isnan()].mean()), abs=1e-3)
    pred = probs >= 0.5
    tp, npred, ngt = (pred & targets.bool()).sum(), pred.sum(), targets.sum()
    op, orec = float(tp / npred) if npred else 0.0, float(tp / ngt)
    of1 = 2 * op * orec / (op + orec) if op + orec else 0.0
    assert metrics["OF1"] == pytest.approx(100 * of1, abs=1e-3)
    assert {"mAP_head", "mAP_medium", "mAP_tail", "CF1", "CP", "CR", "OP", "OR"} <= set(metrics)

    calibrated = tmp_path / "calibrated"
    assert main(["calibrate", *base, "--output", str(calibrated)]) == 0
    assert "calibrated 5 thresholds on 6 images" in capsys.readouterr().out
    loaded = CPRFL.from_pretrained(calibrated)
    assert loaded.thresholds is not None and len(loaded.thresholds) == 5
    assert main(["evaluate", str(calibrated), *base[1:], "--output", str(out)]) == 0
    assert "calibrated per-class thresholds" in capsys.readouterr().out
    # calibrated on this very list: each evaluable class's F1 cannot be lower than at 0.5
    after = json.loads(out.read_text())["metrics"]
    assert after["OF1"] >= of1 * 100 - 1e-6 or after["CF1"] >= metrics["CF1"] - 1e-6


def test_evaluate_bad_class_freq(saved: Path, photos: Path, image_list: Path, tmp_path, capsys):
    freq = tmp_path / "freq.txt"
    freq.write_text("5\n6\n")
    argv = ["evaluate", str(saved), str(image_list), "--images", str(photos), "--workers", "0"]
    assert main([*argv, "--class-freq", str(freq)]) == 1
    assert "2 counts for a model with 5 classes" in capsys.readouterr().err
    freq.write_text("[5, 6, -1, 2, 3]")
    assert main([*argv, "--class-freq", str(freq)]) == 1
    assert "entry 3 is -1, not a count >= 0" in capsys.readouterr().err


def test_evaluate_logits_per_class_thresholds() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.1, 0.2], [-3.0, 1.0]])
    targets = torch.tensor([[1, 0], [0, 1], [0, 1]])
    # class 0 at 0.9: only row 0 (sigmoid 0.88 < 0.9: nothing); class 1 at 0.5: rows 1, 2
    out = evaluate_logits(logits, targets, torch.tensor([0.85, 0.5]))
    assert out["OP"] == pytest.approx(100.0) and out["OR"] == pytest.approx(100.0)
    out = evaluate_logits(logits, targets, torch.tensor([0.9, 0.5]))
    assert out["OR"] == pytest.approx(100 * 2 / 3) and out["CR"] == pytest.approx(50.0)
