"""Odd inputs to prediction: empty batches, wrong types, 16-bit files, thresholds changed after a
Predictor is built; and the predict command's file names, output path, device and image errors
(cprfl_zoo/predict.py, the predict path of cprfl_zoo/cli/inference.py, cprfl_zoo/cli/_common.py).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_cprfl
from PIL import Image

from cprfl_zoo import CPRFL
from cprfl_zoo.cli import main
from cprfl_zoo.predict import Predictor, eval_transform

NAMES = ["cat", "dog", "zebra"]


@pytest.fixture(scope="module")
def model() -> CPRFL:
    model = tiny_cprfl(NAMES)
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 32, 32), crop_pct=1.0)
    return model


@pytest.fixture(scope="module")
def saved(model: CPRFL, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model.save_pretrained(tmp_path_factory.mktemp("saved") / "model")


def _probs(model: CPRFL, image: Image.Image) -> torch.Tensor:
    with torch.no_grad():
        return model(eval_transform(model)(image)[None]).sigmoid()[0]


def test_an_empty_batch_predicts_nothing(model: CPRFL) -> None:
    assert model.predict(torch.zeros(0, 3, 32, 32)) == []  # was a crash inside torch.cat
    assert model.predict([]) == []
    assert model.predict(torch.zeros(0, 3, 32, 32), thresholds=0.5) == []
    with pytest.raises(ValueError, match=r"thresholds has 2 values but the model has 3"):
        model.predict(torch.zeros(0, 3, 32, 32), thresholds=[0.5, 0.5])  # still checked


@pytest.mark.parametrize(
    ("images", "error", "message"),
    [
        (None, TypeError, r"images must be a \(B, C, H, W\) .* got NoneType"),
        (b"photo.png", TypeError, r"got bytes: give a path as str \(os\.fsdecode\(path\)\)"),
        (bytearray(b"x"), TypeError, r"got bytearray"),
        (np.zeros((1, 3, 32, 32), np.float32), TypeError, r"an image path .* got ndarray"),
        ([b"photo.png"], TypeError, r"images\[0\] is bytes, not a PIL image or a path"),
        (torch.zeros(3, 32), ValueError, r"\(B, C, H, W\) or \(C, H, W\), got shape \(3, 32\)"),
    ],
)
def test_unsupported_inputs_say_what_is_accepted(model: CPRFL, images, error, message) -> None:
    with pytest.raises(error, match=message):
        model.predict(images)


def test_sixteen_bit_and_transparent_files_are_scored_as_displayed(model, tmp_path) -> None:
    Image.fromarray(np.full((8, 8), 30000, dtype=np.uint16)).save(tmp_path / "g16.png")
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red, fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    grey = _probs(model, Image.new("RGB", (8, 8), (117, 117, 117)))
    white = _probs(model, Image.new("RGB", (8, 8), (255, 255, 255)))
    assert not torch.allclose(grey, white)  # the test can tell a blank image from the grey one
    paths = [tmp_path / "g16.png", tmp_path / "clear.png"]
    for preds in (
        model.predict(paths, thresholds=0.0),
        model.predict([Image.open(p) for p in paths], thresholds=0.0),
        Predictor(model, progress=False).predict_files(paths, thresholds=0.0)[0],
    ):
        torch.testing.assert_close(torch.tensor(preds[0].probabilities), grey)
        torch.testing.assert_close(torch.tensor(preds[1].probabilities), white)


def test_a_file_that_cannot_be_decoded_is_named(model: CPRFL, tmp_path: Path) -> None:
    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=rf"cannot read image {tmp_path / 'cut.png'}: "):
        model.predict([tmp_path / "cut.png"])
    preds, failures = Predictor(model, progress=False).predict_files([tmp_path / "cut.png"])
    assert preds == [] and failures[0][0] == str(tmp_path / "cut.png")
    assert failures[0][1].startswith("OSError: ") and "cut.png" not in failures[0][1]


def test_predictor_reads_the_model_thresholds_at_call_time(model: CPRFL) -> None:
    batch = torch.zeros(2, 3, 32, 32)
    predictor = Predictor(model, progress=False)
    fixed = Predictor(model, thresholds=0.0, progress=False)
    try:
        model.set_thresholds(1.0)  # after the predictors were built
        assert [p.labels for p in predictor(batch)] == [[], []]
        assert predictor.thresholds.tolist() == [1.0] * 3
        model.set_thresholds(0.0)
        assert [p.labels for p in predictor(batch)] == [NAMES, NAMES]
        model.set_thresholds(1.0)
        assert [p.labels for p in fixed(batch)] == [NAMES, NAMES]  # its own thresholds stay
        assert [p.labels for p in predictor(batch, thresholds=0.0)] == [NAMES, NAMES]
    finally:
        model.set_thresholds(None)
    assert predictor.thresholds.tolist() == [0.5] * 3


# ---------------------------------------------------------------------- the predict command
@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    root.mkdir()
    for i, colour in enumerate([(10, 200, 30), (250, 250, 0)]):
        Image.new("RGB", (20, 20), colour).save(root / f"img{i}.png")
    return root


def test_predict_output_that_is_a_folder_fails_before_running(photos, tmp_path, capsys) -> None:
    folder = tmp_path / "preds.jsonl"
    folder.mkdir()
    # MODEL does not exist: the output is checked first, before anything is loaded or run
    assert main(["predict", str(tmp_path / "no-model"), str(photos), "--output", str(folder)]) == 1
    assert f"--output {folder} is a folder; give a file name" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = blocker / "sub" / "preds.csv"
    assert main(["predict", str(tmp_path / "no-model"), str(photos), "--output", str(out)]) == 1
    assert f"--output {out}: {blocker} is a file, not a folder" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform != "linux", reason="file names of arbitrary bytes: Linux only")
def test_predict_writes_file_names_that_are_not_utf8(saved, photos, tmp_path, capsys) -> None:
    raw = os.fsencode(photos) + b"/caf\xe9.png"  # Latin-1, not UTF-8
    os.rename(photos / "img1.png", raw)
    odd = os.fsdecode(raw)
    out_csv = tmp_path / "preds.csv"
    argv = ["predict", str(saved), str(photos), "--workers", "0", "--no-progress"]
    assert main([*argv, "--output", str(out_csv)]) == 0  # was a UnicodeEncodeError, no name
    captured = capsys.readouterr()
    assert "1 images predicted" not in captured.out and "2 images predicted" in captured.out
    assert "1 file names are not UTF-8" in captured.err and "caf\\xe9.png" in captured.err
    rows = list(csv.DictReader(out_csv.open(encoding="utf-8")))
    assert [r["image"] for r in rows] == [str(photos / "caf\\xe9.png"), str(photos / "img0.png")]
    out_jsonl = tmp_path / "preds.jsonl"
    assert main([*argv, "--output", str(out_jsonl)]) == 0
    capsys.readouterr()
    names = [json.loads(line)["image"] for line in out_jsonl.read_text("ascii").splitlines()]
    assert os.fsencode(names[0]) == raw  # the exact bytes come back
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(json.dumps(odd) + "\t") and len(lines) == 2


@pytest.mark.skipif(sys.platform == "win32", reason="Windows file names cannot hold a newline")
def test_predict_prints_one_line_per_image_whatever_the_name(
    saved, photos, monkeypatch, capsys
) -> None:
    (photos / "img1.png").rename(photos / "two\nlines.png")
    (photos / "img0.png").rename(photos / '"quoted".png')
    monkeypatch.chdir(photos)  # relative names: the second starts with a quote
    argv = ["predict", str(saved), ".", "--workers", "0", "--threshold", "0"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert [line.split("\t")[0] for line in lines] == ['"\\"quoted\\".png"', '"two\\nlines.png"']
    assert [json.loads(line.split("\t")[0]) for line in lines] == ['"quoted".png', "two\nlines.png"]
    assert all(line.split("\t")[1].startswith("cat 0.") for line in lines)  # --threshold 0


def test_predict_plain_names_are_printed_as_they_are(saved, photos, capsys) -> None:
    (photos / "img1.png").rename(photos / "café 1.png")
    assert main(["predict", str(saved), str(photos), "--workers", "0"]) == 0
    names = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert names == [str(photos / "café 1.png"), str(photos / "img0.png")]


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("meta", "argument --device: 'meta' tensors hold no values"),
        ("gpu0", "argument --device: expected a torch device (cpu, cuda, cuda:1, mps, ...), got"),
    ],
)
@pytest.mark.parametrize("command", ["predict", "evaluate", "embed"])
def test_bad_devices_are_usage_errors(command: str, device: str, message: str, capsys) -> None:
    argv = {
        "predict": ["predict", "m", "a.jpg"],
        "evaluate": ["evaluate", "m", "l.txt", "--images", "r"],
        "embed": ["embed", "--classes", "voc-lt"],
    }[command]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--device", device])
    assert info.value.code == 2
    assert f"cprfl-zoo {command}: error: {message}" in capsys.readouterr().err


def test_an_unavailable_device_is_a_usage_error(capsys) -> None:
    device = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    with pytest.raises(SystemExit) as info:
        main(["predict", "m", "a.jpg", "--device", device])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --device: device '{device}' is not available here (" in err
    assert len(err.strip().splitlines()[-1]) < 300


def test_a_cuda_ordinal_past_the_last_gpu_is_a_usage_error(monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(SystemExit) as info:
        main(["predict", "m", "a.jpg", "--device", "cuda:2"])
    assert info.value.code == 2
    assert (
        "argument --device: device 'cuda:2' is not available here (2 CUDA device(s): cuda:0 to "
        "cuda:1)"
    ) in capsys.readouterr().err


def test_predict_command_pixel_limit(saved, photos, monkeypatch, capsys) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after
    Image.new("RGB", (30, 20)).save(photos / "big.png")  # 600 pixels; the others have 400
    argv = ["predict", str(saved), str(photos), "--workers", "0", "--max-image-pixels", "500"]
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow's, before the refusal
        assert main(argv) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2
    assert (
        f"skipped {photos / 'big.png'}: 30 x 20 = 600 pixels is more than the limit of 500 "
        "(PIL.Image.MAX_IMAGE_PIXELS); refused before decoding"
    ) in captured.err
    assert main([*argv[:-1], "0"]) == 0  # 0: no limit
    assert Image.MAX_IMAGE_PIXELS is None
    assert len(capsys.readouterr().out.splitlines()) == 3


# ---------------------------------------------------------------------- shared image errors
@pytest.fixture
def image_list(photos: Path) -> Path:
    (photos / "list.txt").write_text("img0.png 0\nimg1.png 1 2\n")
    return photos / "list.txt"


def test_a_worker_error_is_one_line_naming_the_file(saved, photos, image_list, capsys) -> None:
    data = (photos / "img1.png").read_bytes()
    (photos / "img1.png").write_bytes(data[: len(data) // 2])
    argv = ["evaluate", str(saved), str(image_list), "--images", str(photos), "--no-progress"]
    assert main([*argv, "--workers", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"cprfl-zoo evaluate: error: cannot read image {photos / 'img1.png'} (listed at "
        f"{image_list}:2): OSError: image file is truncated (in DataLoader worker process 0)"
    ]


def test_a_decompression_bomb_is_an_error_not_a_traceback(
    saved, photos, image_list, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    argv = ["evaluate", str(saved), str(image_list), "--images", str(photos), "--workers", "0"]
    # 400 pixels, more than twice the limit: Pillow's DecompressionBombError (not an OSError)
    assert main([*argv, "--max-image-pixels", "100", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(
        f"cprfl-zoo evaluate: error: cannot read image {photos / 'img0.png'} (listed at "
        f"{image_list}:1): Image size (400 pixels) exceeds limit of 200 pixels"
    )
    assert err[0].endswith("--max-image-pixels N on the cprfl-zoo command line")
