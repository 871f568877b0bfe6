"""The official CPRFL code's ``MyModel``, imported at run time from a checkout given by path.

The official repository (https://github.com/jiexuanyan/CPRFL) is never copied into this
project: point ``--official-dir`` at a checkout outside it or in a git-ignored folder (the
docs' benchmark page shows the commands). What is read from it:

* ``config.py``: the head sizes (``feature_d``, ``head_num``, ``dim_head``, ``mlp_dim`` ...),
  imported by the model modules with ``from config import *``;
* ``src/models/build_model_TF.py`` (``MyModel``, ``TextEncoder``) and ``src/models/TF.py`` (the
  transformer layer, einsum attention over all tokens);
* ``clip/clip.py`` (``tokenize``) and ``clip/model.py`` (OpenAI CLIP's ``CLIP``).

The official environment had OpenAI's ``clip`` package installed; the checkout's ``clip/``
folder has no ``__init__.py`` (its file is named ``_init_.py``). So the packages ``clip``,
``src`` and ``src.models`` are set up here as packages over the checkout's folders, ``clip``
with the ``tokenize`` of ``clip/clip.py``, and the modules are imported from them; the
previous ``sys.modules`` entries of those names are restored afterwards. ``MyModel`` calls
torchvision's ``resnet101(pretrained=False)``, which newer torchvision no longer takes: it is
given ``weights=None`` instead while the model is built. The CLIP model is OpenAI RN50's
architecture with random weights (timing does not depend on them); ``MyModel`` keeps its text
tower and re-encodes the prompts on every forward, as in the official training.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

REQUIRED_FILES = (
    "config.py",
    "src/models/build_model_TF.py",
    "src/models/TF.py",
    "clip/clip.py",
    "clip/model.py",
)
# OpenAI CLIP RN50 (the official default, --pretrain_clip RN50): its constructor's arguments.
RN50_CLIP = {
    "embed_dim": 1024,
    "image_resolution": 224,
    "vision_layers": (3, 4, 6, 3),
    "vision_width": 64,
    "vision_patch_size": None,
    "context_length": 77,
    "vocab_size": 49408,
    "transformer_width": 512,
    "transformer_heads": 8,
    "transformer_layers": 12,
}
_OWN_MODULES = ("config", "clip", "src")


def check_checkout(official_dir: Path) -> None:
    """Raise with the fix if ``official_dir`` is not a checkout of the official code.

    Raises:
        FileNotFoundError: Naming the first missing file.
    """
    for rel in REQUIRED_FILES:
        if not (official_dir / rel).is_file():
            raise FileNotFoundError(
                f"--official-dir {official_dir}: {rel} not found; expected a checkout of "
                "https://github.com/jiexuanyan/CPRFL (git clone it outside this project or into "
                "a git-ignored folder)"
            )


def _is_own(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in _OWN_MODULES)


@contextlib.contextmanager
def _official_modules(official_dir: Path) -> Iterator[None]:
    """Make ``config``, ``clip``, ``src`` the checkout's while the block runs."""
    saved = {name: mod for name, mod in sys.modules.items() if _is_own(name)}
    for name in saved:
        del sys.modules[name]
    try:
        packages = {"clip": "clip", "src": "src", "src.models": "src/models"}
        for name, rel in packages.items():
            package = types.ModuleType(name)
            package.__path__ = [str(official_dir / rel)]
            package.__package__ = name
            sys.modules[name] = package
        sys.modules["src"].models = sys.modules["src.models"]
        spec = importlib.util.spec_from_file_location("config", official_dir / "config.py")
        config = importlib.util.module_from_spec(spec)
        sys.modules["config"] = config
        spec.loader.exec_module(config)
        clip = sys.modules["clip"]
        clip.clip = importlib.import_module("clip.clip")
        clip.model = importlib.import_module("clip.model")
        clip.tokenize = clip.clip.tokenize
        yield
    finally:
        for name in [n for n in sys.modules if _is_own(n)]:
            del sys.modules[name]
        sys.modules.update(saved)


@contextlib.contextmanager
def _resnet_pretrained_arg() -> Iterator[None]:
    """Let ``torchvision.models.resnet101(pretrained=False)`` work on torchvision >= 0.15."""
    import torchvision.models

    original = torchvision.models.resnet101

    def resnet101(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if pretrained:
            raise ValueError("the official-code benchmark builds random-weight backbones only")
        return original(weights=None, **kwargs)

    torchvision.models.resnet101 = resnet101
    try:
        yield
    finally:
        torchvision.models.resnet101 = original


class OfficialLogits(nn.Module):
    """The official ``MyModel``, returning its logits only (it returns ``(score, prompts)``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        score, _ = self.model(images)
        return score


def build_official_model(
    official_dir: str | Path,
    class_names: Sequence[str],
    *,
    drop: float = 0.1,
    model_sizes: dict[str, Any] | None = None,
    clip_sizes: dict[str, Any] | None = None,
) -> OfficialLogits:
    """The official ``MyModel`` for ``class_names`` with random weights, on the CPU.

    Args:
        official_dir: The checkout of https://github.com/jiexuanyan/CPRFL.
        class_names: The classes (the official prompt is ``"a photo of a {name}."``).
        drop: The official ``--drop`` (dropout of the transformer layer).
        model_sizes: Values to set in ``build_model_TF``'s namespace in place of ``config.py``'s
            (``feature_d``, ``head_num``, ``dim_head``, ``mlp_dim``), for a smaller model.
        clip_sizes: Arguments of the CLIP constructor in place of RN50's.

    Returns:
        The model, in training mode, its ``forward`` giving (B, C) logits.

    Raises:
        FileNotFoundError: If ``official_dir`` is not such a checkout.
    """
    official_dir = Path(official_dir).resolve()
    check_checkout(official_dir)
    with _official_modules(official_dir), _resnet_pretrained_arg():
        build = importlib.import_module("src.models.build_model_TF")
        for key, value in (model_sizes or {}).items():
            setattr(build, key, value)
        clip_args = {**RN50_CLIP, **(clip_sizes or {})}
        clip_model = sys.modules["clip.model"].CLIP(**clip_args)
        args = {"pretrained": "", "drop": drop, "train": True}
        model = build.MyModel(args, classnames=list(class_names), clip_model=clip_model)
    model.prompts = model.prompts.cpu()  # MyModel puts them on CUDA whenever one is visible
    return OfficialLogits(model).train()


def move_official(model: OfficialLogits, device: torch.device) -> OfficialLogits:
    """Move the model and its tokenised prompts (a plain attribute, not a buffer) to ``device``."""
    model.to(device)
    model.model.prompts = model.model.prompts.to(device)
    return model
