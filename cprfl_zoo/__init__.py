"""cprfl_zoo: CPRFL for long-tailed multi-label classification on any timm backbone."""

from . import entrypoints  # noqa: F401  (registers the cprfl* models with timm)
from ._version import __version__
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
