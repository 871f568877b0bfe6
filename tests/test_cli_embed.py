"""``cprfl-zoo embed`` (cprfl_zoo/cli/embed.py), run on a tiny open_clip model."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from tiny_clip import (
    TINY_CFG,
    TINY_NAME,
    reference_text_features,
    register_tiny_clip,
    save_tiny_checkpoint,
)

from cprfl_zoo import encode_class_names
from cprfl_zoo.class_lists import VOC_LT_CLASSES
from cprfl_zoo.cli import main
from cprfl_zoo.text.cache import default_cache_dir, load_embeddings_file


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_clip_cli")
    register_tiny_clip(folder)
    return save_tiny_checkpoint(folder / "tiny.safetensors", seed=1)


@pytest.fixture(autouse=True)
def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture
def classes_file(tmp_path: Path) -> Path:
    path = tmp_path / "classes.txt"
    path.write_text("person\n  traffic_light \n\ncell_phone\n", encoding="utf-8")
    return path


NAMES = ["person", "traffic_light", "cell_phone"]


def test_embed_fills_the_cache_that_the_library_then_reads(
    tiny: Path, classes_file: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    argv = ["embed", "--classes", str(classes_file), "--model", TINY_NAME, "--pretrained"]
    argv += [str(tiny), "--cache-dir", str(cache), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    (entry,) = cache.glob("*.safetensors")
    assert f"cached: {entry}" in out and "3 classes -> embeddings (3, 16)" in out
    tensor, key = load_embeddings_file(entry)
    assert key["class_names"] == NAMES
    ref = reference_text_features(tiny, [f"a photo of a {n.replace('_', ' ')}." for n in NAMES])
    torch.testing.assert_close(tensor, ref, atol=1e-5, rtol=1e-5)

    assert main(argv) == 0
    assert f"already cached: {entry}" in capsys.readouterr().out

    # The library, offline, gets the CLI's entry without building CLIP.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    import open_clip

    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("built CLIP"))
    got = encode_class_names(NAMES, TINY_NAME, tiny, cache_dir=cache)
    assert torch.equal(got, tensor)


def test_embed_templates_output_and_default_cache(
    tiny: Path, classes_file: Path, tmp_path: Path, capsys
) -> None:
    out_file = tmp_path / "out" / "coco.safetensors"
    argv = ["embed", "--classes", str(classes_file), "--model", TINY_NAME, "--pretrained"]
    argv += [str(tiny), "--template", "a photo of a {}.", "--template", "a drawing of a {}."]
    argv += ["--output", str(out_file), "--batch-size", "2", "--no-progress"]
    assert main(argv) == 0
    assert f"written: {out_file}" in capsys.readouterr().out
    tensor, key = load_embeddings_file(out_file)
    assert key["templates"] == ["a photo of a {}.", "a drawing of a {}."]
    assert key["normalize"] is True and key["class_names"] == NAMES
    torch.testing.assert_close(tensor.norm(dim=-1), torch.ones(3))
    assert len(list(default_cache_dir().glob("*.safetensors"))) == 1  # $CPRFL_ZOO_CACHE


def test_embed_with_an_extra_model_config(tiny: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "tiny-clip-cli.json"
    config.write_text(json.dumps(TINY_CFG))
    argv = ["embed", "--classes", "voc-lt", "--model", "tiny-clip-cli", "--pretrained", str(tiny)]
    argv += ["--model-config", str(config), "--normalize", "--no-progress"]
    assert main(argv) == 0
    assert "20 classes -> embeddings (20, 16)" in capsys.readouterr().out
    (entry,) = default_cache_dir().glob("tiny-clip-cli-20c-*.safetensors")
    tensor, key = load_embeddings_file(entry)
    assert key["class_names"] == list(VOC_LT_CLASSES) and key["normalize"] is True
    torch.testing.assert_close(tensor.norm(dim=-1), torch.ones(20))


def test_embed_errors_are_reported_not_raised(
    tiny: Path, classes_file: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["embed", "--classes", str(tmp_path / "nope.txt")]) == 1
    assert "no such file, and not a built-in list" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    assert main(["embed", "--classes", str(empty)]) == 1
    assert "holds no class names" in capsys.readouterr().err
    argv = ["embed", "--classes", str(classes_file), "--model", TINY_NAME, "--pretrained"]
    assert main([*argv, "nonexistent.pt"]) == 1
    assert "neither one of its tags" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # a usage error: argparse reports it
        main([*argv, str(tiny), "--batch-size", "0"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "embed: error: argument --batch-size: expected a positive integer, got '0'" in err
    assert main([*argv, str(tiny), "--model-config", str(tmp_path / "x.json")]) == 1
    assert "--model-config" in capsys.readouterr().err
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="could not store"):
        code = main([*argv, str(tiny), "--cache-dir", str(blocker / "c"), "--no-progress"])
    assert code == 1 and "could not be stored in the cache" in capsys.readouterr().err

    # Offline with the default (remote) weights: the message says how to fill the cache.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert main(["embed", "--classes", str(classes_file)]) == 1
    err = capsys.readouterr().err
    assert "cprfl-zoo embed --classes classes.txt --model RN50-quickgelu" in err
