"""The COCO-LT and VOC-LT benchmarks: their classes, list files and where the images come from.

* :data:`LT_BENCHMARKS`, :func:`get_lt_benchmark`: the splits of Wu et al. (ECCV 2020) as
  :class:`LTBenchmark` records (class names, list files with their SHA-256 digests, image
  sources).
* :func:`download_lt_split`, :func:`lt_split_path`, :func:`default_cache_dir`: fetching the
  list files into the cache and finding them there or in a folder of your own.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..class_lists import COCO_LT_CLASSES, VOC_LT_CLASSES
from ..fileio import atomic_write_bytes, cache_folder, file_sha256

__all__ = [
    "LT_BENCHMARKS",
    "LT_SPLITS_BASE_URL",
    "LTBenchmark",
    "default_cache_dir",
    "download_lt_split",
    "get_lt_benchmark",
    "lt_split_path",
]

_logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

# The text lists are published in the official CPRFL repository, pinned here to one commit and
# checked against these SHA-256 digests. They are the Distribution-Balanced Loss splits (same
# images; DBL's own appendix/ stores image ids and label pickles, not image lists).
LT_SPLITS_BASE_URL = "https://raw.githubusercontent.com/jiexuanyan/CPRFL/10b5b7c9d91d421d86175b8ccf07f280c1e94cac/data"


@dataclass(frozen=True)
class LTBenchmark:
    """A long-tailed multi-label benchmark: classes, list files and image source.

    Attributes:
        name: ``"coco-lt"`` or ``"voc-lt"``.
        class_names: Class names in class-id order (those of :mod:`cprfl_zoo.class_lists`).
        files: Split name (``"train"``, ``"test"``, ``"labels"``) to the file's path relative to
            the split folder (and to :data:`LT_SPLITS_BASE_URL`).
        sha256: Split name to the SHA-256 digest of the published file.
        num_images: Split name to the number of images in the list.
        images: Where the images come from and what ``image_root`` must contain.
    """

    name: str
    class_names: tuple[str, ...]
    files: Mapping[str, str]
    sha256: Mapping[str, str]
    num_images: Mapping[str, int]
    images: str

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)


LT_BENCHMARKS: dict[str, LTBenchmark] = {
    "coco-lt": LTBenchmark(
        name="coco-lt",
        class_names=COCO_LT_CLASSES,
        files={
            "train": "coco/coco_lt_train.txt",
            "test": "coco/coco_lt_test.txt",
            "labels": "coco/coco_labels.txt",
        },
        sha256={
            "train": "8e0c354ae2214d7ced46f4a5ae24236149296be4dcd2df74f00eba2abe6be0ce",
            "test": "4dda722463b0ed3aada172ce1c75f46f1391e4d2bee7643760549f916a8022e5",
            "labels": "a16d52dc65d8bc2b7abe5875199d802e951b7af142b327f8c85b496116a87f45",
        },
        num_images={"train": 1909, "test": 5000},
        images=(
            "COCO 2017 (https://cocodataset.org/#download): the train list uses train2017/ "
            "images, the test list val2017/ images; image_root is the folder holding train2017/ "
            "and val2017/."
        ),
    ),
    "voc-lt": LTBenchmark(
        name="voc-lt",
        class_names=VOC_LT_CLASSES,
        files={
            "train": "voc/voc_lt_train.txt",
            "test": "voc/voc_lt_test.txt",
            "labels": "voc/voc_labels.txt",
        },
        sha256={
            "train": "2111a5e58ae8b67a112a2b2c8aa98fe8fa926ac3e1d73e2e4e0e4844c90cc047",
            "test": "43b2929a86e9fe685cdf3b6b72fb90b6838ff9f9f427807e8b9502111e73750a",
            "labels": "59e82ce7a1fa096b8a80c22cc72e6c86e54c598b2e1cfe08a211f1c82a0dcb2c",
        },
        num_images={"train": 1142, "test": 4952},
        images=(
            "PASCAL VOC (http://host.robots.ox.ac.uk/pascal/VOC/): the train list uses VOC 2012 "
            "trainval images, the test list the VOC 2007 test images; image_root is the folder "
            "holding VOCdevkit/VOC2012/JPEGImages and VOCdevkit/VOC2007/JPEGImages."
        ),
    ),
}


def get_lt_benchmark(name: str) -> LTBenchmark:
    """Return a benchmark description by name.

    Args:
        name: ``"coco-lt"`` or ``"voc-lt"`` (case and ``_``/``-`` insensitive).

    Returns:
        The :class:`LTBenchmark`.

    Raises:
        ValueError: For an unknown benchmark name.
    """
    key = str(name).lower().replace("_", "-")
    if key not in LT_BENCHMARKS:
        raise ValueError(
            f"unknown benchmark {name!r}; known benchmarks are {sorted(LT_BENCHMARKS)}"
        )
    return LT_BENCHMARKS[key]


def _benchmark_file(benchmark: str, split: str) -> tuple[LTBenchmark, str]:
    info = get_lt_benchmark(benchmark)
    if split not in info.files:
        raise ValueError(f"unknown split {split!r} for {info.name}; choose from {list(info.files)}")
    return info, info.files[split]


_SPLITS_SUBDIR = "lt_splits"


def default_cache_dir() -> Path:
    """Return the folder that holds the cached benchmark list files.

    Like the text-embedding cache (:mod:`cprfl_zoo.text.cache`), it lives under the cprfl_zoo
    cache root: ``$CPRFL_ZOO_CACHE/lt_splits`` if that variable is set, else
    ``$XDG_CACHE_HOME/cprfl_zoo/lt_splits``, else ``~/.cache/cprfl_zoo/lt_splits``. Files are
    kept as ``coco/coco_lt_train.txt`` etc. below it. The folder is not created.

    Returns:
        The cache folder.
    """
    return cache_folder(_SPLITS_SUBDIR)


def download_lt_split(
    benchmark: str,
    split: str,
    *,
    cache_dir: PathLike | None = None,
    base_url: str | None = None,
    verify: bool = True,
    force: bool = False,
    timeout: float = 60.0,
) -> Path:
    """Fetch a COCO-LT / VOC-LT list file into the cache (or return the cached copy).

    The file is downloaded from ``base_url`` (default :data:`LT_SPLITS_BASE_URL`, the official
    CPRFL repository at a pinned commit) with urllib, checked against its published SHA-256
    digest and written atomically to ``<cache_dir>/<files[split]>`` (e.g.
    ``coco/coco_lt_train.txt``). An existing cached file is returned without any network access
    (and re-checked when ``verify``).

    Args:
        benchmark: ``"coco-lt"`` or ``"voc-lt"``.
        split: ``"train"``, ``"test"`` or ``"labels"`` (the ``name id`` class list).
        cache_dir: Cache folder (holding ``coco/`` and ``voc/``), default
            :func:`default_cache_dir`.
        base_url: Folder URL (``https://``, ``http://`` or ``file://``) holding
            ``coco/...`` and ``voc/...``, e.g. a mirror.
        verify: Check the SHA-256 digest of the published file. Turn off only for a mirror
            that serves modified lists.
        force: Download even if the file is cached.
        timeout: Network timeout in seconds.

    Returns:
        Path of the cached file.

    Raises:
        ValueError: For an unknown benchmark, split or URL scheme, or a digest mismatch (the
            file is then not cached).
        OSError: If the download fails (e.g. no internet); the message says where to put the
            file by hand.
    """
    info, rel = _benchmark_file(benchmark, split)
    dest = cache_folder(_SPLITS_SUBDIR, cache_dir) / rel
    expected = info.sha256[split] if verify else None
    if dest.is_file() and not force:
        if expected is None or file_sha256(dest) == expected:
            return dest
        _logger.warning("cached %s does not match its SHA-256 digest; downloading again", dest)
    base = (base_url or LT_SPLITS_BASE_URL).rstrip("/")
    scheme = urllib.parse.urlparse(base).scheme
    if scheme not in ("https", "http", "file"):
        raise ValueError(f"base_url {base!r} must be an https://, http:// or file:// URL")
    url = f"{base}/{rel}"
    _logger.info("downloading %s to %s", url, dest)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
    except (OSError, http.client.HTTPException) as e:
        raise OSError(
            f"could not download {url} ({e}). Without internet access, copy {rel} of the "
            f"official CPRFL repository (github.com/jiexuanyan/CPRFL, folder data/) to {dest}, "
            "or pass the folder holding it as split_root / root."
        ) from e
    if expected is not None and (digest := hashlib.sha256(data).hexdigest()) != expected:
        raise ValueError(
            f"{url} has SHA-256 {digest}, expected {expected}; not caching it "
            "(pass verify=False to accept a modified list)"
        )
    atomic_write_bytes(dest, data)
    return dest


def lt_split_path(
    benchmark: str,
    split: str,
    *,
    root: PathLike | None = None,
    cache_dir: PathLike | None = None,
    download: bool = False,
) -> Path:
    """Locate a COCO-LT / VOC-LT list file.

    Args:
        benchmark: ``"coco-lt"`` or ``"voc-lt"``.
        split: ``"train"``, ``"test"`` or ``"labels"``.
        root: A folder laid out like the official repository's ``data/`` (``coco/coco_lt_train.txt``
            ...); if given, only this folder is searched.
        cache_dir: Cache folder (holding ``coco/`` and ``voc/``), default
            :func:`default_cache_dir`.
        download: Fetch the file into the cache with :func:`download_lt_split` if it is not
            there yet.

    Returns:
        Path of the list file.

    Raises:
        ValueError: For an unknown benchmark or split.
        FileNotFoundError: If the file is not found (and ``download`` is off or ``root`` given).
    """
    info, rel = _benchmark_file(benchmark, split)
    if root is not None:
        path = Path(root) / rel
        if not path.is_file():
            raise FileNotFoundError(f"{info.name} {split} list not found: {path}")
        return path
    cached = cache_folder(_SPLITS_SUBDIR, cache_dir) / rel
    if cached.is_file():
        return cached
    if download:
        return download_lt_split(info.name, split, cache_dir=cache_dir)
    raise FileNotFoundError(
        f"{info.name} {split} list not found in the cache ({cached}); pass download=True, call "
        f"download_lt_split({info.name!r}, {split!r}), or pass root=<folder with {rel}>"
    )
