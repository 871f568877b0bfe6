"""Multi-label image lists: the list and label-file readers, and the dataset over a list.

* :func:`read_image_list`: parses a ``relative/path.jpg 3 17 42`` list (the format of the
  long-tailed benchmarks, 0-based class ids) into :class:`ImageListEntries`.
* :func:`read_label_file`, :func:`read_class_names`: ``name id`` class lists and class-name files.
* :class:`MultiLabelImageList`: a dataset over a list file, returning ``(image, target)`` with a
  multi-hot float target; per-class frequencies are counted from the list.
* :func:`create_lt_dataset`: the COCO-LT / VOC-LT train or test set with its class names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.functional import to_tensor

from .images import ImageReadError, load_image
from .lt_splits import PathLike, get_lt_benchmark, lt_split_path

__all__ = [
    "ImageListEntries",
    "MultiLabelImageList",
    "create_lt_dataset",
    "read_class_names",
    "read_image_list",
    "read_label_file",
    "read_text_lines",
]


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


# The id that marks a ``name id`` line of a label file.
_LABEL_ID = re.compile(r"[0-9]+")


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
    return _parse_label_lines(source, read_text_lines(source, "label file"))


def _parse_label_lines(source: Path, lines: Sequence[str]) -> list[str]:
    names: dict[int, str] = {}
    for lineno, line in enumerate(lines, start=1):
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
    from ..class_lists import get_class_names
    from ..classes import validate_class_inputs

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
    lines = read_text_lines(path, "classes file")
    names = [name for line in lines if (name := line.strip())]
    if not names:
        raise ValueError(f"{source}: the file holds no class names")
    if all(len(f := n.split()) > 1 and _LABEL_ID.fullmatch(f[-1]) for n in names):
        return _parse_label_lines(path, lines)
    try:
        return validate_class_inputs(names)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


class MultiLabelImageList(Dataset):
    """Multi-label dataset over an image-list file (the long-tailed benchmarks' format).

    Each line of ``list_file`` is ``relative/path.jpg id id ...`` with 0-based class ids (see
    :func:`read_image_list`); ``dataset[i]`` is ``(transform(image), target)`` where the image
    is decoded as displayed, as 8-bit RGB (:meth:`load_image`), and ``target`` is a ``(C,)``
    float32 multi-hot tensor. Without a transform the image is converted to a float tensor in
    [0, 1].

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
        """Load image ``index`` as an RGB PIL image, as it is displayed.

        Decoded with :func:`cprfl_zoo.data.images.load_image`: EXIF orientation applied, 16-bit
        and float pixels scaled to 8 bits, transparency composited on white, images above
        ``PIL.Image.MAX_IMAGE_PIXELS`` refused before decoding.

        Raises:
            FileNotFoundError: If the image is missing (path and list line named).
            ImageReadError: If the image cannot be decoded (an ``OSError``; path, list line and
                reason named).
        """
        path = self.image_path(index)
        where = f"{self.entries.source}:{self.entries.line_numbers[index]}"
        try:
            return load_image(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"image not found: {path} (listed at {where})") from None
        except ImageReadError as e:
            message = f"cannot read image {path} (listed at {where}): {e.reason}"
            raise ImageReadError(message, path=str(path), reason=e.reason) from e.__cause__

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
