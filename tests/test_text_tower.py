"""The open_clip text tower (cprfl_zoo/text/tower.py) on tiny random open_clip configs: each
variant of open_clip's text transformer (causal or not, argmax or end-of-text pooling, a
projection matrix, a linear projection or none, a custom-text model) against open_clip's own
forward pass on the full context; and the weight-cache probe's file names."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import open_clip
import pytest
import torch
from tiny_clip import TINY_CFG, TINY_NAME, register_tiny_clip

import cprfl_zoo.text.tower as tower_module
from cprfl_zoo.text.tower import TextTower, hub_weights_cached, text_arch

EOT = 49407  # the end-of-text token of open_clip's CLIP tokenizer
NAMES = ["dog", "traffic light", "a much longer class name with many words"]


@pytest.fixture(scope="module", autouse=True)
def _tiny_config(tmp_path_factory: pytest.TempPathFactory) -> None:
    register_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def _arch(**text_cfg) -> dict:
    arch = text_arch(TINY_NAME)
    arch["text_cfg"].update(text_cfg)
    return arch


def _tower(arch: dict, seed: int = 0, **kwargs) -> TextTower:
    torch.manual_seed(seed)
    return TextTower(arch, model_name=TINY_NAME, **kwargs).eval()


def _full_context(tower: TextTower, names: list[str]) -> torch.Tensor:
    """open_clip's own forward on the 77-token prompts: the reference."""
    tokens = open_clip.get_tokenizer(TINY_NAME)([f"a photo of a {n}." for n in names])
    out = tower.text(tokens)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize(
    ("text_cfg", "trimmable", "projection"),
    [
        ({}, True, torch.nn.Parameter),  # CLIP: causal, argmax pooling, a projection matrix
        ({"pool_type": "eos", "eos_id": EOT}, True, torch.nn.Parameter),
        ({"proj_bias": True}, True, torch.nn.Linear),
        ({"proj_type": "none"}, True, type(None)),
        ({"no_causal_mask": True}, False, torch.nn.Parameter),  # bidirectional: full context
        ({"pool_type": "first"}, False, torch.nn.Parameter),
    ],
)
def test_tower_variants_match_open_clip_on_the_full_context(text_cfg, trimmable, projection):
    arch = _arch(**text_cfg)
    if text_cfg.get("proj_type") == "none":
        arch["embed_dim"] = arch["text_cfg"]["width"]  # no projection: features of the width
    tower = _tower(arch, templates=["a photo of a {}."])
    assert tower.trimmable is trimmable and tower.is_text_transformer
    assert isinstance(tower.text.text_projection, projection)
    tower.set_class_names(NAMES)
    longest = int((tower.tokens != 0).sum(1).max()) if trimmable else 77
    assert tower.tokens.shape == (3, longest if trimmable else 77)
    with torch.no_grad():
        reference = _full_context(tower, NAMES)
        assert reference.shape == (3, tower.text_dim)
        torch.testing.assert_close(tower(), reference, rtol=1e-5, atol=1e-5)
        full = open_clip.get_tokenizer(TINY_NAME)([f"a photo of a {n}." for n in NAMES])
        torch.testing.assert_close(tower.encode(full), reference, rtol=1e-5, atol=1e-5)
    lengths = tower.needed_lengths(full)
    if trimmable:  # the pooled (end-of-text) position + 1
        assert lengths.tolist() == ((full == EOT).int().argmax(1) + 1).tolist()
    else:
        assert lengths.tolist() == [77] * 3


def test_no_names_and_bad_tokens() -> None:
    tower = _tower(_arch(), templates=["a photo of a {}."])
    assert tower.tokenize([]).shape == (0, 77)  # nothing to trim to
    empty = tower.encode(torch.zeros(0, 77, dtype=torch.long))
    assert empty.shape == (0, tower.text_dim) and empty.dtype == torch.float32
    with pytest.raises(ValueError, match=r"tokens must have shape \(N, L\), got \(77,\)"):
        tower.encode(torch.zeros(77, dtype=torch.long))


def test_several_templates_need_normalize() -> None:
    with pytest.raises(ValueError, match="averaging several templates needs normalize=True"):
        TextTower(_arch(), model_name=TINY_NAME, templates=["{}", "a {}"])
    tower = _tower(_arch(), templates=["{}", "a photo of a {}."], normalize=True)
    tower.set_class_names(NAMES[:2])
    assert tower.tokens.shape[0] == 4  # template-major: T * C rows
    with torch.no_grad():
        per_template = torch.nn.functional.normalize(tower.encode(tower.tokens), dim=-1)
        mean = per_template.view(2, 2, -1).mean(0)
        torch.testing.assert_close(tower(), torch.nn.functional.normalize(mean, dim=-1))


def test_text_arch_of_an_unknown_model() -> None:
    with pytest.raises(ValueError, match="no open_clip model config found for 'no-such-clip'"):
        text_arch("no-such-clip")
    arch = text_arch(TINY_NAME)
    assert arch == {
        "embed_dim": 16,
        "quick_gelu": True,
        "text_cfg": TINY_CFG["text_cfg"],
    }
    arch["text_cfg"]["width"] = 1  # a copy: the registry is unchanged
    assert text_arch(TINY_NAME)["text_cfg"]["width"] == 32


def _register(tmp_path: Path, name: str, **text_cfg) -> str:
    cfg = copy.deepcopy(TINY_CFG)
    cfg["text_cfg"].update(text_cfg)
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    return name


@pytest.mark.parametrize("custom_text", [False, True])
@pytest.mark.parametrize("causal", [True, False])
def test_from_open_clip_shares_the_weights(tmp_path: Path, custom_text: bool, causal: bool):
    name = _register(tmp_path, f"tiny-clip-causal{int(causal)}", no_causal_mask=not causal)
    torch.manual_seed(3)
    model = open_clip.create_model(name, force_custom_text=custom_text).eval()
    assert hasattr(model, "text") is custom_text  # CLIP keeps its text parts at the top level
    tower = TextTower.from_open_clip(
        model, text_arch(name), model_name=name, templates=["a photo of a {}."]
    )
    assert tower.trimmable is causal
    if custom_text:
        assert tower.text is model.text
    else:
        adopted = tower.text.token_embedding.weight.data_ptr()
        assert adopted == model.token_embedding.weight.data_ptr()  # not copied
        assert (tower.text.attn_mask is None) is not causal
    tower.set_class_names(NAMES)
    tokens = open_clip.get_tokenizer(name)([f"a photo of a {n}." for n in NAMES])
    with torch.no_grad():
        torch.testing.assert_close(tower(), model.encode_text(tokens), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- the weight-cache probe
@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list:
    """Record the (repo, names) hub_weights_cached asks for; files listed in ``cached`` exist."""
    calls: list = []
    cached: set = set()

    def fake(repo: str, names: list[str]) -> bool:
        calls.append((repo, list(names)))
        return any((repo, n) in cached for n in names)

    monkeypatch.setattr(tower_module, "hf_file_cached", fake)
    calls.append(cached)
    return calls


def test_hub_weights_cached_for_an_hf_hub_model(asked: list) -> None:
    cached = asked.pop(0)
    assert not hub_weights_cached("hf-hub:org/clip", None)
    assert asked == [("org/clip", ["open_clip_config.json"])]  # no config: weights not asked
    cached |= {("org/clip", "open_clip_config.json"), ("org/clip", "open_clip_model.safetensors")}
    asked.clear()
    assert hub_weights_cached("hf-hub:org/clip", None)
    assert asked[1] == ("org/clip", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])


@pytest.mark.parametrize(
    ("hf_hub", "repo", "names"),
    [
        ("org/repo/", "org/repo", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]),
        ("org/repo/weights.bin", "org/repo", ["weights.safetensors", "weights.bin"]),
        ("org/repo/weights.pth", "org/repo", ["weights.safetensors", "weights.pth"]),
        ("org/repo/weights.safetensors", "org/repo", ["weights.safetensors"]),
    ],
)
def test_hub_weights_cached_for_a_pretrained_tag(asked, monkeypatch, hf_hub, repo, names):
    cached = asked.pop(0)
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda model, tag: {"hf_hub": hf_hub})
    assert not hub_weights_cached("RN50", "openai")
    assert asked == [(repo, names)]
    cached.add((repo, names[-1]))
    assert hub_weights_cached("RN50", "openai")


def test_hub_weights_cached_for_a_url(asked, monkeypatch, tmp_path: Path) -> None:
    asked.pop(0)
    monkeypatch.setenv("HOME", str(tmp_path))
    url = "https://example.org/clip/RN50.pt"
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda model, tag: {"url": url})
    assert not hub_weights_cached("RN50", "openai")
    (tmp_path / ".cache" / "clip").mkdir(parents=True)
    (tmp_path / ".cache" / "clip" / "RN50.pt").write_bytes(b"")
    assert hub_weights_cached("RN50", "openai")
    assert asked == []  # no hf_hub entry: the Hub cache is not consulted
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda model, tag: {})
    assert not hub_weights_cached("RN50", "nothing")
