"""ONNX and torch.export of the deploy module: symbolic batch, same logits, metadata, CLI."""

from __future__ import annotations

import json
import pickle
import warnings
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
    with pytest.raises(ValueError, match="opset 16 is not supported: the ONNX export takes 17 to"):
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
    assert main(["export", str(tmp_path / "nope"), "--output", str(tmp_path / "new.pt2")]) == 1
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


# ---------------------------------------------------------------------- hostile files
class _Planted:
    """Unpickling this creates the file ``path``: the test's stand-in for running a command."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def pt2_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("pt2") / "model.pt2"
    export_pt2(make("cnn"), path, input_size=(3, 32, 32))
    return path.read_bytes()


def _rewrite(data: bytes, change=lambda name, raw: raw, extra=()) -> bytes:
    """The archive with each entry passed through ``change`` and ``extra`` entries added."""
    import io

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, change(name.split("/", 1)[1], src.read(name)))
        for name, raw in extra:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # zipfile warns of a duplicate name: the test's
                dst.writestr(name, raw)
    return out.getvalue()


def _pickled_sample_inputs(marker):
    def change(name, raw):
        return (
            pickle.dumps(_Planted(marker), protocol=2)
            if name == "data/sample_inputs/model.pt"
            else raw
        )

    return change


def _pickled_weight(marker):
    def change(name, raw):
        if name == "data/weights/model_weights_config.json":
            config = json.loads(raw)
            config["config"]["backbone.conv1.0.weight"]["use_pickle"] = True
            return json.dumps(config).encode()
        return (
            pickle.dumps(_Planted(marker), protocol=2) if name == "data/weights/weight_0" else raw
        )

    return change


def _evaluated_expression(marker):
    symbol = "Symbol('s77', positive=True, integer=True)"

    def change(name, raw):
        if name == "models/model.json":
            assert symbol.encode() in raw
            return raw.replace(symbol.encode(), f"open('{marker}', 'w') and {symbol}".encode())
        return raw

    return change


@pytest.mark.parametrize(
    ("attack", "refusal"),
    [
        (_pickled_sample_inputs, r"sample inputs do not load with torch.load\(weights_only=True"),
        (_pickled_weight, r"'backbone.conv1.0.weight' is stored with pickle"),
        (_evaluated_expression, r"symbolic expression \"open\(.*not shape arithmetic"),
    ],
)
def test_a_crafted_pt2_runs_no_code(attack, refusal, pt2_bytes, tmp_path: Path):
    # each of these ran the planted call inside torch.export.load before (created the marker)
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt2"
    path.write_bytes(_rewrite(pt2_bytes, attack(marker)))
    assert read_metadata(path)["class_names"] == NAMES  # read from the zip, nothing loaded
    with pytest.raises(ValueError, match=refusal):
        load_pt2(path)
    assert not marker.exists()
    bin_path = tmp_path / "evil.bin"  # any name: a zip is read as .pt2, never loaded
    bin_path.write_bytes(path.read_bytes())
    assert read_metadata(bin_path)["class_names"] == NAMES
    assert not marker.exists()


def test_pt2_payloads_torch_would_run_are_refused(pt2_bytes, tmp_path: Path):
    def constants(name, raw):
        if name != "data/constants/model_constants_config.json":
            return raw
        entry = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": False}
        return json.dumps({"config": {"obj": entry}}).encode()

    def guards(name, raw):
        if name != "models/model.json":
            return raw
        program = json.loads(raw)
        program["guards_code"] = ["__import__('os').getpid() == 0"]
        return json.dumps(program).encode()

    cases = {
        "opaque": (
            _rewrite(pt2_bytes, constants, [("archive/data/constants/opaque_obj_0", b"x")]),
            r"'obj' is 'opaque_obj_0', not a plain tensor",
        ),
        "guards": (_rewrite(pt2_bytes, guards), r"carries guard code"),
        "aoti": (
            _rewrite(pt2_bytes, extra=[("archive/data/aotinductor/model/model.so", b"\x7fELF")]),
            r"unexpected entries \['data/aotinductor/model/model.so'\]",
        ),
        "legacy": (
            _rewrite(pt2_bytes, extra=[("archive/data/weights/model.pt", b"x")]),
            r"unexpected entries \['data/weights/model.pt'\]",
        ),
        "twice": (
            _rewrite(pt2_bytes, extra=[("archive/extra/cprfl_zoo.json", b"{}")]),
            r"lists an entry twice",
        ),
    }
    for name, (data, refusal) in cases.items():
        path = tmp_path / f"{name}.pt2"
        path.write_bytes(data)
        with pytest.raises(ValueError, match=refusal):
            load_pt2(path)


def test_read_metadata_decides_by_content_and_names_the_file(onnx_export, tmp_path: Path):
    _, _, onnx_path = onnx_export
    upper = tmp_path / "MODEL.ONNX"
    upper.write_bytes(onnx_path.read_bytes())
    assert read_metadata(upper)["class_names"] == NAMES
    garbage = tmp_path / "garbage.pt2"
    garbage.write_bytes(b"\x00not a model" * 10)
    with pytest.raises(ValueError, match=r"garbage.pt2: not a torch.export .pt2 file"):
        read_metadata(garbage)
    with pytest.raises(ValueError, match=r"garbage.pt2: not a torch.export .pt2 file"):
        load_pt2(garbage)
    other = tmp_path / "garbage.bin"
    other.write_bytes(b"\xff\xfe\xfd garbage")
    with pytest.raises(ValueError, match=r"garbage.bin: neither an ONNX model nor a .pt2"):
        read_metadata(other)
    plain_zip = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain_zip, "w") as archive:
        archive.writestr("a/b.txt", "hello")
    with pytest.raises(ValueError, match=r"plain.zip is a torch.export file without cprfl_zoo"):
        read_metadata(plain_zip)


def test_export_input_size_and_opset_checks(tmp_path: Path):
    deployed = make("cnn").deploy()
    # (159.7, 160.2) used to export at 159 x 160 without a word
    for size in ((159.7, 160.2), (3, 64.0, 64), ("64", "64"), (True, 64, 64), "64"):
        with pytest.raises(ValueError, match="input_size must be"):
            export_metadata(deployed, input_size=size)
    import numpy as np

    meta = export_metadata(deployed, input_size=(np.int64(32), 48))
    assert json.loads(meta["preprocessing"])["input_size"] == [3, 32, 48]
    for opset in (16, 30, 18.5):
        with pytest.raises(ValueError, match="opset"):
            export_onnx(deployed, tmp_path / "m.onnx", opset=opset)
    with pytest.raises(ValueError, match=r"m.onnx is named .onnx but the format is pt2"):
        export_model(deployed, tmp_path / "m.onnx", "pt2")
    assert not list(tmp_path.iterdir())
