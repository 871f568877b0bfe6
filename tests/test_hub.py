"""Saving, sharing and loading CPRFL models in timm's Hugging Face Hub format (offline)."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
import uuid
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import open_clip
import pytest
import safetensors.torch
import timm
import torch
from huggingface_hub import HfApi, ModelCard

import cprfl_zoo
import cprfl_zoo.backbone as backbone_module
import cprfl_zoo.hub as hub
from cprfl_zoo import CPRFL, create_cprfl
from cprfl_zoo.config import MODEL_ARGS
from cprfl_zoo.head_config import HEAD_FIELDS
from cprfl_zoo.hub import CheckpointMismatchError

NAMES = ["cat", "dog", "traffic_light", "teddy bear", "zebra"]
TEXT_CFG = {"model": "RN50", "pretrained": "openai", "template": "a photo of a {}."}
COMMIT = "0123456789abcdef0123456789abcdef01234567"
COMMIT_V1 = "fedcba9876543210fedcba9876543210fedcba98"


def _make_model(seed: int = 0, names: list[str] = NAMES) -> CPRFL:
    torch.manual_seed(seed)
    model = create_cprfl(
        "test_resnet",
        class_names=names,
        text_embeddings=torch.randn(len(names), 16),
        pretrained=False,
        embed_dim=32,
        num_heads=2,
        head_dim=8,
        mlp_hidden_dim=24,
        text_encoder_cfg=TEXT_CFG,
    )
    # non-trivial BN statistics, so a round trip that dropped buffers would show
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> CPRFL:
    return _make_model()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def saved(model: CPRFL, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model.save_pretrained(tmp_path_factory.mktemp("saved") / "cprfl-test")


@pytest.fixture
def no_clip_no_pickle(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Make CLIP, unpickling and backbone weight downloads fail loudly; record backbone builds."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("loading a saved CPRFL model must not call this")

    for name in ("create_model", "create_model_and_transforms", "create_model_from_pretrained"):
        monkeypatch.setattr(open_clip, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", forbidden)
    calls: dict[str, list] = {"backbone_pretrained": []}
    real_create_backbone = backbone_module.create_backbone

    def create_backbone(backbone, pretrained=False, **kwargs):
        calls["backbone_pretrained"].append(pretrained)
        return real_create_backbone(backbone, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(backbone_module, "create_backbone", create_backbone)
    return calls


def _assert_same_model(a: CPRFL, b: CPRFL, images: torch.Tensor) -> None:
    assert isinstance(b, CPRFL)
    assert b.class_names == a.class_names
    assert b.text_encoder_cfg == a.text_encoder_cfg
    assert b.model_args == a.model_args
    sd_a, sd_b = a.state_dict(), b.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for key in sd_a:
        assert torch.equal(sd_a[key], sd_b[key]), key
    with torch.no_grad():
        torch.testing.assert_close(b.eval()(images), a.eval()(images), rtol=0, atol=0)


# ---------------------------------------------------------------------- file format
def test_saved_folder_layout_and_config(model: CPRFL, saved: Path) -> None:
    assert sorted(os.listdir(saved)) == ["README.md", "config.json", "model.safetensors"]
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")], "temp dir left"
    cfg = json.loads((saved / "config.json").read_text())
    assert cfg["architecture"] == "cprfl"
    assert cfg["num_classes"] == len(NAMES)
    assert cfg["num_features"] == model.backbone.num_features  # timm: forward_features width
    assert cfg["label_names"] == NAMES
    args = cfg["model_args"]
    assert args["backbone"] == "test_resnet"
    assert args["class_names"] == NAMES
    assert args["text_encoder_cfg"] == TEXT_CFG
    widths = (args["text_dim"], args["embed_dim"], args["num_heads"], args["head_dim"])
    assert widths == (16, 32, 2, 8)
    assert args["mlp_hidden_dim"] == 24
    pcfg = cfg["pretrained_cfg"]
    assert pcfg["hf_hub_filename"] == "model.safetensors"
    assert pcfg["num_classes"] == len(NAMES)
    assert tuple(pcfg["mean"]) == tuple(model.pretrained_cfg["mean"])
    assert tuple(pcfg["input_size"]) == tuple(model.pretrained_cfg["input_size"])
    assert "file" not in pcfg and "source" not in pcfg
    tensors = safetensors.torch.load_file(saved / "model.safetensors")
    assert tensors.keys() == model.state_dict().keys()
    torch.testing.assert_close(tensors["class_embeddings"], model.class_embeddings)
    with safetensors.safe_open(saved / "model.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt"
    assert json.loads(meta["cprfl_class_names"]) == NAMES
    head = json.loads(meta["cprfl_head"])
    widths = (head["text_dim"], head["embed_dim"], head["num_heads"], head["head_dim"])
    assert widths == (16, 32, 2, 8)
    assert head["mlp_hidden_dim"] == 24
    digest = hashlib.sha256((saved / "model.safetensors").read_bytes()).hexdigest()
    assert cfg["weights_sha256"] == digest


def test_model_card(model: CPRFL, tmp_path: Path) -> None:
    folder = model.save_pretrained(
        tmp_path / "m",
        repo_id="me/cprfl-test",
        metrics={"mAP": 56.31, "head mAP": 60.2, "medium mAP": 58.0, "tail mAP": 48.9},
        model_card={"dataset": "COCO-LT", "tags": ["coco"], "notes": "trained for a test"},
    )
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "timm"
    assert {"multi-label", "long-tail", "cprfl", "timm", "coco"} <= set(card.data.tags)
    assert card.data.license == "apache-2.0"
    text = card.text
    for name in NAMES:
        assert f"`{name}`" in text
    assert "`test_resnet`" in text
    assert '"RN50"' in text and '"openai"' in text
    assert 'CPRFL.from_pretrained("me/cprfl-test")' in text
    assert 'timm.create_model("hf-hub:me/cprfl-test", pretrained=True)' in text
    assert "| mAP | 56.31 |" in text and "| tail mAP | 48.90 |" in text
    assert "On COCO-LT" in text and "trained for a test" in text
    assert "@inproceedings{yan2024cprfl" in text and "2408.08125" in text


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"metrics": {"mAP": "high"}}, ValueError, "metric 'mAP' must be a number"),
        ({"metrics": {"mAP": float("nan")}}, ValueError, "metric 'mAP' is not finite"),
        ({"metrics": [56.3]}, TypeError, "metrics must be a mapping"),
        (
            {"model_card": {"datasets": "x"}},
            ValueError,
            r"unknown model_card fields \['datasets'\]",
        ),
    ],
)
def test_bad_card_inputs(model: CPRFL, tmp_path: Path, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        model.save_pretrained(tmp_path / "m", **kwargs)
    assert not (tmp_path / "m").exists()
    assert list(tmp_path.iterdir()) == [], "a failed save left files behind"


def test_model_from_module_instance_cannot_be_saved(tmp_path: Path) -> None:
    backbone = timm.create_model("test_resnet", num_classes=0, global_pool="")
    m = CPRFL(backbone, NAMES, torch.randn(5, 8), embed_dim=16, num_heads=2, head_dim=4)
    with pytest.raises(ValueError, match="backbone module instance"):
        m.save_pretrained(tmp_path / "m")


def test_save_into_a_file_path_is_an_error(model: CPRFL, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        model.save_pretrained(tmp_path / "file")


def test_interrupted_save_never_leaves_a_valid_looking_folder(
    model: CPRFL, saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "m"
    shutil.copytree(saved, target)
    other = _make_model(seed=5)
    real_replace = os.replace

    def crash_on_readme(src, dst):
        if Path(dst).name == "README.md":
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(hub.os, "replace", crash_on_readme)
    with pytest.raises(OSError, match="disk full"):
        other.save_pretrained(target)
    # the new weights are in, the old config is gone: nothing loads this half-written folder
    assert not (target / "config.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m"], "temp dir left"
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        CPRFL.from_pretrained(target)

    def crash_in_weights(*args, **kwargs):
        raise OSError("killed")

    monkeypatch.setattr(hub.os, "replace", real_replace)
    monkeypatch.setattr(safetensors.torch, "save", crash_in_weights)
    shutil.rmtree(target)
    shutil.copytree(saved, target)
    with pytest.raises(OSError, match="killed"):
        other.save_pretrained(target)
    # a crash before the move leaves the previous save untouched and loadable
    assert sorted(os.listdir(target)) == ["README.md", "config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["m"], "temp dir left"
    monkeypatch.undo()
    assert CPRFL.from_pretrained(target).state_dict().keys() == model.state_dict().keys()


# ---------------------------------------------------------------------- local loading
def test_local_round_trip(
    model: CPRFL, saved: Path, images: torch.Tensor, no_clip_no_pickle
) -> None:
    loaded = CPRFL.from_pretrained(saved)
    _assert_same_model(model, loaded, images)
    assert no_clip_no_pickle["backbone_pretrained"] == [False]
    data = timm.data.resolve_model_data_config(loaded)
    assert data["input_size"] == tuple(model.pretrained_cfg["input_size"])
    assert tuple(data["mean"]) == tuple(model.pretrained_cfg["mean"])
    # str paths and the local-dir: prefix work too
    _assert_same_model(model, CPRFL.from_pretrained(str(saved)), images)
    _assert_same_model(model, cprfl_zoo.hub.load_pretrained(f"local-dir:{saved}"), images)


def test_timm_and_create_cprfl_load_local_dir(
    model: CPRFL, saved: Path, images: torch.Tensor, no_clip_no_pickle
) -> None:
    _assert_same_model(model, timm.create_model(f"local-dir:{saved}", pretrained=True), images)
    _assert_same_model(model, create_cprfl(f"local-dir:{saved}"), images)
    assert no_clip_no_pickle["backbone_pretrained"] == [False, False]


def test_resaving_a_loaded_model_gives_the_same_files(
    model: CPRFL, saved: Path, tmp_path: Path, images: torch.Tensor
) -> None:
    loaded = CPRFL.from_pretrained(saved)
    again = loaded.save_pretrained(tmp_path / "again")
    assert json.loads((again / "config.json").read_text()) == json.loads(
        (saved / "config.json").read_text()
    )
    _assert_same_model(model, CPRFL.from_pretrained(again), images)


def test_set_classes_then_save_round_trips(tmp_path: Path, images: torch.Tensor) -> None:
    m = _make_model(seed=3)
    m.set_classes(["a", "b", "c"], torch.randn(3, 16))
    folder = m.save_pretrained(tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["label_names"] == ["a", "b", "c"] and cfg["num_classes"] == 3
    _assert_same_model(m, CPRFL.from_pretrained(folder), images)


# ---------------------------------------------------------------------- strict loading
def _edit_weights(folder: Path, edit) -> None:
    tensors = safetensors.torch.load_file(folder / "model.safetensors")
    edit(tensors)
    safetensors.torch.save_file(tensors, folder / "model.safetensors")


def test_missing_tensor_is_named(saved: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(saved, tmp_path / "m"))
    _edit_weights(folder, lambda t: t.pop("vsi.norm1.weight"))
    match = rf"{folder}/model.safetensors does not match .*missing tensors: vsi\.norm1\.weight$"
    with pytest.raises(CheckpointMismatchError, match=match):
        CPRFL.from_pretrained(folder)
    with pytest.raises(CheckpointMismatchError, match=r"missing tensors: vsi\.norm1\.weight"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)


def test_unexpected_tensor_is_named(saved: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(saved, tmp_path / "m"))
    _edit_weights(folder, lambda t: t.update({"head.fc.weight": torch.zeros(2, 2)}))
    with pytest.raises(CheckpointMismatchError, match=r"unexpected tensors: head\.fc\.weight"):
        CPRFL.from_pretrained(folder)


def test_shape_disagreeing_with_config_is_named(saved: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(saved, tmp_path / "m"))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_args"]["text_dim"] = 8
    (folder / "config.json").write_text(json.dumps(cfg))
    match = (
        r"shape mismatches: class_embeddings \(file \(5, 16\), config \(5, 8\)\), "
        r"prompt_init\.net\.fc1\.weight \(file \(16, 16\), config \(16, 8\)\)"
    )
    with pytest.raises(CheckpointMismatchError, match=match):
        CPRFL.from_pretrained(folder)


def test_many_problems_are_listed_briefly(saved: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(saved, tmp_path / "m"))
    _edit_weights(folder, lambda t: [t.pop(k) for k in list(t) if k.startswith("backbone.")])
    with pytest.raises(CheckpointMismatchError, match=r"missing tensors: backbone\..*and \d+ more"):
        CPRFL.from_pretrained(folder)


def test_missing_files_and_bad_names(saved: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(saved, tmp_path / "m"))
    (folder / "model.safetensors").unlink()
    torch.save({}, folder / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"has no model\.safetensors"):
        CPRFL.from_pretrained(folder)
    with pytest.raises(ValueError, match="neither an existing folder nor a Hub repository"):
        CPRFL.from_pretrained(str(tmp_path / "does-not-exist"))
    with pytest.raises(ValueError, match="only applies to Hub repositories"):
        CPRFL.from_pretrained(saved, revision="v1")
    with pytest.raises(ValueError, match="already names a revision"):
        CPRFL.from_pretrained("me/repo@v1", revision="v2")


def test_non_cprfl_folder_is_rejected(tmp_path: Path) -> None:
    plain = timm.create_model("test_resnet", num_classes=3)
    timm.models.save_for_hf(plain, tmp_path / "plain", safe_serialization=True)
    with pytest.raises(TypeError, match="not a CPRFL model"):
        CPRFL.from_pretrained(tmp_path / "plain")


# ---------------------------------------------------------------------- Hub, offline
def _seed_cache(cache: Path, repo_id: str, commit: str, folder: Path, ref: str = "main") -> None:
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        shutil.copy(f, snapshot / f.name)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / ref).write_text(commit)


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hf_hub_loading_from_offline_cache(
    model: CPRFL, saved: Path, offline_cache: Path, tmp_path: Path, images, no_clip_no_pickle
) -> None:
    other = _make_model(seed=7, names=["x", "y"])
    other_folder = other.save_pretrained(tmp_path / "v1")
    _seed_cache(offline_cache, "me/cprfl-test", COMMIT, saved)
    _seed_cache(offline_cache, "me/cprfl-test", COMMIT_V1, other_folder, ref="v1")

    _assert_same_model(model, CPRFL.from_pretrained("me/cprfl-test"), images)
    _assert_same_model(model, create_cprfl("hf-hub:me/cprfl-test"), images)
    _assert_same_model(model, timm.create_model("hf-hub:me/cprfl-test", pretrained=True), images)
    _assert_same_model(model, create_cprfl(f"hf-hub:me/cprfl-test@{COMMIT}"), images)
    # revisions: by branch name and by commit, as an argument or after '@'
    _assert_same_model(other, CPRFL.from_pretrained("me/cprfl-test", revision="v1"), images)
    _assert_same_model(other, CPRFL.from_pretrained(f"me/cprfl-test@{COMMIT_V1}"), images)
    _assert_same_model(other, timm.create_model("hf-hub:me/cprfl-test@v1", pretrained=True), images)
    assert set(no_clip_no_pickle["backbone_pretrained"]) == {False}
    loaded = CPRFL.from_pretrained("me/cprfl-test")
    assert loaded.pretrained_cfg["hf_hub_id"] == "me/cprfl-test"
    assert loaded.pretrained_cfg["label_names"] == NAMES


def test_hf_hub_explicit_cache_dir(
    model: CPRFL, saved: Path, tmp_path: Path, images, monkeypatch
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "elsewhere"
    _seed_cache(cache, "me/cprfl-test", COMMIT, saved)
    _assert_same_model(model, CPRFL.from_pretrained("me/cprfl-test", cache_dir=cache), images)


def test_hf_hub_never_unpickles(
    model: CPRFL, saved: Path, offline_cache: Path, tmp_path: Path, no_clip_no_pickle
) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(saved / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(b"not even read")
    _seed_cache(offline_cache, "me/pickled", COMMIT, folder)
    # the weights file named by config.json is missing: an error, never a torch.load fallback
    with pytest.raises(FileNotFoundError, match=r"hf-hub:me/pickled \(model\.safetensors\)"):
        CPRFL.from_pretrained("me/pickled")


def test_hf_hub_strict_error_names_the_repo(
    saved: Path, offline_cache: Path, tmp_path: Path
) -> None:
    folder = Path(shutil.copytree(saved, tmp_path / "m"))
    _edit_weights(folder, lambda t: t.pop("visual_proj.bias"))
    _seed_cache(offline_cache, "me/broken", COMMIT, folder)
    match = r"hf-hub:me/broken \(model\.safetensors\) does not match .*visual_proj\.bias"
    with pytest.raises(CheckpointMismatchError, match=match):
        timm.create_model("hf-hub:me/broken", pretrained=True)


# ---------------------------------------------------------------------- push
@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, list]:
    """Replace HfApi's network calls; keep a copy of every uploaded folder."""
    calls: dict[str, list] = {"create_repo": [], "create_branch": [], "upload_folder": []}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append((repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        calls["create_branch"].append((repo_id, kwargs))

    def upload_folder(self, **kwargs):
        copy = tmp_path / f"uploaded-{len(calls['upload_folder'])}"
        shutil.copytree(kwargs["folder_path"], copy)
        calls["upload_folder"].append(dict(kwargs, copy=copy, token=self.token))
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_to_hub_uploads_the_saved_folder(model: CPRFL, fake_hub, images) -> None:
    out = model.push_to_hub("me/cprfl-test", token="hf_fake", private=True, metrics={"mAP": 50.0})
    assert out == "commit-info"
    assert fake_hub["create_repo"] == [
        ("me/cprfl-test", {"private": True, "exist_ok": True, "repo_type": "model"})
    ]
    assert fake_hub["create_branch"] == []
    (upload,) = fake_hub["upload_folder"]
    assert upload["repo_id"] == "me/cprfl-test"
    assert upload["token"] == "hf_fake"
    assert upload["revision"] is None and upload["create_pr"] is False
    assert not Path(upload["folder_path"]).exists(), "temporary upload folder not cleaned up"
    copy = upload["copy"]
    assert sorted(os.listdir(copy)) == ["README.md", "config.json", "model.safetensors"]
    card = (copy / "README.md").read_text()
    assert 'CPRFL.from_pretrained("me/cprfl-test")' in card and "| mAP | 50.00 |" in card
    _assert_same_model(model, CPRFL.from_pretrained(copy), images)


def test_push_to_branch_and_pr(model: CPRFL, fake_hub) -> None:
    model.push_to_hub("me/cprfl-test", revision="v1", commit_message="v1 weights")
    assert fake_hub["create_branch"] == [
        ("me/cprfl-test", {"branch": "v1", "exist_ok": True, "repo_type": "model"})
    ]
    assert fake_hub["upload_folder"][0]["revision"] == "v1"
    assert fake_hub["upload_folder"][0]["commit_message"] == "v1 weights"
    model.push_to_hub("me/cprfl-test", create_pr=True)
    assert len(fake_hub["create_branch"]) == 1
    assert fake_hub["upload_folder"][1]["create_pr"] is True


@pytest.mark.parametrize("repo_id", ["cprfl-test", "a/b/c", "/repo", ""])
def test_push_bad_repo_id(model: CPRFL, fake_hub, repo_id: str) -> None:
    with pytest.raises(ValueError, match="repo_id must look like 'user/repo'"):
        model.push_to_hub(repo_id)
    assert fake_hub["create_repo"] == [] and fake_hub["upload_folder"] == []


# ---------------------------------------------------------------------- real Hub (opt-in)
@pytest.mark.hub
@pytest.mark.skipif(not os.environ.get("HF_TOKEN"), reason="needs HF_TOKEN to talk to the Hub")
def test_real_hub_push_and_pull(model: CPRFL, images: torch.Tensor, tmp_path: Path) -> None:
    api = HfApi()
    user = api.whoami()["name"]
    repo_id = f"{user}/cprfl-zoo-test-{uuid.uuid4().hex[:8]}"
    try:
        model.push_to_hub(repo_id, private=True)
        loaded = CPRFL.from_pretrained(repo_id, cache_dir=tmp_path / "cache")
        _assert_same_model(model, loaded, images)
        _assert_same_model(
            model,
            timm.create_model(f"hf-hub:{repo_id}", pretrained=True, cache_dir=tmp_path / "c2"),
            images,
        )
    finally:
        api.delete_repo(repo_id, missing_ok=True)


# ---------------------------------------------------------------------- issue 13: checked loads
def _copy(saved: Path, tmp_path: Path, name: str = "m") -> Path:
    return Path(shutil.copytree(saved, tmp_path / name))


def _edit_config(folder: Path, edit) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    edit(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))


def _tensor_offset(path: Path, name: str) -> int:
    """Byte offset in the file of the first byte of tensor ``name``'s data."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    return 8 + size + header[name]["data_offsets"][0]


def _flip_byte(path: Path, offset: int, mask: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def _as_0_1_0(folder: Path) -> None:
    """Make a folder look like one saved by cprfl_zoo 0.1.0: no checksum, no metadata."""
    _edit_config(folder, lambda c: c.pop("weights_sha256"))
    tensors = safetensors.torch.load_file(folder / "model.safetensors")
    safetensors.torch.save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def test_saves_are_byte_identical(model: CPRFL, saved: Path, tmp_path: Path) -> None:
    # safetensors writes its metadata in hash-map order; the saved header is sorted, so the
    # checksum in config.json does not change from one save of the same model to the next
    again = model.save_pretrained(tmp_path / "again")
    for name in ("model.safetensors", "config.json"):
        assert (again / name).read_bytes() == (saved / name).read_bytes(), name


def test_a_0_1_0_folder_still_loads(
    model: CPRFL, saved: Path, tmp_path: Path, images: torch.Tensor
) -> None:
    folder = _copy(saved, tmp_path)
    _as_0_1_0(folder)
    with safetensors.safe_open(folder / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
    assert "weights_sha256" not in json.loads((folder / "config.json").read_text())
    _assert_same_model(model, CPRFL.from_pretrained(folder), images)
    _assert_same_model(model, timm.create_model(f"local-dir:{folder}", pretrained=True), images)


@pytest.mark.parametrize("name", ["vsi.norm1.weight", "class_embeddings"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_named(saved: Path, tmp_path: Path, name: str, value) -> None:
    folder = _copy(saved, tmp_path)

    def poison(t: dict) -> None:
        t[name] = t[name].clone()
        t[name].view(-1)[0] = value

    _edit_weights(folder, poison)
    match = rf"model\.safetensors does not match .*NaN or infinite values in: {re.escape(name)}$"
    with pytest.raises(CheckpointMismatchError, match=match):
        CPRFL.from_pretrained(folder)
    with pytest.raises(CheckpointMismatchError, match="NaN or infinite values in"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)


def test_integer_weights_are_not_cast_silently(saved: Path, tmp_path: Path) -> None:
    folder = _copy(saved, tmp_path)
    _edit_weights(folder, lambda t: t.update({"vsi.norm1.bias": t["vsi.norm1.bias"].long()}))
    match = r"dtype mismatches: vsi\.norm1\.bias \(file torch\.int64, model torch\.float32\)"
    with pytest.raises(CheckpointMismatchError, match=match):
        CPRFL.from_pretrained(folder)


def test_flipped_weight_bytes_fail_the_checksum(
    model: CPRFL, saved: Path, tmp_path: Path, images: torch.Tensor
) -> None:
    folder = _copy(saved, tmp_path)
    weights = folder / "model.safetensors"
    _flip_byte(weights, _tensor_offset(weights, "class_embeddings"))  # lowest mantissa bit
    changed = safetensors.torch.load_file(weights)["class_embeddings"]
    assert torch.isfinite(changed).all() and not torch.equal(changed, model.class_embeddings)
    match = rf"{re.escape(str(weights))} has SHA-256 [0-9a-f]{{64}}, but .*config\.json records"
    with pytest.raises(CheckpointMismatchError, match=match + ".*verify_checksum=False"):
        CPRFL.from_pretrained(folder)
    with pytest.raises(CheckpointMismatchError, match=match):
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    # the documented opt-out, for a file changed on purpose
    loaded = CPRFL.from_pretrained(folder, verify_checksum=False)
    assert torch.equal(loaded.class_embeddings, changed)
    timm.create_model(f"local-dir:{folder}", pretrained=True, verify_checksum=False)


def test_hub_snapshots_are_verified_too(
    model: CPRFL, saved: Path, offline_cache: Path, tmp_path: Path, images: torch.Tensor
) -> None:
    folder = _copy(saved, tmp_path)
    weights = folder / "model.safetensors"
    _flip_byte(weights, _tensor_offset(weights, "visual_proj.weight"))
    _seed_cache(offline_cache, "me/flipped", COMMIT, folder)
    match = r"has SHA-256 .*hf-hub:me/flipped(@[0-9a-f]+)? \(config\.json\) records weights_sha256"
    with pytest.raises(CheckpointMismatchError, match=match):
        CPRFL.from_pretrained("me/flipped")
    with pytest.raises(CheckpointMismatchError, match=match):
        timm.create_model("hf-hub:me/flipped", pretrained=True)
    with pytest.raises(CheckpointMismatchError, match=match):
        create_cprfl(f"hf-hub:me/flipped@{COMMIT}")
    CPRFL.from_pretrained("me/flipped", verify_checksum=False)
    # an intact snapshot in an explicit cache folder is verified and loads
    cache = tmp_path / "elsewhere"
    _seed_cache(cache, "me/intact", COMMIT, saved)
    _assert_same_model(model, CPRFL.from_pretrained("me/intact", cache_dir=cache), images)


def _reverse_names(cfg: dict) -> None:
    names = cfg["model_args"]["class_names"][::-1]
    cfg["model_args"]["class_names"] = names
    cfg["label_names"] = names
    cfg["pretrained_cfg"]["label_names"] = names


def test_reordered_class_names_are_refused(saved: Path, tmp_path: Path) -> None:
    # every shape is unchanged: only the recorded names can tell the labels got permuted
    folder = _copy(saved, tmp_path)
    _edit_config(folder, _reverse_names)
    match = (
        r"config\.json: model_args\.class_names \['zebra', .*\] disagree with the class names "
        r"recorded in .*model\.safetensors \['cat', .*\] \(first difference at position 0: "
        r"'zebra' vs 'cat'\)"
    )
    with pytest.raises(CheckpointMismatchError, match=match):
        CPRFL.from_pretrained(folder)
    with pytest.raises(CheckpointMismatchError, match=match):
        timm.create_model(f"local-dir:{folder}", pretrained=True)


def test_label_names_must_equal_class_names(saved: Path, tmp_path: Path) -> None:
    folder = _copy(saved, tmp_path)
    _edit_config(folder, lambda c: c.update(label_names=NAMES[::-1]))
    match = (
        r"config\.json: label_names \['zebra', .*\] disagrees with model_args\.class_names "
        r"\['cat', .*\] \(first difference at position 0: 'zebra' vs 'cat'\)"
    )
    with pytest.raises(ValueError, match=match):
        CPRFL.from_pretrained(folder)
    with pytest.raises(ValueError, match=match):
        timm.create_model(f"local-dir:{folder}", pretrained=True)


def test_swapped_head_shape_is_refused(saved: Path, tmp_path: Path) -> None:
    folder = _copy(saved, tmp_path)
    _edit_config(folder, lambda c: c["model_args"].update(num_heads=8, head_dim=2))
    match = (
        r"model_args disagree with the head recorded in .*model\.safetensors: "
        r"num_heads=8 \(file 2\), head_dim=2 \(file 8\)"
    )
    with pytest.raises(CheckpointMismatchError, match=match):
        CPRFL.from_pretrained(folder)
    with pytest.raises(CheckpointMismatchError, match=match):
        timm.create_model(f"local-dir:{folder}", pretrained=True)


def _set_args(**values):
    return lambda c: c["model_args"].update(values)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (None, r"config\.json: not valid JSON \(Expecting value at line 1, column 1\)"),
        ("list", r"config\.json: expected a JSON object, got list"),
        (lambda c: c.pop("architecture"), r"config\.json: the field 'architecture' is missing"),
        (lambda c: c.update(architecture=7), r"config\.json: architecture 7 is not a timm model"),
        (lambda c: c.update(model_args=[1, 2]), r"model_args must be an object .*got list"),
        (lambda c: c.pop("model_args"), r"config\.json: the field 'model_args' is missing"),
        (_set_args(nope=1), r"model_args has the unknown key 'nope' \(expected: "),
        (
            _set_args(embed_dim="32"),
            r"config\.json: model_args\.embed_dim must be a positive int, got '32'",
        ),
        (_set_args(mlp_hidden_dim=0), r"model_args\.mlp_hidden_dim must be a positive int"),
        (_set_args(drop_rate=1.5), r"model_args\.drop_rate must be a number in \[0, 1\)"),
        (_set_args(qkv_bias="false"), r"model_args\.qkv_bias must be true or false"),
        (_set_args(class_names="cat"), r"model_args\.class_names must be a list of strings"),
        (_set_args(class_names=["a", 1]), r"model_args\.class_names\[1\] is int 1"),
        (_set_args(backbone=None), r"model_args\.backbone must be a timm model name"),
        (_set_args(backbone_kwargs=[]), r"model_args\.backbone_kwargs must be an object"),
        (lambda c: c["model_args"].pop("backbone"), r"model_args\.backbone is missing"),
        (lambda c: c.update(num_classes=4), r"config\.json: num_classes is 4 but model_args"),
        (lambda c: c.update(weights_sha256="abc"), r"weights_sha256 must be 64 lowercase hex"),
        (lambda c: c.update(pretrained_cfg=[]), r"config\.json: pretrained_cfg must be an object"),
    ],
)
def test_malformed_config_names_file_and_field(saved: Path, tmp_path: Path, edit, match) -> None:
    folder = _copy(saved, tmp_path)
    if edit is None:
        (folder / "config.json").write_text("")
    elif edit == "list":
        (folder / "config.json").write_text("[1, 2]")
    else:
        _edit_config(folder, edit)
    with pytest.raises(ValueError, match=re.escape(str(folder)) + ".*" + match):
        CPRFL.from_pretrained(folder)


def test_config_of_another_timm_model_is_refused(saved: Path, tmp_path: Path) -> None:
    folder = _copy(saved, tmp_path)
    _edit_config(folder, lambda c: c.update(architecture="resnet18"))
    match = r"config\.json: architecture 'resnet18' is a plain timm model, not a CPRFL model"
    with pytest.raises(TypeError, match=match):
        CPRFL.from_pretrained(folder)


def test_non_utf8_config_is_named(saved: Path, tmp_path: Path) -> None:
    folder = _copy(saved, tmp_path)
    (folder / "config.json").write_bytes(b'{"architecture": "caf\xe9"}')
    with pytest.raises(ValueError, match=r"config\.json: not UTF-8 text"):
        CPRFL.from_pretrained(folder)


def test_timm_loader_checks_saved_model_args_too(saved: Path, tmp_path: Path) -> None:
    # used to reach ResNet.__init__ as an unexpected keyword argument
    folder = _copy(saved, tmp_path)
    _edit_config(folder, _set_args(nope=1))
    match = rf"{re.escape(str(folder))}/config\.json: model_args has the unknown key 'nope'"
    with pytest.raises(ValueError, match=match):
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    # arguments given at load time are not the config's: a backbone argument still works
    m = timm.create_model(f"local-dir:{saved}", pretrained=True, drop_rate=0.2)
    assert m.vsi is not None


def test_unknown_key_check_follows_the_signature(saved: Path, tmp_path: Path) -> None:
    # arguments of CPRFL.__init__ and head fields are accepted, even ones added after this test
    params = set(inspect.signature(CPRFL.__init__).parameters) - {"self", "head_cfg", "head_args"}
    assert params | set(HEAD_FIELDS) <= MODEL_ARGS
    assert {"backbone", "class_names", "embed_dim", "text_dim", "text_encoder_cfg"} <= MODEL_ARGS


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "header too small"), ("truncated", "incomplete metadata"), (b"\x05", "header")],
)
def test_truncated_or_empty_weights_name_the_file(
    saved: Path, tmp_path: Path, offline_cache: Path, content, reason
) -> None:
    folder = _copy(saved, tmp_path)
    weights = folder / "model.safetensors"
    if content == "truncated":
        content = weights.read_bytes()[:-10]
    weights.write_bytes(content)
    match = rf"{re.escape(str(weights))} is not a complete safetensors file \(.*{reason}"
    with pytest.raises(ValueError, match=match):
        CPRFL.from_pretrained(folder)
    _seed_cache(offline_cache, "me/truncated", COMMIT, folder)
    match = r"hf-hub:me/truncated \(model\.safetensors\) is not a complete safetensors file"
    with pytest.raises(ValueError, match=match):
        CPRFL.from_pretrained("me/truncated")


def test_hub_backbone_in_a_saved_config_is_refused(
    saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("loading a saved model must not contact the Hub")

    folder = _copy(saved, tmp_path)
    _edit_config(folder, _set_args(backbone="hf-hub:timm/resnet18.a1_in1k"))
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", no_network)
    match = r"model_args\.backbone is 'hf-hub:timm/resnet18\.a1_in1k'.*not be self-contained"
    with pytest.raises(ValueError, match=match):
        CPRFL.from_pretrained(folder)
    with pytest.raises(ValueError, match=match):
        timm.create_model(f"local-dir:{folder}", pretrained=True)


def test_a_hub_backbone_model_cannot_be_saved(model: CPRFL, tmp_path: Path) -> None:
    m = _make_model()
    m.config = m.config.replace(backbone="hf-hub:timm/resnet18.a1_in1k")
    with pytest.raises(ValueError, match=r"the model's backbone is 'hf-hub:.*self-contained"):
        m.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_create_cprfl_loads_through_the_checked_loader(saved: Path, tmp_path: Path) -> None:
    folder = _copy(saved, tmp_path)
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"model\.safetensors is not a complete safetensors file"):
        create_cprfl(f"local-dir:{folder}")
    (folder / "config.json").write_text("{")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        create_cprfl(f"local-dir:{folder}")
