"""Image transforms: timm's preprocessing for a model, or the CPRFL paper's recipe.

* :func:`create_transforms`: the training or evaluation transform (timm's pipeline, or 448 px,
  Cutout and RandAugment as in the paper).
* :class:`RandomCutout`: the Cutout of the CPRFL / ASL training recipe, on PIL images.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
from torchvision import transforms as T

__all__ = ["RandomCutout", "create_transforms"]


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
