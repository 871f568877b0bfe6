"""Image decoding for prediction and the datasets: any file Pillow reads, as 8-bit RGB.

``Image.open(path).convert("RGB")`` is wrong for several kinds of files a user may hand a model:
Pillow's conversion clips 16-bit and 32-bit integer pixels at 255 (a 16-bit grey value of 30000
becomes white) and float pixels as 0..255 levels (a float image in [0, 1] becomes black); it
drops the alpha channel, so transparent pixels are scored by the colour hidden under them; and it
ignores the EXIF orientation, so a phone photo is scored sideways. :func:`load_image` (files) and
:func:`to_rgb` (images already in memory) decode the way the image is displayed:

* **EXIF orientation** is applied (:func:`PIL.ImageOps.exif_transpose`, as timm and torchvision
  users do by hand);
* **16-bit** images (modes ``I;16``, ``I;16L``, ``I;16B``, ``I;16N``) are scaled from 0..65535 to
  0..255; 32-bit integer images (mode ``I``, which Pillow uses for 16-bit PGM files and
  ``convert("I")`` of a 16-bit image) are read the same way and refused when a value lies outside
  0..65535;
* **float** images (mode ``F``) in [0, 1] are scaled by 255; values in [0, 255] (Pillow's own
  convention for ``F``) are read as 8-bit levels; negative, larger or non-finite values are
  refused (no display range can be assumed);
* **transparency** (modes ``RGBA``, ``RGBa``, ``LA``, ``La``, ``PA``, and ``P`` / ``L`` / ``RGB``
  with a transparent colour) is composited on :data:`BACKGROUND` (white);
* ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``1``, ``L``, ``P`` go through Pillow's own conversion;
* an image of more pixels than :data:`PIL.Image.MAX_IMAGE_PIXELS` is refused from its header,
  before it is decoded (a small PNG can hold a huge, uniform image). Pillow's own
  ``DecompressionBombWarning`` may precede the refusal; it is left alone, since silencing it
  would change the process-wide warning filters.

Every failure is an :class:`ImageReadError` (an ``OSError``) naming the file.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "BACKGROUND",
    "ImageReadError",
    "load_image",
    "pixel_limit_worker_init",
    "to_rgb",
]

_logger = logging.getLogger(__name__)

BACKGROUND = (255, 255, 255)
"""The colour transparent pixels are composited on: white, as a page shows a transparent image."""

_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_ORIENTATION = 0x0112  # the EXIF Orientation tag


class ImageReadError(OSError):
    """An image that cannot be read or decoded; the message names the file.

    Attributes:
        path: The file (``None`` for an image in memory).
        reason: What is wrong, without the file name.
    """

    def __init__(self, message: str, *, path: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.path = path
        self.reason = message if reason is None else reason


def _limit_advice() -> str:
    return (
        "raise the limit if you trust the file: PIL.Image.MAX_IMAGE_PIXELS = N in Python "
        "(None: no limit), --max-image-pixels N on the cprfl-zoo command line"
    )


def _check_pixels(size: tuple[int, int]) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"the image is {width} x {height} pixels: it has no pixels")
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise ValueError(
            f"{width} x {height} = {width * height:,} pixels is more than the limit of "
            f"{limit:,} (PIL.Image.MAX_IMAGE_PIXELS); refused before decoding; {_limit_advice()}"
        )


def _describe(error: BaseException) -> str:
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"{error}; refused before decoding; {_limit_advice()}"
    if isinstance(error, ValueError):
        return str(error)
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return error.strerror
    return f"{type(error).__name__}: {error}"


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file as 8-bit RGB, as it is displayed (see the module's description).

    Args:
        path: The image file.

    Returns:
        An RGB PIL image, detached from the file.

    Raises:
        FileNotFoundError: If the file does not exist (Pillow's error, naming it).
        ImageReadError: If the file is not an image Pillow can decode, is truncated, has more
            pixels than ``PIL.Image.MAX_IMAGE_PIXELS``, or has values no 8-bit range can be
            given (float values outside [0, 255], integers outside 0..65535); the message names
            the file and, for the pixel limit, how to raise it.
    """
    name = os.fsdecode(path)
    try:
        # Pillow warns above MAX_IMAGE_PIXELS (refused here) and raises above twice that
        with Image.open(path) as image:
            _check_pixels(image.size)
            image.load()
            rgb = to_rgb(image, source=name)
            # closing the file frees the image's pixels: keep a copy of an unconverted one
            return rgb.copy() if rgb is image else rgb
    except FileNotFoundError:
        raise
    except ImageReadError as e:
        message = f"cannot read image {name}: {e.reason}"
        raise ImageReadError(message, path=name, reason=e.reason) from e.__cause__
    except (MemoryError, RecursionError):
        raise
    except Exception as e:  # Pillow's decoders raise OSError, ValueError, SyntaxError, ...
        reason = _describe(e)
        raise ImageReadError(f"cannot read image {name}: {reason}", path=name, reason=reason) from e


def _transpose(image: Image.Image, source: str | None) -> Image.Image:
    try:
        orientation = image.getexif().get(_ORIENTATION, 1)
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            return ImageOps.exif_transpose(image)
    except Exception as e:  # an unreadable EXIF block: the image itself is still fine
        _logger.warning("%s: ignoring its unreadable EXIF orientation (%s)", source or "image", e)
    return image


def _grey_levels(image: Image.Image) -> np.ndarray:
    """8-bit levels of a one-channel image of mode I;16*, I or F (see the module's rules)."""
    values = np.asarray(image)
    if image.mode == "F":
        if not np.isfinite(values).all():
            raise ValueError("the float image holds NaN or infinite values")
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"float pixel values in [{low:g}, {high:g}]; expected [0, 1] (scaled by 255) "
                "or [0, 255]: rescale the image to one of these ranges"
            )
        scaled = values * 255.0 if high <= 1 else values
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if image.mode == "I":
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise ValueError(
                f"32-bit integer pixel values in [{low}, {high}]; expected 16-bit values "
                "0..65535: rescale the image"
            )
    # 0..65535 -> 0..255 exactly: 65535 / 257 = 255
    return np.rint(values.astype(np.float32) / 257.0).astype(np.uint8)


def _composite(image: Image.Image) -> Image.Image:
    if image.mode == "La":  # Pillow converts premultiplied grey only to LA
        image = image.convert("LA")
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(image: Image.Image, *, source: str | None = None) -> Image.Image:
    """Convert a PIL image to 8-bit RGB as it is displayed (see the module's description).

    EXIF orientation is applied; it is a no-op on an image already transposed (which has no
    orientation tag left). An RGB image without orientation comes back as is (not copied).

    Args:
        image: Any PIL image.
        source: Its file or name, for the messages.

    Returns:
        An RGB image.

    Raises:
        ImageReadError: If the image has values no 8-bit range can be given or a mode Pillow
            cannot convert; the message names ``source``.
    """
    try:
        image = _transpose(image, source)
        mode = image.mode
        if mode in _SIXTEEN_BIT or mode in ("I", "F"):
            return Image.fromarray(_grey_levels(image), "L").convert("RGB")
        if mode in _ALPHA or (mode in ("P", "L", "RGB") and "transparency" in image.info):
            return _composite(image)
        return image if mode == "RGB" else image.convert("RGB")
    except Exception as e:
        reason = f"mode {image.mode}: {_describe(e)}"
        where = source or "the image"
        raise ImageReadError(f"cannot read {where}: {reason}", path=source, reason=reason) from e


def _set_pixel_limit(limit: int | None, worker_id: int) -> None:
    Image.MAX_IMAGE_PIXELS = limit


def pixel_limit_worker_init() -> Callable[[int], None]:
    """A ``DataLoader`` ``worker_init_fn`` giving workers this process's pixel limit.

    Workers started with the ``spawn`` method (macOS, Windows) import Pillow afresh and would
    otherwise use its default ``PIL.Image.MAX_IMAGE_PIXELS``.

    Returns:
        ``worker_init_fn(worker_id)`` setting ``PIL.Image.MAX_IMAGE_PIXELS`` to the value in force
        now.
    """
    return functools.partial(_set_pixel_limit, Image.MAX_IMAGE_PIXELS)
