"""One door to a model: every way in builds the same model from one checked config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
from conftest import TINY_HEAD

import cprfl_zoo
from cprfl_zoo import CPRFL, create_cprfl
from cprfl_zoo.checkpoint import CheckpointMismatchError

NAMES = ["cat", "dog", "traffic_light"]
DATA = Path(__file__).parent / "data"


def _embeddings(n: int = 3, width: int = 12) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(5))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network and an empty Hugging Face cache."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_both_doors_build_the_same_model_without_a_download(offline) -> None:
    states = []
    for build in (
        lambda: create_cprfl(
            "resnet18", NAMES, _embeddings(), pretrained=False, drop_path_rate=0.1, **TINY_HEAD
        ),
        lambda: timm.create_model(
            "cprfl",
            backbone="resnet18",
            class_names=NAMES,
            text_embeddings=_embeddings(),
            pretrained=False,
            drop_path_rate=0.1,
            **TINY_HEAD,
        ),
    ):
        torch.manual_seed(0)
        states.append(build().state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize("door", ["create_cprfl", "timm"])
def test_pretrained_true_loads_the_backbone_and_fails_the_same_way_offline(offline, door) -> None:
    kwargs = {"class_names": NAMES, "text_embeddings": _embeddings(), **TINY_HEAD}
    with pytest.raises(OSError, match=r"backbone weights of 'resnet18' from hf-hub:timm/resnet18"):
        if door == "timm":
            timm.create_model("cprfl", backbone="resnet18", pretrained=True, **kwargs)
        else:
            create_cprfl("resnet18", pretrained=True, **kwargs)


def test_pretrained_backbone_is_a_deprecated_alias(offline) -> None:
    with (
        pytest.warns(FutureWarning, match="pretrained_backbone= is deprecated"),
        pytest.raises(OSError, match="backbone weights of 'resnet18'"),
    ):
        create_cprfl("resnet18", NAMES, _embeddings(), pretrained_backbone=True, **TINY_HEAD)


@pytest.mark.parametrize("door", ["create_cprfl", "timm"])
def test_a_typo_is_named_before_any_backbone_is_built(monkeypatch, door) -> None:
    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone was built")

    monkeypatch.setattr(cprfl_zoo.backbone, "create_backbone", no_backbone)
    kwargs = {"class_names": NAMES, "text_embeddings": _embeddings(), "num_head": 4}
    with pytest.raises(TypeError, match=r"'num_head'; did you mean 'num_heads'\?"):
        if door == "timm":
            timm.create_model("cprfl_resnet50", **kwargs)
        else:
            create_cprfl("resnet18", **kwargs)


def test_backbone_options_go_in_backbone_kwargs_and_a_forbidden_one_is_named() -> None:
    model = create_cprfl(
        "test_resnet", NAMES, _embeddings(), backbone_kwargs={"stem_width": 8}, **TINY_HEAD
    )
    assert model.model_args["backbone_kwargs"] == {"stem_width": 8}
    with pytest.raises(ValueError, match=r"backbone_kwargs\.checkpoint_path is not accepted"):
        create_cprfl(
            "test_resnet", NAMES, _embeddings(), backbone_kwargs={"checkpoint_path": "x.pth"}
        )


# ---------------------------------------------------------------- a saved config is not trusted
@pytest.fixture
def saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = create_cprfl("test_resnet", NAMES, _embeddings(), **TINY_HEAD)
    return model.save_pretrained(tmp_path / "m")


def _edit(folder: Path, edit) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg))


def _loaders(folder: Path):
    return (
        lambda: CPRFL.from_pretrained(folder),
        lambda: timm.create_model(f"local-dir:{folder}", pretrained=True),
    )


def test_a_saved_checkpoint_path_is_refused_without_opening_it(saved, tmp_path) -> None:
    sentinel = tmp_path / "missing.pth"  # never created: opening it would be a different error
    _edit(saved, lambda c: c["model_args"]["backbone_kwargs"].update(checkpoint_path=str(sentinel)))
    for load in _loaders(saved):
        with pytest.raises(
            ValueError, match=r"config\.json: model_args\.backbone_kwargs\.checkpoint_path is not"
        ):
            load()


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("input_size", [3, 40000, 40000], r"pretrained_cfg\.input_size\[1\] \(height\)"),
        ("std", [0, 0, 0], r"pretrained_cfg\.std must hold positive finite numbers"),
        ("mean", [0.5, 0.5], r"pretrained_cfg\.mean must be a list of 3 numbers"),
        ("crop_mode", "stretch", r"pretrained_cfg\.crop_mode must be one of"),
    ],
)
def test_an_absurd_data_config_is_refused(saved, field, value, match) -> None:
    _edit(saved, lambda c: c["pretrained_cfg"].update({field: value}))
    for load in _loaders(saved):
        with pytest.raises(ValueError, match=r"config\.json: " + match):
            load()


def test_head_sizes_that_disagree_with_the_weights_allocate_nothing(saved, monkeypatch) -> None:
    _edit(saved, lambda c: c["model_args"].update(embed_dim=60000, mlp_hidden_dim=60000))

    def no_build(*args, **kwargs):
        raise AssertionError("the model was allocated")

    monkeypatch.setattr(cprfl_zoo.entrypoints, "build_model_with_cfg", no_build)
    for load in _loaders(saved):
        with pytest.raises(CheckpointMismatchError, match=r"model\.safetensors does not match"):
            load()


def test_a_folder_with_a_pickle_and_no_safetensors_is_refused(saved) -> None:
    weights = saved / "model.safetensors"
    torch.save({"x": torch.zeros(1)}, saved / "model.pth")
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors is missing"):
        timm.create_model(f"local-dir:{saved}", pretrained=True)


def test_a_save_racing_a_load_is_an_error_not_a_mix(saved, monkeypatch) -> None:
    # timm parsed config.json; before the weights are read, another process saves new thresholds
    real = cprfl_zoo.checkpoint.read_saved_weights

    def racing(pretrained_cfg, model_args, *args, **kwargs):
        _edit(saved, lambda c: c["model_args"].update(thresholds=[0.1, 0.2, 0.3]))
        return real(pretrained_cfg, model_args, *args, **kwargs)

    monkeypatch.setattr(cprfl_zoo.entrypoints, "read_saved_weights", racing)
    with pytest.raises(CheckpointMismatchError, match="changed while the model was being loaded"):
        timm.create_model(f"local-dir:{saved}", pretrained=True)


def test_a_deeply_nested_config_names_the_file(saved) -> None:
    (saved / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=r"config\.json: nested too deeply"):
        CPRFL.from_pretrained(saved)


def test_a_folder_saved_before_the_redesign_loads_with_its_logits() -> None:
    model = CPRFL.from_pretrained(DATA / "c087809_model").eval()
    expected = torch.tensor(json.loads((DATA / "c087809_logits.json").read_text())["logits"])
    x = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    assert model.thresholds == pytest.approx([0.3, 0.5, 0.7, 0.4])
    assert model.text_encoder_cfg["text_dim"] == 12 and "embed_dim" not in model.text_encoder_cfg
    assert model.model_args["text_encoder_cfg"]["text_dim"] == 12


def test_saved_folders_record_version_0_2_0_and_text_dim(saved, tmp_path) -> None:
    cfg = json.loads((saved / "config.json").read_text())
    assert cprfl_zoo.__version__ == "0.2.0" and cfg["cprfl_zoo_version"] == "0.2.0"
    old = tmp_path / "old"
    shutil.copytree(DATA / "c087809_model", old)
    model = CPRFL.from_pretrained(old)
    model.save_pretrained(tmp_path / "resaved")
    args = json.loads((tmp_path / "resaved" / "config.json").read_text())["model_args"]
    assert args["text_encoder_cfg"]["text_dim"] == 12 and args["embed_dim"] == 16


# ---------------------------------------------------------------- deploy: one copy of the maths
def _reference(model: CPRFL, x: torch.Tensor) -> torch.Tensor:
    """The full residual-free encoder layer over [F; P] (no reuse of the model's VSI code)."""
    feats = model.visual_proj(model.forward_features(x))
    prompts = model.get_prompts()
    tokens = torch.cat([feats, prompts.expand(x.shape[0], -1, -1)], dim=1)
    vsi, attn = model.vsi, model.vsi.attn
    h = vsi.norm1(tokens)
    q, k, v = attn.qkv(h).chunk(3, dim=-1)
    split = lambda t: t.unflatten(-1, (attn.num_heads, attn.head_dim)).transpose(1, 2)  # noqa: E731
    w = (split(q) @ split(k).transpose(-2, -1) * attn.head_dim**-0.5).softmax(-1)
    out = attn.proj((w @ split(v)).transpose(1, 2).flatten(2))
    refined = vsi.mlp(vsi.norm2(out))[:, -len(model.class_names) :]
    return (refined * prompts).sum(-1)


@pytest.mark.parametrize(
    ("dtype", "tol"),
    [(torch.float32, 1e-4), (torch.float64, 1e-10), (torch.bfloat16, 5e-2), (torch.float16, 5e-3)],
)
def test_deploy_matches_the_model_in_every_dtype(dtype, tol) -> None:
    torch.manual_seed(0)
    model = create_cprfl("test_resnet", NAMES, _embeddings(), **TINY_HEAD).eval()
    model.set_thresholds([0.7, 0.3, 0.55])
    x = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = _reference(model.double(), x.double())
        model = model.to(dtype)
        deployed = model.deploy()
        got = deployed(x.to(dtype))
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol)
        torch.testing.assert_close(model(x.to(dtype)).double(), expected, rtol=tol, atol=tol)
    assert deployed.thresholds.dtype == torch.float32
    float32 = torch.tensor([0.7, 0.3, 0.55], dtype=torch.float32)
    assert torch.equal(deployed.half().thresholds, float32)  # not rounded to 0.70020


def test_an_uncached_hub_model_offline_names_the_repository_and_file(offline) -> None:
    with pytest.raises(FileNotFoundError, match=r"hf-hub:me/absent \(config\.json\) is not in"):
        CPRFL.from_pretrained("me/absent")
