"""Multi-label image lists, the COCO-LT / VOC-LT benchmarks, and image transforms.

* :class:`MultiLabelImageList`: a dataset over a ``relative/path.jpg 3 17 42`` list file (the
  format of the long-tailed benchmarks, 0-based class ids), returning ``(image, target)`` with a
  multi-hot float target; per-class frequencies are counted from the list.
* :func:`download_lt_split`, :func:`lt_split_path`, :func:`create_lt_dataset`,
  :data:`LT_BENCHMARKS`: the COCO-LT and VOC-LT splits of Wu et al. (ECCV 2020), their class
  names, where the list files and the images come from.
* :func:`create_transforms`: timm's preprocessing for a model, or the CPRFL paper's recipe
  (448 px, Cutout, RandAugment).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from timm.data import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    create_transform,
    rand_augment_transform,
    resolve_model_data_config,
)
from torch import nn
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.transforms.functional import to_tensor

from .class_lists import COCO_LT_CLASSES, VOC_LT_CLASSES
from .fileio import atomic_write_bytes, cache_folder, file_sha256

__all__ = [
    "LT_BENCHMARKS",
    "LT_SPLITS_BASE_URL",
    "ImageListEntries",
    "LTBenchmark",
    "MultiLabelImageList",
    "RandomCutout",
    "create_lt_dataset",
    "create_transforms",
    "default_cache_dir",
    "download_lt_split",
    "get_lt_benchmark",
    "lt_split_path",
    "read_class_names",
    "read_image_list",
    "read_label_file",
    "read_text_lines",
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


@dataclass(frozen=True)
class ImageListEntries:
    """The parsed content of an image-list file.

    Attributes:
        source: The list file.
        paths: Image paths as written in the list (relative to the image root).
        labels: Sorted, de-duplicated class ids of each image (possibly empty).
        line_numbers: 1-based line number of each entry in ``source``.
        num_classes: Number of classes the ids were checked against.
    """

    source: Path
    paths: tuple[str, ...]
    labels: tuple[tuple[int, ...], ...]
    line_numbers: tuple[int, ...]
    num_classes: int

    def __len__(self) -> int:
        return len(self.paths)

    def targets(self) -> torch.Tensor:
        """Return the ``(N, C)`` float32 multi-hot target matrix."""
        out = torch.zeros(len(self.paths), self.num_classes)
        rows = [i for i, ids in enumerate(self.labels) for _ in ids]
        cols = [c for ids in self.labels for c in ids]
        out[rows, cols] = 1.0
        return out

    def class_counts(self) -> torch.Tensor:
        """Return the ``(C,)`` int64 number of images with each class (positives per class)."""
        cols = torch.tensor([c for ids in self.labels for c in ids], dtype=torch.long)
        return torch.bincount(cols, minlength=self.num_classes)


# ASCII digits only: int() also takes "+1", "1_0" (= 10) and non-ASCII digits such as "١".
_CLASS_ID = re.compile(r"-?[0-9]+")


def _parse_class_id(token: str) -> int | None:
    return int(token) if _CLASS_ID.fullmatch(token) else None


def read_text_lines(path: PathLike, what: str) -> list[str]:
    """Read a UTF-8 text file (an optional BOM is dropped) and return its lines.

    Lines are split at line feeds only, so line numbers are those an editor shows; a trailing
    carriage return is kept (callers split on whitespace or strip).

    Args:
        path: The file.
        what: What the file is, for messages (``"image list"``, ``"label file"``).

    Returns:
        The lines, without their line feeds.

    Raises:
        FileNotFoundError: If the file does not exist.
        IsADirectoryError: If ``path`` is a folder.
        ValueError: If the file is not UTF-8 (the message names file, line and byte).
    """
    source = Path(path)
    if source.is_dir():
        raise IsADirectoryError(f"{what} {source} is a folder; expected a text file")
    if not source.is_file():
        raise FileNotFoundError(f"{what} not found: {source}")
    data = source.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{source}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
            f"save the {what} as UTF-8"
        ) from None
    return text.split("\n")


def _check_inside_root(entries: ImageListEntries, root: Path) -> None:
    for rel, lineno in zip(entries.paths, entries.line_numbers, strict=True):
        normal = os.path.normpath(rel)
        if (
            os.path.isabs(rel)
            or Path(rel).anchor
            or normal == ".."
            or normal.startswith(".." + os.sep)
        ):
            raise ValueError(
                f"{entries.source}:{lineno}: image path {rel!r} leaves the image root {root} "
                "(an absolute path or '..'); list paths relative to the root, or pass "
                "allow_outside_root=True to read images anywhere"
            )


def _check_num_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")


def read_image_list(path: PathLike, num_classes: int) -> ImageListEntries:
    """Parse a multi-label image list: one ``relative/path.jpg id id ...`` entry per line.

    Fields are separated by any whitespace (trailing spaces and CRLF line ends are fine), so
    paths cannot contain spaces. An entry may have no class id (an image without labels); blank
    lines are skipped. Class ids are 0-based integers written in ASCII digits.

    Args:
        path: The list file (UTF-8 text; a BOM is dropped).
        num_classes: Number of classes; every id must be in ``[0, num_classes)``.

    Returns:
        The parsed :class:`ImageListEntries`.

    Raises:
        FileNotFoundError: If the list file does not exist.
        IsADirectoryError: If ``path`` is a folder.
        ValueError: If ``num_classes`` is not a positive int, the file is not UTF-8 or has no
            entry, or a line has a class id that is not ASCII digits or is out of range (the
            message names file and line).
    """
    _check_num_classes(num_classes)
    source = Path(path)
    lines = read_text_lines(source, "image list")
    paths: list[str] = []
    labels: list[tuple[int, ...]] = []
    line_numbers: list[int] = []
    for lineno, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        ids = []
        for token in fields[1:]:
            class_id = _parse_class_id(token)
            if class_id is None:
                raise ValueError(
                    f"{source}:{lineno}: malformed line, class id {token!r} is not an integer "
                    f"of ASCII digits (expected 'relative/path.jpg id id ...'): "
                    f"{line.rstrip()!r}"
                )
            ids.append(class_id)
        bad = [c for c in ids if not 0 <= c < num_classes]
        if bad:
            raise ValueError(
                f"{source}:{lineno}: class id {bad[0]} out of range [0, {num_classes}) "
                f"for image {fields[0]!r}"
            )
        paths.append(fields[0])
        labels.append(tuple(sorted(set(ids))))
        line_numbers.append(lineno)
    if not paths:
        raise ValueError(f"image list {source} has no entries")
    return ImageListEntries(
        source=source,
        paths=tuple(paths),
        labels=tuple(labels),
        line_numbers=tuple(line_numbers),
        num_classes=num_classes,
    )


def read_label_file(path: PathLike) -> list[str]:
    """Read a ``name id`` class list (the benchmarks' ``*_labels.txt``).

    The id is the last field, so names may contain spaces (``traffic light 9``); CRLF line ends
    are fine. Ids must be exactly ``0 .. C-1``, in any order.

    Args:
        path: The label file (UTF-8; a BOM is dropped).

    Returns:
        The class names ordered by id.

    Raises:
        FileNotFoundError: If the file does not exist.
        IsADirectoryError: If ``path`` is a folder.
        ValueError: If the file is not UTF-8, a line is malformed, an id is not ASCII digits,
            or the ids are not ``0 .. C-1`` (the message names file and line).
    """
    source = Path(path)
    names: dict[int, str] = {}
    for lineno, line in enumerate(read_text_lines(source, "label file"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise ValueError(f"{source}:{lineno}: expected 'name id', got {line.rstrip()!r}")
        class_id = _parse_class_id(fields[-1])
        if class_id is None or class_id < 0:
            raise ValueError(
                f"{source}:{lineno}: class id {fields[-1]!r} is not an integer of ASCII digits"
            )
        if class_id in names:
            raise ValueError(f"{source}:{lineno}: class id {class_id} appears twice")
        names[class_id] = " ".join(fields[:-1])
    if not names:
        raise ValueError(f"label file {source} has no entries")
    if sorted(names) != list(range(len(names))):
        missing = sorted(set(range(max(names, default=-1) + 1)) - set(names))
        raise ValueError(f"{source}: class ids must be 0..C-1; missing {missing[:10]}")
    return [names[i] for i in range(len(names))]


def read_class_names(source: PathLike) -> list[str]:
    """Read class names from a file, or return a built-in list.

    The file holds one class name per line (surrounding spaces removed, blank lines skipped), or
    ``name id`` lines (a benchmark's label file, read with :func:`read_label_file`) when every line
    ends in an integer after a name. The names are checked as ``create_cprfl`` checks them.

    Args:
        source: A UTF-8 text file (a BOM is dropped), or ``"coco-lt"`` / ``"voc-lt"`` when no
            file of that name exists.

    Returns:
        The class names, in logit order.

    Raises:
        FileNotFoundError: If ``source`` is neither an existing file nor a built-in list name.
        IsADirectoryError: If ``source`` is a folder.
        ValueError: If the file is not UTF-8 (file and line named), holds no names, holds a
            duplicate name, or is a malformed label file; the message names the file.
    """
    from .class_lists import get_class_names
    from .classes import validate_class_inputs

    path = Path(source)
    if path.is_dir():
        raise IsADirectoryError(
            f"{source} is a folder; expected a text file with one class name per line"
        )
    if not path.is_file():
        try:
            return get_class_names(str(source))
        except ValueError:
            raise FileNotFoundError(
                f"{source}: no such file, and not a built-in list (coco-lt, voc-lt)"
            ) from None
    names = [line.strip() for line in read_text_lines(path, "classes file")]
    names = [name for name in names if name]
    if not names:
        raise ValueError(f"{source}: the file holds no class names")
    if all(len(n.split()) > 1 and n.split()[-1].isdigit() for n in names):
        return read_label_file(path)
    try:
        return validate_class_inputs(names)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


class MultiLabelImageList(Dataset):
    """Multi-label dataset over an image-list file (the long-tailed benchmarks' format).

    Each line of ``list_file`` is ``relative/path.jpg id id ...`` with 0-based class ids (see
    :func:`read_image_list`); ``dataset[i]`` is ``(transform(image), target)`` where the image
    is loaded with PIL as RGB and ``target`` is a ``(C,)`` float32 multi-hot tensor. Without a
    transform the image is converted to a float tensor in [0, 1].

    Args:
        list_file: The image list.
        image_root: Folder the listed paths are relative to.
        num_classes: Number of classes; defaults to ``len(class_names)``.
        transform: Callable applied to the PIL image, e.g. from :func:`create_transforms`.
        class_names: Optional class names (one per class).
        check_files: Check at construction that every listed image exists, so that a missing
            image fails at once instead of in a data-loader worker.
        allow_outside_root: Accept absolute paths and paths with ``..`` that leave
            ``image_root``. Off by default: a list file then cannot make the dataset read (or
            probe for) files elsewhere on the machine.

    Attributes:
        entries: The parsed :class:`ImageListEntries`.
        targets: ``(N, C)`` float32 multi-hot targets of all images.
        class_counts: ``(C,)`` int64 number of images containing each class.
        neg_class_counts: ``(C,)`` int64 number of images not containing each class.

    Raises:
        ValueError: On a malformed list (file and line named), an out-of-range class id, a path
            that leaves ``image_root`` (file and line named), missing or inconsistent
            ``num_classes`` / ``class_names``, or a non-callable transform.
        FileNotFoundError: If the list, the image root or (with ``check_files``) an image is
            missing; the message names the image and its line in the list.
    """

    def __init__(
        self,
        list_file: PathLike,
        image_root: PathLike,
        num_classes: int | None = None,
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        class_names: Sequence[str] | None = None,
        check_files: bool = True,
        allow_outside_root: bool = False,
    ) -> None:
        if num_classes is None:
            if class_names is None:
                raise ValueError("give num_classes or class_names")
            num_classes = len(class_names)
        elif class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names but num_classes is {num_classes}"
            )
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable, got {type(transform).__name__}")
        self.image_root = Path(image_root)
        if not self.image_root.is_dir():
            raise FileNotFoundError(f"image root is not a folder: {self.image_root}")
        self.entries = read_image_list(list_file, num_classes)
        if not allow_outside_root:
            _check_inside_root(self.entries, self.image_root)
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None
        self.transform = transform
        self.targets = self.entries.targets()
        self.class_counts = self.entries.class_counts()
        self.neg_class_counts = len(self.entries) - self.class_counts
        if check_files:
            missing = [
                i for i, p in enumerate(self.entries.paths) if not (self.image_root / p).is_file()
            ]
            if missing:
                first = missing[0]
                raise FileNotFoundError(
                    f"{len(missing)} of {len(self.entries)} listed images are missing under "
                    f"{self.image_root}; first: {self.image_root / self.entries.paths[first]} "
                    f"({self.entries.source}:{self.entries.line_numbers[first]})"
                )

    def __len__(self) -> int:
        return len(self.entries)

    def image_path(self, index: int) -> Path:
        """Return the full path of image ``index``."""
        return self.image_root / self.entries.paths[index]

    def load_image(self, index: int) -> Image.Image:
        """Load image ``index`` as an RGB PIL image.

        Raises:
            FileNotFoundError: If the image is missing (path and list line named).
            OSError: If the image cannot be decoded.
        """
        path = self.image_path(index)
        where = f"{self.entries.source}:{self.entries.line_numbers[index]}"
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except FileNotFoundError:
            raise FileNotFoundError(f"image not found: {path} (listed at {where})") from None
        except OSError as e:
            raise OSError(f"cannot read image {path} (listed at {where}): {e}") from e

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index %= len(self)
        img = self.load_image(index)
        image = self.transform(img) if self.transform is not None else to_tensor(img)
        return image, self.targets[index].clone()


def create_lt_dataset(
    benchmark: str,
    split: str,
    image_root: PathLike,
    transform: Callable[[Image.Image], Any] | None = None,
    *,
    split_root: PathLike | None = None,
    cache_dir: PathLike | None = None,
    download: bool = False,
    check_files: bool = True,
) -> MultiLabelImageList:
    """Build the COCO-LT or VOC-LT train/test dataset with the benchmark's class names.

    Args:
        benchmark: ``"coco-lt"`` or ``"voc-lt"``.
        split: ``"train"`` or ``"test"``.
        image_root: Folder with the images (see :attr:`LTBenchmark.images`).
        transform: Image transform, e.g. ``create_transforms(model, is_training=True)``.
        split_root: Folder holding ``coco/...`` / ``voc/...`` list files; default the cache.
        cache_dir: Cache folder (holding ``coco/`` and ``voc/``), default
            :func:`default_cache_dir`.
        download: Fetch the list into the cache if it is not there.
        check_files: See :class:`MultiLabelImageList`.

    Returns:
        The dataset; ``dataset.class_counts`` of the train split gives the head/medium/tail
        split (:func:`cprfl_zoo.metrics.long_tail_split`).

    Raises:
        ValueError: For an unknown benchmark or a split other than train/test.
        FileNotFoundError: If the list or images are missing.
    """
    info = get_lt_benchmark(benchmark)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    list_file = lt_split_path(
        info.name, split, root=split_root, cache_dir=cache_dir, download=download
    )
    return MultiLabelImageList(
        list_file,
        image_root,
        transform=transform,
        class_names=info.class_names,
        check_files=check_files,
    )


class RandomCutout:
    """Cutout as in the CPRFL / ASL training recipe, on PIL images.

    A box of about ``factor * width`` by ``factor * height`` pixels, centred on a uniformly
    random pixel and clipped at the image border (so it can be smaller near the edges), is
    filled with one uniformly random colour. Randomness comes from ``torch``'s generator, so
    it follows ``torch.manual_seed`` and data-loader worker seeding.

    Args:
        factor: Box side as a fraction of the image side, in (0, 1].
        p: Probability of applying the cutout.

    Raises:
        ValueError: If ``factor`` or ``p`` is out of range.
    """

    def __init__(self, factor: float = 0.5, p: float = 1.0) -> None:
        if not 0 < factor <= 1:
            raise ValueError(f"cutout factor must be in (0, 1], got {factor!r}")
        if not 0 <= p <= 1:
            raise ValueError(f"cutout probability p must be in [0, 1], got {p!r}")
        self.factor = factor
        self.p = p

    def get_params(self, width: int, height: int, bands: int = 3) -> tuple[tuple[int, ...], ...]:
        """Draw a box ``(left, top, right, bottom)`` (right/bottom exclusive) and a fill colour.

        Args:
            width: Image width.
            height: Image height.
            bands: Number of colour channels.

        Returns:
            ``(box, colour)``.
        """
        half_w = int(self.factor * width + 0.5) // 2
        half_h = int(self.factor * height + 0.5) // 2
        cx = int(torch.randint(width, ()).item())
        cy = int(torch.randint(height, ()).item())
        box = (
            max(cx - half_w, 0),
            max(cy - half_h, 0),
            min(cx + half_w, width),
            min(cy + half_h, height),
        )
        colour = tuple(torch.randint(256, (bands,)).tolist())
        return box, colour

    def __call__(self, img: Image.Image) -> Image.Image:
        """Return a copy of ``img`` with one random box filled (or ``img`` itself if skipped)."""
        if self.p < 1 and float(torch.rand(())) >= self.p:
            return img
        box, colour = self.get_params(img.width, img.height, len(img.getbands()))
        out = img.copy()
        out.paste(colour if len(colour) > 1 else colour[0], box)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(factor={self.factor}, p={self.p})"


def _as_size(img_size: int | Sequence[int]) -> tuple[int, int]:
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(size) == 3:
        size = size[1:]
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
        raise ValueError(
            f"img_size must be an int or (height, width) of positive ints, got {img_size!r}"
        )
    return size  # type: ignore[return-value]


def create_transforms(
    model: nn.Module | Mapping[str, Any] | None = None,
    *,
    recipe: str = "timm",
    is_training: bool = False,
    img_size: int | Sequence[int] | None = None,
    normalize: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    cutout_factor: float = 0.5,
    rand_augment: str | None = "rand-n2-m10-mstd101-inc1",
    **timm_kwargs: Any,
) -> Callable[[Image.Image], torch.Tensor]:
    """Create the image transform for training or evaluation.

    ``recipe="timm"``: timm's own pipeline for the model, ``create_transform(
    **resolve_model_data_config(model), is_training=...)`` (random-resized crop, flip, colour
    jitter when training; resize + centre crop for evaluation); extra keyword arguments go to
    :func:`timm.data.create_transform` (e.g. ``auto_augment="rand-m9-mstd0.5"``, ``re_prob``).

    ``recipe="cprfl"``: the paper's recipe (official ``src/data_loader/imagelist.py``). Training:
    resize to 448 x 448 (bilinear), :class:`RandomCutout` (factor 0.5, random colour), RandAugment,
    to tensor; evaluation: resize to 448 x 448, to tensor. The official code uses the
    ``randaugment`` package's UDA-style policy (2 of 15 operations, each applied with
    probability 0.5 at a magnitude drawn uniformly from 1-9 of 9); here it is timm's closest
    equivalent, ``rand_augment_transform("rand-n2-m10-mstd101-inc1")`` (2 of 15 operations, each
    with probability 0.5, magnitude uniform in [0, 10] of 10, grey fill). It differs in the
    operation set (timm has SolarizeAdd where the package has Cutout) and in Posterize's
    range (timm keeps 4-0 bits, the package 8-4). The official code does **not** normalise
    (inputs in [0, 1]) because its backbone expects that; timm backbones expect their
    pretraining mean/std, so ``normalize`` defaults to on; ``normalize=False`` reproduces the
    official preprocessing exactly.

    Args:
        model: A timm model or :class:`~cprfl_zoo.CPRFL` (its ``pretrained_cfg`` gives input
            size, interpolation, mean and std), a timm data-config dict, or ``None`` (then
            ``img_size`` is needed for the timm recipe and ImageNet mean/std are used).
        recipe: ``"timm"`` or ``"cprfl"``.
        is_training: Training (augmenting) or evaluation transform.
        img_size: Input size (int or ``(height, width)``); default the model's input size for
            ``"timm"`` and 448 for ``"cprfl"``.
        normalize: Normalise with ``mean`` / ``std``.
        mean: Override the normalisation mean (default: model's, else ImageNet).
        std: Override the normalisation std (default: model's, else ImageNet).
        cutout_factor: Cutout box size for ``"cprfl"`` training.
        rand_augment: timm RandAugment config string for ``"cprfl"`` training, or ``None`` to
            skip RandAugment.
        **timm_kwargs: Extra arguments of :func:`timm.data.create_transform` (``"timm"`` only).

    Returns:
        A callable mapping a PIL image to a ``(3, H, W)`` float tensor.

    Raises:
        ValueError: For an unknown recipe, a bad ``img_size``, ``mean``/``std``, cutout factor or
            RandAugment string, extra keyword arguments with ``"cprfl"``, or no input size.
        TypeError: If ``model`` is neither a module, a mapping nor ``None``.
    """
    if recipe not in ("timm", "cprfl"):
        raise ValueError(f"recipe must be 'timm' or 'cprfl', got {recipe!r}")
    if model is None:
        config: dict[str, Any] = {}
    elif isinstance(model, nn.Module):
        config = resolve_model_data_config(model)
    elif isinstance(model, Mapping):
        config = dict(model)
    else:
        raise TypeError(
            f"model must be an nn.Module, a data-config dict or None, got {type(model).__name__}"
        )
    mean = tuple(mean if mean is not None else config.get("mean") or IMAGENET_DEFAULT_MEAN)
    std = tuple(std if std is not None else config.get("std") or IMAGENET_DEFAULT_STD)
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ValueError(f"mean and std need 3 values each (std > 0), got mean={mean}, std={std}")
    if recipe == "timm":
        if img_size is not None:
            config["input_size"] = (3, *_as_size(img_size))
        if "input_size" not in config:
            raise ValueError(
                "the timm recipe needs a model, a data config with input_size, or img_size"
            )
        keys = ("interpolation", "crop_pct", "crop_mode")
        kwargs = {k: config[k] for k in keys if config.get(k) is not None}
        kwargs.update(timm_kwargs)
        return create_transform(
            input_size=config["input_size"],
            is_training=is_training,
            mean=mean,
            std=std,
            normalize=normalize,
            **kwargs,
        )
    if timm_kwargs:
        raise ValueError(f"the cprfl recipe takes no timm arguments; got {sorted(timm_kwargs)}")
    size = _as_size(img_size if img_size is not None else 448)
    steps: list[Callable[..., Any]] = [T.Resize(size, interpolation=T.InterpolationMode.BILINEAR)]
    if is_training:
        steps.append(RandomCutout(cutout_factor))
        if rand_augment is not None:
            if not rand_augment.startswith("rand"):
                raise ValueError(
                    f"rand_augment must be a timm 'rand-...' string, got {rand_augment!r}"
                )
            hparams = {"translate_const": int(min(size) * 0.45), "img_mean": (128, 128, 128)}
            steps.append(rand_augment_transform(rand_augment, hparams))
    steps.append(T.ToTensor())
    if normalize:
        steps.append(T.Normalize(mean, std))
    return T.Compose(steps)
