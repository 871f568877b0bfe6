"""cprfl_zoo: CPRFL for long-tailed multi-label classification on any timm backbone."""

from ._version import __version__
from .factory import create_cprfl
from .model import CPRFL
from .text import encode_class_names

__all__ = ["CPRFL", "__version__", "create_cprfl", "encode_class_names"]
