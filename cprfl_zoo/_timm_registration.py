"""Register the ``cprfl*`` models with timm as soon as timm is imported, never before.

``import cprfl_zoo`` must not import timm (3 s) so that ``cprfl_zoo.losses`` and
``cprfl_zoo.metrics`` cost what torch costs, yet ``import cprfl_zoo; import timm;
timm.create_model("cprfl_resnet50", ...)`` must find the entrypoints of
:mod:`cprfl_zoo.entrypoints`. timm has no plugin discovery, so :func:`install` does it:

* timm already imported: the entrypoints are imported now;
* otherwise a finder is put first on :data:`sys.meta_path`. It wraps the loader of ``timm`` and of
  every ``cprfl_zoo.*`` module so that, right after one of them has run, it imports
  :mod:`cprfl_zoo.entrypoints` once timm is in :data:`sys.modules` and no ``cprfl_zoo`` module is
  half-way through its own import (``from cprfl_zoo.model import CPRFL`` imports timm from inside
  ``cprfl_zoo.model``; the entrypoints need the finished module, so they wait until it is done).
  Once they are registered the finder removes itself, so later imports pay nothing.

This is the post-import-hook pattern of ``wrapt.register_post_import_hook`` (PEP 369), in the
few lines this one case needs.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any

__all__ = ["install", "registered"]

_PACKAGE = __name__.rpartition(".")[0]
_ENTRYPOINTS = f"{_PACKAGE}.entrypoints"
_lock = threading.RLock()


def registered() -> bool:
    """Whether the entrypoints module has been imported (so timm knows the ``cprfl*`` models)."""
    return _ENTRYPOINTS in sys.modules


def _initializing(module: ModuleType | None) -> bool:
    spec = getattr(module, "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def _register_when_ready(just_run: str) -> None:
    """Import the entrypoints if timm is loaded and none of our modules is mid-import.

    Args:
        just_run: The module whose code has just run (still marked as importing until its
            loader returns).
    """
    with _lock:
        if registered():
            _Finder.uninstall()
            return
        modules = {k: v for k, v in list(sys.modules.items()) if k != just_run}
        if "timm" not in sys.modules or _initializing(modules.get("timm")):
            return
        if any(
            _initializing(m)
            for name, m in modules.items()
            if name == _PACKAGE or name.startswith(_PACKAGE + ".")
        ):
            return
        _Finder.uninstall()
        importlib.import_module(_ENTRYPOINTS)


class _RegisteringLoader(importlib.abc.Loader):
    """Runs the wrapped loader, then :func:`_register_when_ready`; everything else delegates."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _register_when_ready(module.__name__)

    def __getattr__(self, name: str) -> Any:  # get_source, get_resource_reader, is_package, ...
        return getattr(self._loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader the other finders give for timm and our modules."""

    _searching = threading.local()

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "timm" and not fullname.startswith(_PACKAGE + "."):
            return None
        if getattr(self._searching, "name", None) == fullname:
            return None  # the search below, which asks every finder again
        self._searching.name = fullname
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._searching.name = None
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RegisteringLoader(spec.loader)
        return spec

    @classmethod
    def installed(cls) -> bool:
        return any(isinstance(f, cls) for f in sys.meta_path)

    @classmethod
    def uninstall(cls) -> None:
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, cls)]


def install() -> None:
    """Make timm know the ``cprfl*`` models whenever it is (or gets) imported.

    Called by ``cprfl_zoo/__init__.py``; calling it again does nothing.
    """
    with _lock:
        if registered() or _Finder.installed():
            return
        if "timm" in sys.modules and not _initializing(sys.modules["timm"]):
            importlib.import_module(_ENTRYPOINTS)
            return
        sys.meta_path.insert(0, _Finder())
