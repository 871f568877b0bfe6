from __future__ import annotations

import json
from importlib.metadata import entry_points
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
from cprfl_zoo.cli import (
    CommandError,
    build_parser,
    main,
    read_class_counts,
    read_class_names,
)
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


def test_console_script_is_declared() -> None:
    (ep,) = entry_points(group="console_scripts", name="cprfl-zoo")
    assert ep.value == "cprfl_zoo.cli:main"


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
    assert main([*argv, str(tiny), "--batch-size", "0"]) == 1
    assert "--batch-size must be positive" in capsys.readouterr().err
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


def test_usage_errors_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["embed"])
    assert info.value.code == 2 and "--classes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["embed", "--classes", "x", "--normalize", "--no-normalize"])
    assert info.value.code == 2 and "not allowed with" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and "cprfl-zoo" in capsys.readouterr().out


def test_parser_lists_subcommands() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert "embed" in sub.choices
    args = parser.parse_args(["embed", "--classes", "coco-lt"])
    assert args.model == "RN50-quickgelu" and args.pretrained is None and args.templates is None


def test_read_class_names(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("a b\n\n c \n", encoding="utf-8")
    assert read_class_names(str(path)) == ["a b", "c"]
    assert read_class_names("voc-lt") == list(VOC_LT_CLASSES)


def test_read_class_names_is_the_data_reader(tmp_path: Path) -> None:
    # the CLI reads --classes as examples/train.py does: label files, duplicates refused
    path = tmp_path / "c.txt"
    path.write_text("dog 1\ncat 0\n", encoding="utf-8")
    assert read_class_names(str(path)) == ["cat", "dog"]
    path.write_text("cat\ncat\n", encoding="utf-8")
    with pytest.raises(CommandError, match=r"--classes .*c\.txt: duplicate class name 'cat'"):
        read_class_names(str(path))
    with pytest.raises(CommandError, match=r"--classes nope: no such file, and not a built-in"):
        read_class_names("nope")


def test_read_class_names_bad_files(tmp_path: Path) -> None:
    # a folder used to be "no such file"; other encodings a bare UnicodeDecodeError
    with pytest.raises(CommandError, match=r"--classes .* is a folder; expected a text file"):
        read_class_names(str(tmp_path))
    path = tmp_path / "c.txt"
    path.write_bytes(b"\xef\xbb\xbfcat\ndog\n")
    assert read_class_names(str(path)) == ["cat", "dog"]  # the BOM is not part of 'cat'
    path.write_bytes(b"cat\nd\xf6g\n")
    with pytest.raises(CommandError, match=r"--classes .*c\.txt:2: not UTF-8 text \(byte 0xf6"):
        read_class_names(str(path))


def test_read_class_counts_skips_whitespace_only_lines(tmp_path: Path) -> None:
    # a line of spaces (or the lone CR of a CRLF file's last line) used to be entry '' and fail
    path = tmp_path / "freq.txt"
    path.write_bytes(b"5\r\n  \r\n7\r\n\t\n3\r\n\r")
    assert read_class_counts(str(path), 3) == [5, 7, 3]
    path.write_text("5\n \n7\n", encoding="utf-8")
    with pytest.raises(CommandError, match=r"2 counts for a model with 3 classes"):
        read_class_counts(str(path), 3)
    path.write_text("5\nx\n7\n", encoding="utf-8")
    with pytest.raises(CommandError, match=r"entry 2 is 'x', not a whole number"):
        read_class_counts(str(path), 3)


def test_convert_official_reports_a_folder_checkpoint(tmp_path: Path, capsys) -> None:
    argv = ["convert-official", str(tmp_path), "--classes", "voc-lt", "--out", str(tmp_path / "o")]
    assert main(argv) == 1
    assert "is a folder; expected the .pth / .pth.tar file" in capsys.readouterr().err


def test_parser_has_the_prediction_commands() -> None:
    parser = build_parser()
    args = parser.parse_args(["predict", "m", "a.jpg", "photos/"])
    assert args.images == ["a.jpg", "photos/"] and args.batch_size == 32 and args.workers == 2
    assert args.output is None and args.threshold is None and args.device is None
    args = parser.parse_args(["evaluate", "m", "test.txt", "--images", "root"])
    assert args.list_file == "test.txt" and args.class_freq is None and args.output is None
    args = parser.parse_args(["calibrate", "m", "val.txt", "--images", "r", "--output", "o"])
    assert args.min_positives == 1 and args.output == "o"
    with pytest.raises(SystemExit):
        parser.parse_args(["calibrate", "m", "val.txt", "--images", "r"])  # --output required
