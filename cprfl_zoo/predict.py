"""Multi-label prediction: probabilities, the model's thresholds, labels per image.

A CPRFL model scores every class independently: ``sigmoid(logit)`` is the probability of class
*i* and a label is predicted when its probability is ``>=`` its threshold (the model's calibrated
per-class thresholds, 0.5 where it has none; see :mod:`cprfl_zoo.thresholds`).

* :meth:`CPRFL.predict <cprfl_zoo.model.CPRFL.predict>` / :func:`predict`: images in memory (a
  batch tensor, PIL images or file paths) to one :class:`Prediction` per image.
* :class:`Predictor`: the same over many image files with a ``DataLoader`` (workers, a progress
  bar); unreadable images are reported by name and skipped.
* :func:`collect_logits`: logits and targets of a labelled loader, for evaluation and
  calibration.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .data.images import ImageReadError, load_image, pixel_limit_worker_init, to_rgb
from .thresholds import DEFAULT_THRESHOLD, validate_thresholds

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageFiles",
    "Prediction",
    "Predictor",
    "collect_logits",
    "decode_predictions",
    "eval_transform",
    "find_images",
    "predict",
    "resolve_thresholds",
]

_logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
"""File suffixes :func:`find_images` picks up in a folder (case-insensitive)."""

ImageInput = Tensor | Image.Image | str | os.PathLike | Sequence[Image.Image | str | os.PathLike]


@dataclass(frozen=True)
class Prediction:
    """The labels predicted for one image.

    Attributes:
        labels: Names of the classes at or above their threshold, in logit order.
        probabilities: Their probabilities ``sigmoid(logit)``.
        indices: Their class indices.
        source: The image file, when predicted from a file.
    """

    labels: list[str]
    probabilities: list[float]
    indices: list[int]
    source: str | None = field(default=None)

    def as_dict(self) -> dict[str, Any]:
        """``{"image": source, "labels": [...], "probabilities": [...], "indices": [...]}``."""
        out: dict[str, Any] = {} if self.source is None else {"image": self.source}
        out.update(labels=self.labels, probabilities=self.probabilities, indices=self.indices)
        return out


def resolve_thresholds(
    model: nn.Module, thresholds: float | Sequence[float] | Tensor | None = None
) -> Tensor:
    """The float32 (C,) probability thresholds to apply: the call's, else the model's.

    Args:
        model: A CPRFL model or its deploy module.
        thresholds: ``None`` (the model's thresholds, 0.5 where uncalibrated), one number for
            every class, or one per class in logit order.

    Returns:
        The thresholds, on the CPU.

    Raises:
        ValueError: If ``thresholds`` has the wrong length or a value outside [0, 1].
    """
    num_classes = len(model.class_names)
    if thresholds is not None:
        return torch.tensor(validate_thresholds(thresholds, num_classes), dtype=torch.float32)
    get = getattr(model, "get_thresholds", None)
    if callable(get):
        return get().detach().float().cpu()
    own = getattr(model, "thresholds", None)
    if own is None:
        return torch.full((num_classes,), DEFAULT_THRESHOLD)
    return torch.as_tensor(own, dtype=torch.float32).detach().cpu()


def decode_predictions(
    probs: Tensor,
    class_names: Sequence[str],
    thresholds: Tensor,
    sources: Sequence[str | None] | None = None,
) -> list[Prediction]:
    """Turn a (B, C) probability matrix into one :class:`Prediction` per row.

    Args:
        probs: ``(B, C)`` probabilities.
        class_names: The C names, in logit order.
        thresholds: ``(C,)`` probability thresholds.
        sources: Optional image name of each row.

    Returns:
        The predictions, in row order.
    """
    probs = probs.detach().float().cpu()
    keep = probs >= thresholds.to(probs)[None]
    out = []
    for row in range(probs.shape[0]):
        idx = keep[row].nonzero().flatten().tolist()
        out.append(
            Prediction(
                labels=[class_names[i] for i in idx],
                probabilities=probs[row, idx].tolist(),
                indices=idx,
                source=None if sources is None else sources[row],
            )
        )
    return out


def eval_transform(model: nn.Module) -> Callable[[Image.Image], Tensor]:
    """The evaluation transform of timm for the model's data config (resize, crop, normalise).

    Args:
        model: A model with a timm ``pretrained_cfg``.

    Returns:
        A callable from an RGB PIL image to a (C, H, W) float tensor.
    """
    import timm.data

    config = timm.data.resolve_data_config(model=model)
    return timm.data.create_transform(**config, is_training=False)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


_ACCEPTED = (
    "a (B, C, H, W) or (C, H, W) tensor, a PIL image, an image path (str or os.PathLike) or a "
    "list of PIL images / paths"
)


def _as_batch(images: ImageInput, transform: Callable[[Image.Image], Tensor]) -> Tensor | None:
    """The images as one preprocessed batch; ``None`` for no image at all."""
    if isinstance(images, Tensor):
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.ndim != 4:
            raise ValueError(
                f"an image tensor must be (B, C, H, W) or (C, H, W), got shape "
                f"{tuple(images.shape)}"
            )
        return images if images.shape[0] else None
    if isinstance(images, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"images must be {_ACCEPTED}, got {type(images).__name__}: give a path as str "
            "(os.fsdecode(path)), or the encoded image as PIL.Image.open(io.BytesIO(data))"
        )
    if isinstance(images, (Image.Image, str, os.PathLike)):
        images = [images]
    if not isinstance(images, Sequence):
        raise TypeError(f"images must be {_ACCEPTED}, got {type(images).__name__}")
    if not images:
        return None
    tensors = []
    for i, image in enumerate(images):
        if isinstance(image, (str, os.PathLike)):
            image = load_image(image)
        elif isinstance(image, Image.Image):
            image = to_rgb(image, source=f"images[{i}]")
        else:
            raise TypeError(
                f"images[{i}] is {type(image).__name__}, not a PIL image or a path (str or "
                "os.PathLike)"
            )
        tensors.append(transform(image))
    return torch.stack(tensors)


@torch.inference_mode()
def predict(
    model: nn.Module,
    images: ImageInput,
    thresholds: float | Sequence[float] | Tensor | None = None,
    *,
    transform: Callable[[Image.Image], Tensor] | None = None,
    batch_size: int = 32,
) -> list[Prediction]:
    """Predict the labels of images held in memory.

    The model runs in eval mode (its training mode is restored afterwards) on its own device.
    Files and PIL images are decoded to 8-bit RGB as they are displayed
    (:func:`cprfl_zoo.data.images.to_rgb`: EXIF orientation applied, 16-bit and float pixels
    scaled, transparency composited on white).

    Args:
        model: A CPRFL model or its deploy module.
        images: A ``(B, C, H, W)`` (or ``(C, H, W)``) tensor already preprocessed, or PIL
            images / image paths (``str`` or ``os.PathLike``), preprocessed with ``transform``.
            An empty batch or list gives an empty list.
        thresholds: Probability thresholds for this call: one number or one per class (default:
            the model's, 0.5 where uncalibrated).
        transform: Preprocessing of PIL images (default: :func:`eval_transform` of the model).
        batch_size: Images per forward pass.

    Returns:
        One :class:`Prediction` per image, in input order.

    Raises:
        TypeError: If ``images`` is of an unsupported type (``None``, ``bytes``, a NumPy
            array, ...); the message lists what is accepted.
        ValueError: On bad ``thresholds`` or ``batch_size``, or a tensor that is not 3-D or 4-D.
        FileNotFoundError: If an image file does not exist.
        ImageReadError: If an image cannot be decoded (an ``OSError`` naming the file).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    limits = resolve_thresholds(model, thresholds)
    batch = _as_batch(images, transform or eval_transform(model))
    if batch is None:
        return []
    device = _model_device(model)
    was_training = model.training
    if was_training:
        model.eval()
    try:
        probs = torch.cat(
            [
                model(batch[i : i + batch_size].to(device)).float().sigmoid().cpu()
                for i in range(0, batch.shape[0], batch_size)
            ]
        )
    finally:
        if was_training:
            model.train()
    return decode_predictions(probs, model.class_names, limits)


# ---------------------------------------------------------------------- files
def find_images(specs: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand image files, folders (searched recursively) and glob patterns, in order.

    Args:
        specs: File paths, folders or glob patterns (``photos/*.jpg``, ``data/**/*.png``).

    Returns:
        The image files, each once, folders' contents sorted.

    Raises:
        FileNotFoundError: If a spec matches nothing (the spec named).
    """
    found: dict[Path, None] = {}
    for spec in specs:
        path = Path(spec)
        if path.is_file():
            found[path] = None
        elif path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not files:
                raise FileNotFoundError(f"{spec}: the folder holds no image files")
            found.update(dict.fromkeys(files))
        else:
            matches = sorted(Path(m) for m in glob.glob(str(spec), recursive=True))
            matches = [m for m in matches if m.is_file()]
            if not matches:
                raise FileNotFoundError(f"{spec}: no such file or folder, and no glob match")
            found.update(dict.fromkeys(matches))
    return list(found)


class ImageFiles(Dataset):
    """Image files for a ``DataLoader``; an unreadable file gives its error instead of a crash.

    Files are decoded with :func:`cprfl_zoo.data.images.load_image` (EXIF orientation, 16-bit and
    float pixels, transparency, the pixel limit). ``dataset[i]`` is ``(tensor, i, "")`` or, when
    the file cannot be read, ``(None, i, error)`` (``error`` says what is wrong, without the
    path); :meth:`collate` drops the failures from the batch and keeps their messages.

    Args:
        paths: The image files.
        transform: PIL image to tensor (e.g. :func:`eval_transform`).
    """

    def __init__(self, paths: Sequence[str | os.PathLike], transform: Callable) -> None:
        self.paths = [os.fsdecode(p) for p in paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor | None, int, str]:
        try:
            return self.transform(load_image(self.paths[index])), index, ""
        except ImageReadError as e:
            return None, index, e.reason
        except Exception as e:  # any decoder or transform failure skips just this file
            return None, index, f"{type(e).__name__}: {e}"

    @staticmethod
    def collate(
        items: list[tuple[Tensor | None, int, str]],
    ) -> tuple[Tensor | None, list[int], list[tuple[int, str]]]:
        """Stack the readable images; return ``(images or None, indices, [(index, error)])``."""
        good = [(t, i) for t, i, _ in items if t is not None]
        bad = [(i, err) for t, i, err in items if t is None]
        images = torch.stack([t for t, _ in good]) if good else None
        return images, [i for _, i in good], bad


class Predictor:
    """Predict labels for many images with a CPRFL model (a small pipeline).

    Example:
        >>> predictor = Predictor(model, batch_size=64, num_workers=4)
        >>> predictions, failures = predictor.predict_files(find_images(["photos/"]))
        >>> predictor([Image.open("cat.jpg")])[0].labels

    Args:
        model: A CPRFL model or its deploy module; put in eval mode and moved to ``device``.
        thresholds: Default probability thresholds of this predictor (one number or one per
            class); ``None``: the model's, read at each call, so that a later
            ``model.set_thresholds`` applies.
        device: Torch device (default: the model's).
        batch_size: Images per forward pass.
        num_workers: ``DataLoader`` workers decoding files.
        transform: Preprocessing (default: :func:`eval_transform` of the model).
        progress: Show a tqdm bar over files (default: when stderr is a terminal).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        thresholds: float | Sequence[float] | Tensor | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        transform: Callable[[Image.Image], Tensor] | None = None,
        progress: bool | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        self.model = model.eval()
        if device is not None:
            self.model.to(device)
        self.device = _model_device(self.model)
        self._thresholds = None if thresholds is None else resolve_thresholds(model, thresholds)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.transform = transform or eval_transform(model)
        self.progress = progress

    @property
    def class_names(self) -> list[str]:
        """The model's class names, in logit order."""
        return list(self.model.class_names)

    @property
    def thresholds(self) -> Tensor:
        """The ``(C,)`` thresholds a call without ``thresholds=`` applies now."""
        return self._limits(None)

    def _limits(self, thresholds: float | Sequence[float] | Tensor | None) -> Tensor:
        if thresholds is not None:
            return resolve_thresholds(self.model, thresholds)
        if self._thresholds is not None:
            return self._thresholds
        return resolve_thresholds(self.model)

    def __call__(
        self, images: ImageInput, thresholds: float | Sequence[float] | Tensor | None = None
    ) -> list[Prediction]:
        """Predict images in memory; see :func:`predict`."""
        return predict(
            self.model,
            images,
            self._limits(thresholds),
            transform=self.transform,
            batch_size=self.batch_size,
        )

    @torch.inference_mode()
    def predict_files(
        self,
        paths: Sequence[str | os.PathLike],
        thresholds: float | Sequence[float] | Tensor | None = None,
    ) -> tuple[list[Prediction], list[tuple[str, str]]]:
        """Predict image files through a ``DataLoader``, skipping unreadable ones.

        Args:
            paths: The image files (see :func:`find_images`).
            thresholds: Thresholds for this call (default: the predictor's).

        Returns:
            ``(predictions, failures)``: a :class:`Prediction` with ``source`` set for each
            readable image, in input order, and ``(path, error)`` for each skipped one (also
            logged as a warning).
        """
        from tqdm.auto import tqdm

        limits = self._limits(thresholds)
        dataset = ImageFiles(paths, self.transform)
        loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=ImageFiles.collate,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=pixel_limit_worker_init() if self.num_workers else None,
        )
        predictions: list[Prediction] = []
        failures: list[tuple[str, str]] = []
        disable = None if self.progress is None else not self.progress
        with tqdm(total=len(dataset), unit="img", disable=disable) as bar:
            for images, indices, bad in loader:
                for index, error in bad:
                    _logger.warning("skipped %s: %s", dataset.paths[index], error)
                    failures.append((dataset.paths[index], error))
                if images is not None:
                    logits = self.model(images.to(self.device, non_blocking=True))
                    probs = logits.float().sigmoid().cpu()
                    sources = [dataset.paths[i] for i in indices]
                    predictions += decode_predictions(probs, self.class_names, limits, sources)
                bar.update(len(indices) + len(bad))
        return predictions, failures


@torch.inference_mode()
def collect_logits(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Run a model over a labelled loader and return all logits and targets.

    Args:
        model: A CPRFL model (put in eval mode) or its deploy module.
        loader: Batches of ``(images, targets)``, e.g. over a
            :class:`~cprfl_zoo.data.MultiLabelImageList`.
        device: Where to run; the model is moved there (default: the model's device).
        progress: Show a tqdm bar (default: when stderr is a terminal).

    Returns:
        ``(logits, targets)``: float32 ``(N, C)`` on the CPU.
    """
    from tqdm.auto import tqdm

    model.eval()
    if device is not None:
        model.to(device)
    device = _model_device(model)
    logits, targets = [], []
    disable = None if progress is None else not progress
    for images, target in tqdm(loader, unit="batch", disable=disable):
        logits.append(model(images.to(device, non_blocking=True)).float().cpu())
        targets.append(target.cpu())
    if not logits:
        raise ValueError("the loader gave no batch")
    return torch.cat(logits), torch.cat(targets)
