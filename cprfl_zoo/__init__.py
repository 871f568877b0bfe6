"""cprfl_zoo: CPRFL for long-tailed multi-label classification on any timm backbone.

``import cprfl_zoo`` is light: the names below are imported on first use (PEP 562), so
``from cprfl_zoo.losses import AsymmetricLoss`` or ``cprfl_zoo.metrics`` never import timm or
open_clip. The ``cprfl*`` timm models are registered as soon as timm is imported, before or after
this package (see :mod:`cprfl_zoo._timm_registration`), so ``import cprfl_zoo; import timm;
timm.create_model("cprfl_resnet50", ...)`` works as before.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from . import _timm_registration
from ._version import __version__

if TYPE_CHECKING:
    from .convert import convert_official_checkpoint
    from .factory import create_cprfl
    from .head_config import HeadConfig
    from .losses import ASLSingleLabel, AsymmetricLoss
    from .model import CPRFL
    from .text import encode_class_names

__all__ = [
    "CPRFL",
    "ASLSingleLabel",
    "AsymmetricLoss",
    "HeadConfig",
    "__version__",
    "convert_official_checkpoint",
    "create_cprfl",
    "encode_class_names",
]

# Public name -> the submodule that defines it, imported on first access.
_LAZY = {
    "CPRFL": "model",
    "ASLSingleLabel": "losses",
    "AsymmetricLoss": "losses",
    "HeadConfig": "head_config",
    "convert_official_checkpoint": "convert",
    "create_cprfl": "factory",
    "encode_class_names": "text",
}

_timm_registration.install()


def __getattr__(name: str) -> Any:
    """Import a public name, or a submodule (``cprfl_zoo.text``), on first access."""
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
