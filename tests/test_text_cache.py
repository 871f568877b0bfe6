"""Every check of the embedding cache's reader (cprfl_zoo/text/cache.py), each on a file made to
fail exactly that check and pass the ones before it, so that removing a check fails its test."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from cprfl_zoo.text.cache import (
    FORMAT,
    TENSOR_NAME,
    EmbeddingCacheWarning,
    cache_file_name,
    load_embeddings_file,
    read_cache_entry,
    save_embeddings_file,
)

KEY = {"model_name": "tiny", "pretrained": "w", "class_names": ["cat", "dog"]}


def _write_raw(path: Path, tensors: dict, metadata: dict | None) -> Path:
    path.write_bytes(save(tensors, metadata=metadata))
    return path


def _metadata(tensor: torch.Tensor, **changes) -> dict:
    """The metadata save_embeddings_file writes for KEY, with changes (None removes a field)."""
    import cprfl_zoo.text.cache as cache

    meta = {
        "format": FORMAT,
        "key": json.dumps(KEY, sort_keys=True),
        "sha256": cache._tensor_sha256(tensor),
        "shape": json.dumps(list(tensor.shape)),
        "provenance": "{}",
    }
    meta.update(changes)
    return {k: v for k, v in meta.items() if v is not None}


def test_a_good_file_round_trips(tmp_path: Path) -> None:
    tensor = torch.randn(2, 4)
    path = save_embeddings_file(tmp_path / "e.safetensors", tensor.double(), KEY, {"by": "test"})
    loaded, key = load_embeddings_file(path, KEY)
    assert loaded.dtype == torch.float32 and torch.equal(loaded, tensor)
    assert key == KEY
    assert load_embeddings_file(path)[1] == KEY  # without a key to check against


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_infinite_values_are_refused(tmp_path: Path, value: float) -> None:
    tensor = torch.randn(2, 4)
    tensor[1, 2] = value
    # written by the package itself: the checksum matches, only the values are wrong
    path = save_embeddings_file(tmp_path / "e.safetensors", tensor, KEY)
    with pytest.raises(ValueError, match=r"e\.safetensors holds NaN or infinite values"):
        load_embeddings_file(path, KEY)


def test_a_row_count_other_than_the_class_count_is_refused(tmp_path: Path) -> None:
    path = save_embeddings_file(tmp_path / "e.safetensors", torch.randn(3, 4), KEY)
    with pytest.raises(ValueError, match=r"e\.safetensors holds 3 rows for 2 class names"):
        load_embeddings_file(path, KEY)
    # a key without class names has no count to check
    other = {"model_name": "tiny"}
    path = save_embeddings_file(tmp_path / "f.safetensors", torch.randn(3, 4), other)
    assert load_embeddings_file(path, other)[0].shape == (3, 4)


def test_a_bad_entry_is_a_warned_miss(tmp_path: Path) -> None:
    tensor = torch.full((2, 4), float("nan"))
    save_embeddings_file(tmp_path / cache_file_name(KEY), tensor, KEY)
    with pytest.warns(EmbeddingCacheWarning, match="holds NaN or infinite values; recomputing"):
        assert read_cache_entry(KEY, tmp_path) is None
    save_embeddings_file(tmp_path / cache_file_name(KEY), torch.ones(2, 4), KEY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(read_cache_entry(KEY, tmp_path), torch.ones(2, 4))


@pytest.mark.parametrize(
    ("tensor", "shown"),
    [
        (torch.randn(2, 4, dtype=torch.float64), r"torch\.float64 tensor of shape \(2, 4\)"),
        (torch.randn(2, 4).half(), r"torch\.float16 tensor of shape \(2, 4\)"),
        (torch.randn(8), r"torch\.float32 tensor of shape \(8,\)"),
        (torch.randn(2, 2, 2), r"torch\.float32 tensor of shape \(2, 2, 2\)"),
    ],
)
def test_a_tensor_that_is_not_2d_float32_is_refused(tmp_path: Path, tensor, shown: str) -> None:
    path = _write_raw(tmp_path / "e.safetensors", {TENSOR_NAME: tensor}, _metadata(tensor))
    with pytest.raises(ValueError, match=rf"e\.safetensors holds a {shown}"):
        load_embeddings_file(path, KEY)


def test_a_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    tensor = torch.randn(2, 4)
    meta = _metadata(tensor, sha256=_metadata(tensor + 1)["sha256"])
    path = _write_raw(tmp_path / "e.safetensors", {TENSOR_NAME: tensor}, meta)
    with pytest.raises(ValueError, match="fails its checksum: the tensor data is corrupt"):
        load_embeddings_file(path, KEY)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format": None}, r"is not a cprfl_zoo embeddings file \(format None\)"),
        ({"format": "other/2"}, r"is not a cprfl_zoo embeddings file \(format 'other/2'\)"),
        ({"key": None}, "has no readable key in its metadata"),
        ({"key": "{not json"}, "has no readable key in its metadata"),
        # valid JSON but not an object: was a TypeError / AttributeError, which the cache's
        # reader (catching OSError and ValueError) let escape instead of recomputing
        ({"key": "null"}, r"has no readable key in its metadata \(null is not a JSON object\)"),
        ({"key": '"cat"'}, r"has no readable key in its metadata \(str is not a JSON object\)"),
        ({"key": "[1, 2]"}, r"has no readable key in its metadata \(list is not a JSON object\)"),
    ],
)
def test_metadata_that_is_not_ours_is_refused(tmp_path: Path, changes: dict, message: str):
    tensor = torch.randn(2, 4)
    path = _write_raw(
        tmp_path / "e.safetensors", {TENSOR_NAME: tensor}, _metadata(tensor, **changes)
    )
    with pytest.raises(ValueError, match=message):
        load_embeddings_file(path, KEY)


@pytest.mark.parametrize(
    ("expected", "message"),
    [
        ({**KEY, "pretrained": "v"}, r"other inputs: its 'pretrained' is 'w', expected 'v'"),
        ({**KEY, "class_names": ["dog", "cat"]}, "other inputs: its class names differ"),
        (
            {**KEY, "templates": ["{}"]},
            r"other inputs: its 'templates' is None, expected \['\{\}'\]",
        ),
    ],
)
def test_a_file_for_another_key_is_refused(tmp_path: Path, expected: dict, message: str) -> None:
    path = save_embeddings_file(tmp_path / "e.safetensors", torch.randn(2, 4), KEY)
    with pytest.raises(ValueError, match=message):
        load_embeddings_file(path, expected)


def _raw_file(path: Path, header: object, payload: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + payload)
    return path


def test_files_that_are_not_safetensors_are_refused(tmp_path: Path) -> None:
    spec = {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]}
    cases = {
        "short": (b"\x01\x02", r"2 bytes is shorter than a safetensors header"),
        "claims": (None, r"its header claims \d+ bytes but the file has \d+ more"),
        "list": (_raw_file(tmp_path / "l", [1, 2]), "its header is not a JSON object"),
        "two": (
            _raw_file(
                tmp_path / "t",
                {TENSOR_NAME: spec, "extra": {**spec, "data_offsets": [32, 64]}},
                bytes(64),
            ),
            r"it holds tensors \['embeddings', 'extra'\], expected only 'embeddings'",
        ),
        "renamed": (
            _raw_file(tmp_path / "r", {"weights": spec}, bytes(32)),
            r"it holds tensors \['weights'\], expected only 'embeddings'",
        ),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        if isinstance(content, Path):
            path.write_bytes(content.read_bytes())
        elif content is None:
            good = save({TENSOR_NAME: torch.zeros(2, 4)}, metadata={"format": FORMAT})
            path.write_bytes(good[:8] + good[8:20])  # the header is cut short
        else:
            path.write_bytes(content)
        with pytest.raises(
            ValueError,
            match=rf"{name}\.safetensors is not a readable safetensors file \(.*{message}",
        ):
            load_embeddings_file(path, KEY)


def test_cache_file_names_are_readable_and_safe() -> None:
    name = cache_file_name({"model_name": "hf-hub:org/../Model v2", "class_names": ["a", "b"]})
    assert name.startswith("hf-hub_org_.._Model_v2-2c-") and name.endswith(".safetensors")
    assert "/" not in name
    assert cache_file_name({"model_name": "///"}).startswith("text-0c-")
