import hashlib

import pytest
from conftest import LT_SPLITS_SKIP, lt_splits_dir

from cprfl_zoo.class_lists import COCO_LT_CLASSES, VOC_LT_CLASSES
from cprfl_zoo.data import (
    LT_BENCHMARKS,
    default_cache_dir,
    download_lt_split,
    get_lt_benchmark,
    lt_split_path,
    read_image_list,
    read_label_file,
)

LT_SPLITS = lt_splits_dir()
needs_lt_splits = pytest.mark.skipif(not LT_SPLITS.is_dir(), reason=LT_SPLITS_SKIP)


def test_benchmark_info():
    coco, voc = get_lt_benchmark("COCO_LT"), get_lt_benchmark("voc-lt")
    assert coco.class_names == COCO_LT_CLASSES and coco.num_classes == 80
    assert voc.class_names == VOC_LT_CLASSES and voc.num_classes == 20
    assert "COCO 2017" in coco.images and "VOC 2007" in voc.images
    assert set(LT_BENCHMARKS) == {"coco-lt", "voc-lt"}
    with pytest.raises(ValueError, match="unknown benchmark 'nus-lt'"):
        get_lt_benchmark("nus-lt")


@needs_lt_splits
@pytest.mark.parametrize("name", ["coco-lt", "voc-lt"])
def test_real_split_files_match_pinned_digests_and_sizes(name):
    info = LT_BENCHMARKS[name]
    for split, rel in info.files.items():
        data = (LT_SPLITS / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info.sha256[split], rel
    for split in ("train", "test"):
        entries = read_image_list(lt_split_path(name, split, root=LT_SPLITS), info.num_classes)
        assert len(entries) == info.num_images[split]
    names = read_label_file(lt_split_path(name, "labels", root=LT_SPLITS))
    assert [n.replace(" ", "_") for n in names] == list(info.class_names)


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CPRFL_ZOO_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" / "lt_splits"
    monkeypatch.delenv("CPRFL_ZOO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "cprfl_zoo" / "lt_splits"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "cprfl_zoo" / "lt_splits"


def _mirror(tmp_path, content=b"x.jpg 0\n"):
    mirror = tmp_path / "mirror"
    (mirror / "voc").mkdir(parents=True)
    (mirror / "voc" / "voc_lt_train.txt").write_bytes(content)
    return mirror


def test_download_from_file_url_caches_atomically(tmp_path):
    mirror = _mirror(tmp_path)
    cache = tmp_path / "cache"
    path = download_lt_split(
        "voc-lt", "train", cache_dir=cache, base_url=mirror.as_uri(), verify=False
    )
    assert path == cache / "voc" / "voc_lt_train.txt"
    assert path.read_bytes() == b"x.jpg 0\n"
    assert [p.name for p in path.parent.iterdir()] == ["voc_lt_train.txt"]  # no temp files left
    # cache hit: the source is gone and the URL is unusable, the cached file is returned
    (mirror / "voc" / "voc_lt_train.txt").unlink()
    again = download_lt_split(
        "voc-lt", "train", cache_dir=cache, base_url="file:///nonexistent", verify=False
    )
    assert again == path
    assert lt_split_path("voc-lt", "train", cache_dir=cache) == path


def test_download_rejects_digest_mismatch(tmp_path):
    mirror = _mirror(tmp_path, b"tampered.jpg 0\n")
    cache = tmp_path / "cache"
    with pytest.raises(
        ValueError, match=r"voc_lt_train\.txt has SHA-256 [0-9a-f]{64}, expected 2111a5"
    ):
        download_lt_split("voc-lt", "train", cache_dir=cache, base_url=mirror.as_uri())
    assert not (cache / "voc" / "voc_lt_train.txt").exists()


def test_download_offline_error_says_what_to_do(tmp_path):
    with pytest.raises(
        OSError, match=r"could not download file:///nonexistent/coco/coco_lt_test\.txt.*copy"
    ):
        download_lt_split("coco-lt", "test", cache_dir=tmp_path, base_url="file:///nonexistent")


def test_download_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown split 'val' for voc-lt"):
        download_lt_split("voc-lt", "val", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="must be an https://, http:// or file:// URL"):
        download_lt_split("voc-lt", "train", cache_dir=tmp_path, base_url="ftp://example/x")


@needs_lt_splits
def test_verified_cache_hit_and_re_download_of_a_bad_cached_copy(tmp_path):
    cache = tmp_path / "cache"
    dest = cache / "voc" / "voc_lt_train.txt"
    dest.parent.mkdir(parents=True)
    dest.write_bytes((LT_SPLITS / "voc" / "voc_lt_train.txt").read_bytes())
    assert download_lt_split("voc-lt", "train", cache_dir=cache, base_url="file:///x") == dest
    dest.write_bytes(b"corrupted")  # a wrong cached copy is replaced from the mirror
    path = download_lt_split("voc-lt", "train", cache_dir=cache, base_url=LT_SPLITS.as_uri())
    assert path.read_bytes() == (LT_SPLITS / "voc" / "voc_lt_train.txt").read_bytes()


def test_lt_split_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not found in the cache.*download=True"):
        lt_split_path("coco-lt", "train", cache_dir=tmp_path)
    with pytest.raises(
        FileNotFoundError, match=r"coco-lt test list not found: .*coco_lt_test\.txt"
    ):
        lt_split_path("coco-lt", "test", root=tmp_path)
