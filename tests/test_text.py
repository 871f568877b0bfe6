from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import warnings
from pathlib import Path

import huggingface_hub.constants
import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
from tiny_clip import TINY_NAME, reference_text_features, register_tiny_clip, save_tiny_checkpoint

from cprfl_zoo import CPRFL, create_cprfl, encode_class_names
from cprfl_zoo.class_lists import COCO_LT_CLASSES
from cprfl_zoo.text import (
    DEFAULT_MODEL_NAME,
    DEFAULT_PRETRAINED,
    DEFAULT_TEMPLATES,
    TEXT_KWARGS,
    OfflineCacheMissError,
    TextConfig,
    TextEncoderSpec,
    TextTower,
    encode_class_names_from_config,
    encode_class_names_info,
    load_text_tower,
    pop_text_encoder_kwargs,
    resolve_text_config,
)
from cprfl_zoo.text.cache import (
    EmbeddingCacheWarning,
    cache_file_name,
    default_cache_dir,
    key_digest,
    load_embeddings_file,
    read_cache_entry,
    write_cache_entry,
)

COCO = list(COCO_LT_CLASSES)
TENSOR = "embeddings"  # the tensor's name inside a cache file
TEMPLATE = "a photo of a {}."


def official_prompts(names: list[str], template: str = TEMPLATE) -> list[str]:
    # The official code: template.format(c.replace("_", " ")).
    return [template.format(n.replace("_", " ")) for n in names]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny random open_clip checkpoint; the config is registered with open_clip."""
    folder = tmp_path_factory.mktemp("tiny_clip")
    register_tiny_clip(folder)
    return save_tiny_checkpoint(folder / "tiny.safetensors")


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture
def no_clip_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to build or download a CLIP model fails the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a CLIP model was built or downloaded")

    monkeypatch.setattr(open_clip, "create_model", forbidden)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", forbidden)
    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", forbidden)


# ---------------------------------------------------------------------- defaults
def test_defaults_resolve_to_the_official_encoder(online, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = TextEncoderSpec.resolve()
    assert (spec.model_name, spec.pretrained) == ("RN50-quickgelu", "openai")
    assert spec.templates == ("a photo of a {}.",) and spec.normalize is False
    assert (DEFAULT_MODEL_NAME, DEFAULT_PRETRAINED, DEFAULT_TEMPLATES) == (
        "RN50-quickgelu",
        "openai",
        ("a photo of a {}.",),
    )
    assert spec.weights_identity() == "tag:openai"
    # The tag's open_clip weights are the QuickGELU ones of OpenAI's RN50.
    assert open_clip.get_pretrained_cfg("RN50-quickgelu", "openai")["quick_gelu"] is True
    assert open_clip.get_model_config("RN50-quickgelu")["quick_gelu"] is True

    # create_cprfl with no text arguments asks for exactly that encoder (weights not built here).
    seen = {}

    def fake_encode(spec, names, batch_size, device, progress):
        seen["spec"] = spec
        return torch.randn(len(names), 1024)

    monkeypatch.setattr("cprfl_zoo.text.encode._encode_with_tower", fake_encode)
    model = create_cprfl(
        "test_resnet",
        class_names=["traffic_light", "dog"],
        pretrained=False,
        embed_dim=32,
        num_heads=2,
        head_dim=8,
        mlp_hidden_dim=24,
    )
    assert seen["spec"] == spec
    cfg = model.text_encoder_cfg
    assert cfg["model_name"] == "RN50-quickgelu" and cfg["pretrained"] == "openai"
    assert cfg["templates"] == ["a photo of a {}."] and cfg["normalize"] is False
    assert cfg["text_dim"] == 1024 and model.prompt_init.in_dim == 1024
    json.dumps(model.model_args)


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CPRFL_ZOO_CACHE", str(tmp_path / "zoo"))
    assert default_cache_dir() == tmp_path / "zoo" / "text_embeddings"
    monkeypatch.delenv("CPRFL_ZOO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "cprfl_zoo" / "text_embeddings"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "cprfl_zoo" / "text_embeddings"


def test_default_cache_key_is_pinned() -> None:
    # Caches filled by earlier versions must keep hitting: the key and its file name never change.
    key = TextConfig.resolve().cache_key(["person", "traffic_light"])
    assert key == {
        "version": 1,
        "model_name": "RN50-quickgelu",
        "weights": "tag:openai",
        "templates": ["a photo of a {}."],
        "normalize": False,
        "text_transform": "underscores-to-spaces",
        "class_names": ["person", "traffic_light"],
    }
    assert key_digest(key) == "68f6e2060b03b68099ce4f0c66297725f463096f7d2054bea5b8fc57e7d03854"
    assert cache_file_name(key) == "RN50-quickgelu-2c-68f6e2060b03b680.safetensors"


def test_text_config_round_trips_through_its_dict(tiny: Path) -> None:
    default = TextConfig.resolve()
    assert default == TextConfig() and TextEncoderSpec is TextConfig
    assert list(default.provenance(1024)) == [
        "model_name",
        "pretrained",
        "weights",
        "templates",
        "normalize",
        "text_transform",
        "text_dim",
        "open_clip_version",
    ]
    configs = [
        default,
        TextConfig.resolve(TINY_NAME, tiny, ["{}", "a {}"]),
        TextConfig.resolve(_BagOfLetters(), normalize=True),
    ]
    for cfg in configs:
        for sized in (cfg, TextConfig.from_dict(cfg.provenance(16))):
            saved = json.loads(json.dumps(sized.to_dict()))
            assert TextConfig.from_dict(saved) == sized
    custom = TextConfig.from_dict(configs[2].to_dict())
    assert custom.to_dict() == {"model_name": "custom:test_text._BagOfLetters", "normalize": True}
    with pytest.raises(ValueError, match="custom text encoder"):
        encode_class_names_from_config(["dog"], configs[2].to_dict())


def test_resolve_text_config_puts_keywords_over_a_saved_config(tiny: Path, tmp_path) -> None:
    assert resolve_text_config() == TextConfig.resolve()
    saved = TextConfig.resolve(TINY_NAME, tiny).provenance(16)
    cfg = resolve_text_config(
        templates=["{}", "a {}"],
        normalize_embeddings=True,
        embed_cache_dir=tmp_path,
        text_encoder_cfg=saved,
    )
    assert (cfg.model_name, cfg.pretrained) == (TINY_NAME, str(tiny.resolve()))
    assert cfg.templates == ("{}", "a {}") and cfg.normalize and cfg.cache_dir == tmp_path
    assert cfg.text_dim is None  # a new request: the width is known once encoded
    kwargs = dict.fromkeys(TEXT_KWARGS, "x") | {"dim": 32, "templates": None}
    found = pop_text_encoder_kwargs(kwargs)
    assert kwargs == {"dim": 32} and set(found) == set(TEXT_KWARGS) - {"templates"}
    with pytest.raises(ValueError, match="normalize=False is only possible"):
        resolve_text_config(templates=["{}", "a {}"], text_encoder_cfg=saved)


def test_class_names_are_checked_once_by_the_text_side(
    tiny: Path, online, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cprfl_zoo.model
    import cprfl_zoo.text.encode

    calls: list[str] = []

    def counting(where, real):
        def check(*args, **kwargs):
            calls.append(where)
            return real(*args, **kwargs)

        return check

    for module in (cprfl_zoo.model, cprfl_zoo.text.encode):
        real = module.validate_class_inputs
        monkeypatch.setattr(module, "validate_class_inputs", counting(module.__name__, real))
    model = create_cprfl(
        "test_resnet",
        class_names=["dog", "cat"],
        pretrained=False,
        text_encoder=TINY_NAME,
        text_pretrained=tiny,
        embed_dim=32,
        num_heads=2,
        head_dim=8,
        mlp_hidden_dim=24,
    )
    assert calls.count("cprfl_zoo.text.encode") == 1
    calls.clear()
    model.set_classes(["zebra", "tv"])
    assert calls == ["cprfl_zoo.text.encode", "cprfl_zoo.model"]


# ---------------------------------------------------------------------- numerics
def test_embeddings_equal_encode_text_of_the_prompts(tiny: Path, online) -> None:
    names = COCO[:20]
    got = encode_class_names(names, TINY_NAME, tiny, progress=False)
    ref = reference_text_features(tiny, official_prompts(names))
    assert got.dtype == torch.float32 and got.shape == (20, 16)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert "traffic light" in official_prompts(names)[9]


def test_trimming_changes_nothing(tiny: Path) -> None:
    spec = TextEncoderSpec.resolve(TINY_NAME, tiny)
    tower = load_text_tower(spec)
    assert tower.trimmable
    assert not hasattr(tower, "visual") and "visual" not in dict(tower.named_modules())
    full = open_clip.get_tokenizer(TINY_NAME)(official_prompts(COCO))
    trimmed = tower.tokenize(COCO)
    # COCO's longest prompt ("a photo of a tennis racket.") needs a handful of the 77 positions.
    assert trimmed.shape[1] < 12
    assert torch.equal(trimmed, full[:, : trimmed.shape[1]])
    assert (full[:, trimmed.shape[1] :] == 0).all()
    model = open_clip.create_model(TINY_NAME, pretrained=str(tiny)).eval()
    with torch.no_grad():
        ref = model.encode_text(full)
        torch.testing.assert_close(tower.encode(full), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(tower.encode(trimmed), ref, atol=1e-5, rtol=1e-5)
        # Per-row trimming (each prompt to its own length) agrees as well.
        row = tower.encode(full[3:4, : int(tower.needed_lengths(full[3:4])[0])])
        torch.testing.assert_close(row, ref[3:4], atol=1e-5, rtol=1e-5)


def test_template_ensemble_normalises_averages_renormalises(tiny: Path, online) -> None:
    names = ["dog", "hot_dog", "cell_phone"]
    templates = ["a photo of a {}.", "a drawing of a {}.", "{}"]
    got = encode_class_names(names, TINY_NAME, tiny, templates, progress=False)
    feats = [
        F.normalize(reference_text_features(tiny, official_prompts(names, t)), dim=-1)
        for t in templates
    ]
    ref = F.normalize(sum(feats) / len(templates), dim=-1)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    single = encode_class_names(names, TINY_NAME, tiny, normalize=True, progress=False)
    ref1 = F.normalize(reference_text_features(tiny, official_prompts(names)), dim=-1)
    torch.testing.assert_close(single, ref1, atol=1e-5, rtol=1e-5)


def test_ten_thousand_names_in_batches_with_progress(tiny: Path, online, capsys) -> None:
    names = [f"class_{i}" for i in range(10_000)]
    got = encode_class_names(names, TINY_NAME, tiny, batch_size=1024, progress=True)
    assert got.shape == (10_000, 16) and torch.isfinite(got).all()
    assert "10000/10000" in capsys.readouterr().err
    pick = [0, 4321, 9999]
    ref = reference_text_features(tiny, official_prompts([names[i] for i in pick]))
    torch.testing.assert_close(got[pick], ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- bad input
def test_bad_requests_name_the_problem(tiny: Path, online) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        encode_class_names(["dog"], TINY_NAME, tiny, templates=["a photo"])
    with pytest.raises(ValueError, match="exactly one"):
        encode_class_names(["dog"], TINY_NAME, tiny, templates=["{} and {}"])
    with pytest.raises(ValueError, match="non-empty sequence"):
        encode_class_names(["dog"], TINY_NAME, tiny, templates=[])
    with pytest.raises(ValueError, match="unknown open_clip model name 'RN5O-quickgelu'"):
        encode_class_names(["dog"], "RN5O-quickgelu")
    with pytest.raises(ValueError, match="neither one of its tags"):
        encode_class_names(["dog"], TINY_NAME, tiny.with_name("missing.safetensors"))
    with pytest.raises(ValueError, match="pretrained is needed"):
        encode_class_names(["dog"], TINY_NAME)
    with pytest.raises(ValueError, match="carries its own weights"):
        encode_class_names(["dog"], "hf-hub:timm/some-clip", "openai")
    with pytest.raises(ValueError, match="normalize=False is only possible with one template"):
        encode_class_names(["dog"], TINY_NAME, tiny, ["{}", "a {}"], normalize=False)
    with pytest.raises(ValueError, match="empty"):
        encode_class_names([], TINY_NAME, tiny)
    with pytest.raises(ValueError, match="duplicate class name 'dog'"):
        encode_class_names(["dog", "dog"], TINY_NAME, tiny)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        encode_class_names(["dog"], TINY_NAME, tiny, batch_size=0)
    with pytest.raises(ValueError, match="custom text encoder"):
        encode_class_names_from_config(["dog"], {"model_name": "custom:my.encoder"})


# ---------------------------------------------------------------------- the cache
def test_miss_writes_a_checked_file_and_a_hit_never_builds_clip(
    tiny: Path, online, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = COCO[:10]
    first = encode_class_names_info(names, TINY_NAME, tiny, progress=False)
    assert not first.from_cache and first.cache_file is not None and first.cache_file.is_file()
    assert first.cache_file.parent == default_cache_dir()
    tensor, key = load_embeddings_file(first.cache_file)
    assert key["class_names"] == names and key["model_name"] == TINY_NAME
    assert key["templates"] == [TEMPLATE] and key["normalize"] is False
    assert key["weights"].startswith("sha256:") and torch.equal(tensor, first.embeddings)

    def forbidden(*args, **kwargs):
        raise AssertionError("a CLIP model was built on a cache hit")

    monkeypatch.setattr(open_clip, "create_model", forbidden)
    second = encode_class_names_info(names, TINY_NAME, tiny)
    assert second.from_cache and torch.equal(second.embeddings, first.embeddings)
    assert second.text_encoder_cfg == first.text_encoder_cfg
    # Another order of the same names is another entry.
    with pytest.raises(AssertionError, match="built on a cache hit"):
        encode_class_names(names[::-1], TINY_NAME, tiny)


def test_default_encoder_served_from_cache_without_weights(online, no_clip_build) -> None:
    names = ["person", "traffic_light"]
    spec = TextEncoderSpec.resolve()
    stored = torch.randn(2, 1024)
    write_cache_entry(spec.cache_key(names), stored, default_cache_dir())
    assert torch.equal(encode_class_names(names), stored)


def _entry(tiny: Path, names: list[str]) -> Path:
    key = TextEncoderSpec.resolve(TINY_NAME, tiny).cache_key(names)
    return default_cache_dir() / cache_file_name(key)


@pytest.mark.parametrize(
    "damage", ["truncate", "garbage", "flip", "other-key", "empty", "metadata-list"]
)
def test_corrupt_or_mismatching_file_is_reported_and_recomputed(
    tiny: Path, online, damage: str
) -> None:
    names = COCO[:6]
    good = encode_class_names(names, TINY_NAME, tiny, progress=False)
    path = _entry(tiny, names)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00\x01not a safetensors file" * 10)
    elif damage == "flip":
        path.write_bytes(data[:-7] + bytes([data[-7] ^ 0xFF]) + data[-6:])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "metadata-list":
        header = {"__metadata__": ["not", "a", "dict"]}
        header[TENSOR] = {"dtype": "F32", "shape": [6, 16], "data_offsets": [0, 384]}
        raw = json.dumps(header).encode()
        path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(384))
    else:  # a valid file written for other class names, sitting at this entry's path
        other = TextEncoderSpec.resolve(TINY_NAME, tiny).cache_key(["cat"] * 1 + names[1:])
        from cprfl_zoo.text.cache import save_embeddings_file

        save_embeddings_file(path, torch.randn(6, 16), other)
    expected = {
        "truncate": "not a readable safetensors",
        "garbage": "not a readable safetensors",
        "empty": "not a readable safetensors",
        "metadata-list": "__metadata__ is not a JSON object",
        "flip": "checksum",
        "other-key": "class names differ",
    }[damage]
    with pytest.warns(EmbeddingCacheWarning, match=expected):
        again = encode_class_names_info(names, TINY_NAME, tiny, progress=False)
    assert not again.from_cache
    torch.testing.assert_close(again.embeddings, good, atol=0, rtol=0)
    # The entry was rewritten and is trusted again.
    tensor, _ = load_embeddings_file(
        path, TextEncoderSpec.resolve(TINY_NAME, tiny).cache_key(names)
    )
    assert torch.equal(tensor, good)


def test_unwritable_cache_still_works_with_a_warning(
    tiny: Path, online, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = COCO[:4]
    ref = reference_text_features(tiny, official_prompts(names))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.warns(EmbeddingCacheWarning, match="could not store"):
        r = encode_class_names_info(names, TINY_NAME, tiny, cache_dir=blocker / "cache")
    assert r.cache_file is None
    torch.testing.assert_close(r.embeddings, ref, atol=1e-5, rtol=1e-5)

    # A read-only folder (EACCES on creating the temporary file), as for a non-root user.
    ro = tmp_path / "ro"
    ro.mkdir()

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(ro))

    monkeypatch.setattr("cprfl_zoo.fileio.tempfile.mkstemp", denied)
    with pytest.warns(EmbeddingCacheWarning, match="Permission denied"):
        r = encode_class_names_info(names, TINY_NAME, tiny, cache_dir=ro)
    assert r.cache_file is None and list(ro.iterdir()) == []
    torch.testing.assert_close(r.embeddings, ref, atol=1e-5, rtol=1e-5)


def _concurrent_writer(ckpt: str, cache: str, names: list[str], barrier, results) -> None:
    # A forked process: the imports and the registered tiny config come with it. It stays on
    # the CPU, since CUDA cannot be used again in a child forked after the parent used it.
    try:
        warnings.simplefilter("error", EmbeddingCacheWarning)
        barrier.wait(timeout=60)
        result = encode_class_names_info(
            names, TINY_NAME, ckpt, cache_dir=cache, progress=False, device="cpu"
        )
        key = TextEncoderSpec.resolve(TINY_NAME, ckpt).cache_key(names)
        for _ in range(30):
            write_cache_entry(key, result.embeddings, Path(cache))
            got = read_cache_entry(key, Path(cache))
            # The other process's tensor may differ in the last bits (its own SIMD alignment).
            assert got is not None
            torch.testing.assert_close(got, result.embeddings, atol=1e-5, rtol=1e-5)
        results.put(("ok", result.embeddings.tolist()))
    except BaseException as e:
        results.put(("error", repr(e)[:2000]))


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_concurrent_writers_both_end_with_the_right_tensor(tiny: Path, tmp_path: Path) -> None:
    # fork, not spawn: a spawned child would spend seconds importing torch, timm and open_clip.
    ctx = multiprocessing.get_context("fork")
    cache = tmp_path / "cache"
    names = COCO[:30]
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(
            target=_concurrent_writer, args=(str(tiny), str(cache), names, barrier, results)
        )
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    outputs = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [status for status, _ in outputs] == ["ok", "ok"], outputs
    assert [p.exitcode for p in procs] == [0, 0]
    ref = reference_text_features(tiny, official_prompts(names))
    for _, rows in outputs:
        torch.testing.assert_close(torch.tensor(rows), ref, atol=1e-5, rtol=1e-5)
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 1 and files[0].endswith(".safetensors"), files  # no temporary leftovers
    key = TextEncoderSpec.resolve(TINY_NAME, tiny).cache_key(names)
    tensor, _ = load_embeddings_file(cache / files[0], key)
    torch.testing.assert_close(tensor, ref, atol=1e-5, rtol=1e-5)


def _alternating_writer(cache: str, key: dict, tensors: list, barrier, results) -> None:
    try:
        barrier.wait(timeout=60)
        for i in range(1500):
            write_cache_entry(key, tensors[i % 2], Path(cache))
        results.put(("ok", ""))
    except BaseException as e:
        results.put(("error", repr(e)[:2000]))


def _snapshot_reader(cache: str, key: dict, tensors: list, barrier, results) -> None:
    try:
        warnings.simplefilter("error", EmbeddingCacheWarning)
        barrier.wait(timeout=60)
        for _ in range(1500):
            got = read_cache_entry(key, Path(cache))
            assert got is not None and any(torch.equal(got, t) for t in tensors), got
        results.put(("ok", ""))
    except BaseException as e:
        results.put(("error", repr(e)[:2000]))


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_read_during_renames_gets_one_whole_file(tmp_path: Path) -> None:
    # Two valid entries for one key, renamed over each other while another process reads: every
    # read must be one of them, header and data from the same file (a lazy reader that reopens
    # the path mixes them and fails its checksum).
    ctx = multiprocessing.get_context("fork")
    cache, key = tmp_path / "cache", {"model_name": "m", "class_names": ["a", "b", "c"]}
    tensors = [torch.randn(3, 256, generator=torch.Generator().manual_seed(i)) for i in (0, 1)]
    write_cache_entry(key, tensors[0], cache)
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=target, args=(str(cache), key, tensors, barrier, results))
        for target in (_alternating_writer, _snapshot_reader)
    ]
    for p in procs:
        p.start()
    outputs = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert outputs == [("ok", ""), ("ok", "")], outputs
    assert [p.name for p in cache.iterdir()] == [cache_file_name(key)]


# ---------------------------------------------------------------------- offline
def test_offline_miss_names_the_entry_and_how_to_fill_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_clip_build
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.cache/clip/RN50.pt either
    names = ["person", "traffic_light"]
    entry = default_cache_dir() / cache_file_name(TextEncoderSpec.resolve().cache_key(names))
    with pytest.raises(OfflineCacheMissError, match="cprfl-zoo embed") as info:
        encode_class_names(names)
    message = str(info.value)
    assert str(entry) in message and "HF_HUB_OFFLINE" in message
    assert "--model RN50-quickgelu --pretrained openai" in message
    assert "text_embeddings=" in message
    with pytest.raises(OfflineCacheMissError, match="cprfl-zoo embed"):
        create_cprfl("test_resnet", class_names=names, pretrained=False)
    # A filled cache serves the same request offline.
    write_cache_entry(TextEncoderSpec.resolve().cache_key(names), torch.ones(2, 8), entry.parent)
    assert torch.equal(encode_class_names(names), torch.ones(2, 8))


def test_unreachable_hub_fails_at_once_naming_the_weight_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, online, no_clip_build, tiny: Path
) -> None:
    """Without HF_HUB_OFFLINE, a Hub that does not answer is found out by one short probe, not
    by a minute of huggingface_hub's retries; the probe only runs when the weights are missing."""
    from cprfl_zoo import network

    probes: list[str] = []
    monkeypatch.setattr(network, "_connects", lambda host, port, timeout: probes.append(host))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(OfflineCacheMissError) as info:
        encode_class_names(["person", "dog"])
    message = str(info.value)
    assert "the Hugging Face Hub (https://huggingface.co) did not answer within 5 s" in message
    assert (
        "open_clip_model.safetensors or open_clip_pytorch_model.bin of "
        "https://huggingface.co/timm/resnet50_clip.openai is not in the local Hugging Face cache"
    ) in message
    assert "cprfl-zoo embed --classes classes.txt --model RN50-quickgelu" in message
    assert probes == ["huggingface.co"]
    with pytest.raises(OfflineCacheMissError, match="trainable_text_encoder=True needs"):
        create_cprfl(
            "test_resnet", class_names=["a"], pretrained=False,
            trainable_text_encoder=True,
        )  # fmt: skip
    # Local weights need no Hub: no probe.
    monkeypatch.setattr(open_clip, "create_model", open_clip.factory.create_model)
    monkeypatch.setattr(network, "_probes", {})
    encode_class_names(["dog"], TINY_NAME, tiny, cache_dir=tmp_path / "emb")
    assert probes == ["huggingface.co"]


def test_offline_with_local_or_hub_cached_weights_computes(
    tiny: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    got = encode_class_names(["dog"], TINY_NAME, tiny)  # a local checkpoint needs no network
    torch.testing.assert_close(got, reference_text_features(tiny, ["a photo of a dog."]))
    spec = TextEncoderSpec.resolve()
    assert not spec.weights_available_offline()
    snapshot = tmp_path / "hf" / "models--timm--resnet50_clip.openai" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"weights")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc")
    assert spec.weights_available_offline()


# ---------------------------------------------------------------------- create_cprfl
def test_create_cprfl_text_kwargs_and_cache_dir(tiny: Path, online, tmp_path: Path) -> None:
    names = ["dog", "cat", "traffic_light"]
    model = create_cprfl(
        "test_resnet",
        class_names=names,
        pretrained=False,
        text_encoder=TINY_NAME,
        text_pretrained=tiny,
        embed_cache_dir=tmp_path / "emb",
        embed_dim=32,
        num_heads=2,
        head_dim=8,
        mlp_hidden_dim=24,
    )
    ref = reference_text_features(tiny, official_prompts(names))
    torch.testing.assert_close(model.class_embeddings, ref, atol=1e-5, rtol=1e-5)
    assert model.text_dim == 16 and model.prompt_init.in_dim == 16  # m sets the PI input width
    assert len(list((tmp_path / "emb").glob("*.safetensors"))) == 1
    cfg = model.text_encoder_cfg
    assert cfg["model_name"] == TINY_NAME and cfg["pretrained"] == str(tiny.resolve())
    assert cfg["weights"].startswith("sha256:") and "cache_dir" not in cfg
    json.dumps(model.model_args)
    # The same via timm, and the recorded config reproduces the embeddings.
    again = timm.create_model(
        "cprfl",
        backbone="test_resnet",
        class_names=names,
        text_encoder_cfg=cfg,
        embed_dim=32,
        num_heads=2,
        head_dim=8,
        mlp_hidden_dim=24,
    )
    assert torch.equal(again.class_embeddings, model.class_embeddings)
    with pytest.raises(ValueError, match="none are computed here: text_embeddings were given"):
        create_cprfl(
            "test_resnet",
            class_names=names,
            text_embeddings=torch.randn(3, 16),
            pretrained=False,
            text_encoder=TINY_NAME,
        )


def test_set_classes_without_embeddings_uses_the_recorded_encoder(tiny: Path, online) -> None:
    model = create_cprfl(
        "test_resnet",
        class_names=["dog", "cat"],
        pretrained=False,
        text_encoder=TINY_NAME,
        text_pretrained=tiny,
        embed_dim=32,
        num_heads=2,
        head_dim=8,
        mlp_hidden_dim=24,
    )
    model.set_classes(["zebra", "hot_dog", "tv"])
    ref = reference_text_features(tiny, official_prompts(["zebra", "hot_dog", "tv"]))
    torch.testing.assert_close(model.class_embeddings, ref, atol=1e-5, rtol=1e-5)
    model.text_encoder_cfg["weights"] = "official CPRFL checkpoint (fine-tuned text tower)"
    with pytest.raises(ValueError, match="were made with weights 'official CPRFL"):
        model.set_classes(["bird"])


class _BagOfLetters:
    """A stand-in "bring your own" text encoder: letter counts of each name."""

    def __call__(self, names: list[str]) -> torch.Tensor:
        out = torch.zeros(len(names), 26)
        for i, name in enumerate(names):
            for ch in name.lower():
                if "a" <= ch <= "z":
                    out[i, ord(ch) - 97] += 1
        return out


def test_callable_text_encoder(online) -> None:
    names = ["dog", "cat", "hot_dog"]
    enc = _BagOfLetters()
    model = create_cprfl(
        "test_resnet",
        class_names=names,
        pretrained=False,
        text_encoder=enc,
        embed_dim=32,
        num_heads=2,
        head_dim=8,
        mlp_hidden_dim=24,
    )
    assert torch.equal(model.class_embeddings, enc(names)) and model.text_dim == 26
    assert model.text_encoder_cfg["model_name"] == "custom:test_text._BagOfLetters"
    json.dumps(model.model_args)
    assert list(default_cache_dir().glob("*")) == []  # a callable is never cached
    normed = encode_class_names(names, enc, normalize=True)
    torch.testing.assert_close(normed, F.normalize(enc(names), dim=-1))
    with pytest.raises(ValueError, match=r"returned shape \(2, 26\); expected \(3, m\)"):
        encode_class_names(names, lambda n: enc(n)[:2])
    with pytest.raises(TypeError, match="not a \\(C, m\\) tensor"):
        encode_class_names(names, lambda n: "nope")
    with pytest.raises(ValueError, match="callable text encoder receives the class names"):
        encode_class_names(names, enc, templates=["a {}"])
    with pytest.raises(ValueError, match="custom text encoder"):
        model.set_classes(["bird"])


# ---------------------------------------------------------------------- trainable mode
def _trainable(tiny: Path, names: list[str]) -> CPRFL:
    return create_cprfl(
        "test_resnet",
        class_names=names,
        pretrained=False,
        text_encoder=TINY_NAME,
        text_pretrained=tiny,
        trainable_text_encoder=True,
        embed_dim=32,
        num_heads=2,
        head_dim=8,
        mlp_hidden_dim=24,
    )


def test_trainable_text_tower_gets_gradients(tiny: Path, online) -> None:
    names = ["dog", "traffic_light", "cat"]
    model = _trainable(tiny, names)
    tower = model.text_tower
    assert isinstance(tower, TextTower) and model.model_args["trainable_text_encoder"] is True
    assert tower.tokens.shape == (3, int(tower.needed_lengths(tower.tokens).max()))
    assert "text_tower.tokens" in model.state_dict()
    frozen = encode_class_names(names, TINY_NAME, tiny)  # both modes start from the same W
    torch.testing.assert_close(model.get_class_embeddings(), frozen, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.class_embeddings, frozen, atol=1e-5, rtol=1e-5)

    x = torch.randn(2, 3, 32, 32)
    model(x).square().mean().backward()
    for name in (
        "token_embedding.weight",
        "ln_final.weight",
        "text_projection",
        "transformer.resblocks.0.attn.in_proj_weight",
        "transformer.resblocks.1.mlp.c_fc.weight",
    ):
        grad = tower.text.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    before = model.get_class_embeddings().detach().clone()
    torch.optim.SGD(tower.parameters(), lr=1.0).step()
    assert not torch.allclose(model.get_class_embeddings(), before)


def test_trainable_tower_joins_weight_decay_and_checkpointing_hooks(tiny: Path, online) -> None:
    model = _trainable(tiny, ["dog", "cat"])
    nwd = model.no_weight_decay()
    assert "text_tower.text.positional_embedding" in nwd
    assert "text_tower.text.positional_embedding" in dict(model.named_parameters())
    model.set_grad_checkpointing(True)
    assert model.text_tower.text.transformer.grad_checkpointing is True


def test_trainable_eval_freezes_once(tiny: Path, online, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _trainable(tiny, ["dog", "cat"]).eval()
    with torch.no_grad():
        model.text_tower.text.ln_final.bias.add_(0.3)
        expected = model.text_tower()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        live = model(x)
    w = model.freeze_class_embeddings()
    assert model.class_embeddings_frozen and torch.equal(w, expected)
    calls = []
    monkeypatch.setattr(model.text_tower, "forward", lambda: calls.append(1) or expected)
    with torch.no_grad():
        torch.testing.assert_close(model(x), live)
        model(x)
    assert calls == []  # not re-encoded per batch
    model.train()
    assert not model.class_embeddings_frozen
    model.get_class_embeddings()
    assert calls == [1]


def test_trainable_save_and_load_keep_the_tuned_tower(
    tiny: Path, online, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from timm.models._hub import save_for_hf

    model = _trainable(tiny, ["dog", "traffic_light", "cat"]).eval()
    with torch.no_grad():
        model.text_tower.text.text_projection.mul_(1.5)
    save_for_hf(model, tmp_path / "timm", safe_serialization=True)
    model.save_pretrained(tmp_path / "zoo")

    def forbidden(*args, **kwargs):
        raise AssertionError("loading a saved model must not need CLIP")

    monkeypatch.setattr(open_clip, "create_model", forbidden)
    x = torch.randn(2, 3, 32, 32)
    for loaded in (
        timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True),
        CPRFL.from_pretrained(tmp_path / "zoo"),
    ):
        loaded.eval()
        assert loaded.text_tower is not None
        assert torch.equal(loaded.text_tower.tokens, model.text_tower.tokens)
        assert torch.equal(
            loaded.text_tower.text.text_projection, model.text_tower.text.text_projection
        )
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x))


def test_trainable_set_classes_and_errors(tiny: Path, online) -> None:
    model = _trainable(tiny, ["dog", "cat"])
    model.set_classes(["zebra", "hot_dog", "tv"])
    ref = reference_text_features(tiny, official_prompts(["zebra", "hot_dog", "tv"]))
    torch.testing.assert_close(model.get_class_embeddings(), ref, atol=1e-5, rtol=1e-5)
    assert model.text_encoder_cfg["text_tower"]["token_length"] == model.text_tower.tokens.shape[1]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(ValueError, match="without text_embeddings"):
        model.set_classes(["a"], torch.randn(1, 16))
    with pytest.raises(ValueError, match="do not pass text_embeddings"):
        create_cprfl(
            "test_resnet",
            class_names=["a"],
            text_embeddings=torch.randn(1, 16),
            pretrained=False,
            trainable_text_encoder=True,
        )
    with pytest.raises(ValueError, match="callable text_encoder can only give frozen"):
        create_cprfl(
            "test_resnet",
            class_names=["a"],
            pretrained=False,
            text_encoder=_BagOfLetters(),
            trainable_text_encoder=True,
        )
    with pytest.raises(ValueError, match="needs the text tower's architecture"):
        CPRFL(
            "test_resnet",
            ["a"],
            text_dim=16,
            trainable_text_encoder=True,
            embed_dim=32,
            num_heads=2,
            head_dim=8,
            mlp_hidden_dim=24,
        )


def test_tower_config_round_trip(tiny: Path) -> None:
    tower = load_text_tower(TextEncoderSpec.resolve(TINY_NAME, tiny, ["{}", "a {}"]))
    tower.set_class_names(["dog", "cat"])
    rebuilt = TextTower.from_config(json.loads(json.dumps(tower.config)), num_classes=2)
    rebuilt.load_state_dict(tower.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(), tower())
    assert rebuilt().shape == (2, 16)
    torch.testing.assert_close(rebuilt().norm(dim=-1), torch.ones(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_cache_entry({"model_name": "x", "class_names": []}, default_cache_dir()) is None


# ---------------------------------------------------------------------- logging
def test_encoding_leaves_the_applications_logging_alone(tiny: Path, tmp_path: Path) -> None:
    """open_clip's root-logger calls would install a root handler (logging.basicConfig), after
    which every huggingface_hub record prints twice: its own handler's copy and the root's."""
    tests = Path(__file__).resolve().parent
    code = (
        "import logging, sys\n"
        "from pathlib import Path\n"
        "from tiny_clip import TINY_NAME, register_tiny_clip\n"
        "from cprfl_zoo.text import encode_class_names\n"
        "register_tiny_clip(Path(sys.argv[2]))\n"
        "encode_class_names(['dog'], TINY_NAME, sys.argv[1], cache_dir=sys.argv[2],\n"
        "                   progress=False)\n"
        "print(logging.getLogger().handlers)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tests.parent), str(tests)]))
    done = subprocess.run(
        [sys.executable, "-c", code, str(tiny), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
