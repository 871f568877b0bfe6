"""ONNX and torch.export of the deploy module: symbolic batch, same logits, metadata, CLI."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import TINY_HEAD

from cprfl_zoo.cli import main
from cprfl_zoo.export import (
    METADATA_FILE,
    export_metadata,
    export_model,
    export_onnx,
    export_program,
    export_pt2,
    load_pt2,
    read_metadata,
)
from cprfl_zoo.model import CPRFL

NAMES = ["person", "café", "traffic light", "zebra"]
# (backbone, constructor kwargs, export input size)
BACKBONES = {
    "cnn": ("test_resnet", {}, (3, 64, 64)),
    "vit": ("test_vit", {"img_size": 64}, (3, 64, 64)),
}


def make(kind: str) -> CPRFL:
    backbone, kwargs, _ = BACKBONES[kind]
    torch.manual_seed(0)
    model = CPRFL(backbone, NAMES, torch.randn(len(NAMES), 16), **TINY_HEAD, **kwargs)
    model.set_thresholds([0.3, 0.4, 0.5, 0.6])
    return model.eval()


def batch(kind: str, n: int, seed: int = 0) -> torch.Tensor:
    size = BACKBONES[kind][2]
    return torch.randn(n, *size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def onnx_export(request, tmp_path_factory) -> tuple[str, CPRFL, Path]:
    kind = request.param
    model = make(kind)
    path = tmp_path_factory.mktemp("onnx") / f"{kind}.onnx"
    export_onnx(model, path, input_size=BACKBONES[kind][2])
    return kind, model, path


def test_onnx_runs_in_onnxruntime_at_batch_1_and_3(onnx_export):
    kind, model, path = onnx_export
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "images" and out.name == "logits"
    assert inp.shape == ["batch", *BACKBONES[kind][2]] and out.shape == ["batch", len(NAMES)]
    deployed = model.deploy()
    for n in (1, 3):
        x = batch(kind, n, seed=n)
        (logits,) = session.run(None, {"images": x.numpy()})
        assert logits.shape == (n, len(NAMES))
        with torch.no_grad():
            expected = model(x)
        np.testing.assert_allclose(logits, deployed(x).numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_onnx_carries_names_activation_thresholds_and_preprocessing(onnx_export):
    kind, model, path = onnx_export
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version >= 17
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["class_names"]) == NAMES  # UTF-8 kept
    assert props["activation"] == "sigmoid" and props["output"] == "logits"
    assert json.loads(props["thresholds"]) == pytest.approx([0.3, 0.4, 0.5, 0.6])
    prep = json.loads(props["preprocessing"])
    assert prep["input_size"] == list(BACKBONES[kind][2])
    assert prep["mean"] == list(model.pretrained_cfg["mean"])
    assert prep["std"] == list(model.pretrained_cfg["std"])
    meta = read_metadata(path)
    assert meta["class_names"] == NAMES and meta["preprocessing"] == prep
    assert "sigmoid" in proto.doc_string


def test_pt2_round_trip_with_a_symbolic_batch(tmp_path: Path):
    model = make("cnn")
    deployed = model.deploy()
    program = export_program(deployed, input_size=(3, 64, 64))
    (images,) = [n for n in program.graph.nodes if n.op == "placeholder" and n.name == "x"]
    assert isinstance(images.meta["val"].shape[0], torch.SymInt)  # not a baked-in int
    path = export_pt2(deployed, tmp_path / "model.pt2", input_size=(3, 64, 64))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt2"]  # no temporary left behind
    loaded, meta = load_pt2(path)
    assert meta == read_metadata(path)
    with zipfile.ZipFile(path) as archive:  # the metadata is a plain JSON file in the archive
        (name,) = [n for n in archive.namelist() if n.endswith(METADATA_FILE)]
        assert json.loads(archive.read(name))["activation"] == "sigmoid"
    assert meta["class_names"] == NAMES and meta["activation"] == "sigmoid"
    assert meta == json.loads(json.dumps(meta))
    assert meta["thresholds"] == pytest.approx(deployed.thresholds.tolist())
    for n in (1, 3):
        x = batch("cnn", n, seed=10 + n)
        torch.testing.assert_close(loaded.module()(x), deployed(x), rtol=1e-5, atol=1e-6)


def test_export_errors_are_clear(tmp_path: Path):
    model = make("cnn")
    deployed = model.deploy()
    with pytest.raises(ValueError, match="opset must be at least 17"):
        export_onnx(deployed, tmp_path / "m.onnx", opset=16)
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_model(deployed, tmp_path / "m.tflite", "tflite")
    with pytest.raises(ValueError, match="has 1 channels but the model expects 3"):
        export_metadata(deployed, input_size=(1, 64, 64))
    deployed.pretrained_cfg = {}
    with pytest.raises(ValueError, match="pretrained_cfg has no input_size; pass input_size"):
        export_metadata(deployed)
    assert json.loads(export_metadata(deployed, (32, 32))["preprocessing"]) == {
        "input_size": [3, 32, 32]
    }
    with pytest.raises(TypeError, match="needs a CPRFL model or its deploy"):
        export_pt2(torch.nn.Linear(2, 2), tmp_path / "m.pt2")
    assert not list(tmp_path.iterdir())


def test_cli_exports_a_saved_model(tmp_path: Path, capsys):
    model = make("cnn")
    folder = model.save_pretrained(tmp_path / "saved")
    out = tmp_path / "out" / "model.pt2"
    assert main(["export", str(folder), "--output", str(out), "--input-size", "64", "64"]) == 0
    assert f"as pt2: {out}" in capsys.readouterr().out
    loaded, meta = load_pt2(out)
    assert meta["class_names"] == NAMES and meta["preprocessing"]["input_size"] == [3, 64, 64]
    # calibrated thresholds travel through the saved config
    assert meta["thresholds"] == pytest.approx([0.3, 0.4, 0.5, 0.6])
    x = batch("cnn", 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module()(x), model(x), rtol=1e-4, atol=1e-5)

    onnx_out = tmp_path / "model.bin"
    args = ["export", f"local-dir:{folder}", "--format", "onnx", "--output", str(onnx_out)]
    assert main([*args, "--input-size", "3", "64", "64"]) == 0
    assert read_metadata_onnx(onnx_out)["class_names"] == json.dumps(NAMES, ensure_ascii=False)

    assert main(["export", str(folder), "--output", str(tmp_path / "m.txt")]) == 1
    assert "pass --format onnx|pt2 or use a .onnx / .pt2 name" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), "--output", str(out)]) == 1
    assert "not a folder; give a saved model folder" in capsys.readouterr().err


def read_metadata_onnx(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_docs_deploy_and_export_examples(tmp_path: Path, monkeypatch):
    """The calls of docs/src/predicting.md "Deploying and exporting", on a tiny saved model."""
    import timm.data

    from cprfl_zoo import create_cprfl

    monkeypatch.chdir(tmp_path)
    make("cnn").save_pretrained("out/cprfl-coco-lt")
    images = batch("cnn", 2)

    model = create_cprfl("local-dir:out/cprfl-coco-lt").eval()
    deployed = model.deploy()
    with torch.inference_mode():
        logits = deployed(images)
    probs = torch.sigmoid(logits)
    labels = probs >= deployed.thresholds
    assert labels.shape == (2, len(NAMES)) and labels.dtype == torch.bool
    with torch.no_grad():
        torch.testing.assert_close(logits, model(images), rtol=1e-4, atol=1e-5)
    data = timm.data.resolve_data_config(model=deployed)
    assert data["input_size"] == model.pretrained_cfg["input_size"]
    assert data["mean"] == model.pretrained_cfg["mean"]

    export_onnx(deployed, "cprfl.onnx")
    export_pt2(deployed, "cprfl.pt2")
    program, meta = load_pt2("cprfl.pt2")
    size = tuple(model.pretrained_cfg["input_size"])
    images = torch.randn(3, *size)
    logits = program.module()(images)
    assert logits.shape == (3, len(NAMES)) and meta["input_name"] == "images"

    session = ort.InferenceSession("cprfl.onnx", providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    names, thresholds = json.loads(meta["class_names"]), json.loads(meta["thresholds"])
    (logits,) = session.run(None, {"images": images.numpy()})
    probs = 1 / (1 + np.exp(-logits))
    labels = [
        [n for n, p, t in zip(names, row, thresholds, strict=True) if p >= t] for row in probs
    ]
    assert names == NAMES
    expected = torch.sigmoid(deployed(images)) >= deployed.thresholds
    assert labels == [[n for n, y in zip(NAMES, row, strict=True) if y] for row in expected]
    assert read_metadata("cprfl.onnx")["thresholds"] == pytest.approx(thresholds)
