"""Where a command may write: never over the model it reads, never over a file without asking.

``export`` writes one file and ``calibrate`` a model folder. Both refuse, before any work:

* a path inside the folder of the ``MODEL`` they read (``export --output m/model.safetensors``
  would destroy the model being exported) or inside the Hugging Face cache;
* an existing output unless ``--overwrite`` (as ``convert-official`` does); a folder where a file
  is expected, or a file where a folder is expected;
* for a model folder, an existing folder that holds something other than a saved model (a data
  folder), even with ``--overwrite``.
"""

from __future__ import annotations

from pathlib import Path

from ._common import CommandError

__all__ = ["check_output_file", "check_output_folder", "model_folder"]


def model_folder(spec: str) -> Path | None:
    """The local folder a ``MODEL`` argument reads, or ``None`` for a Hub repository.

    Args:
        spec: A saved model folder, ``local-dir:<folder>`` or ``hf-hub:<repo>``.

    Returns:
        The resolved folder, or ``None``.
    """
    if spec.startswith("hf-hub:"):
        return None
    return Path(spec.removeprefix("local-dir:")).resolve()


def _protected(path: Path, spec: str) -> str | None:
    """Why ``path`` must not be written, or ``None``."""
    target = path.resolve()
    folder = model_folder(spec)
    if folder is not None and (target == folder or folder in target.parents):
        return f"it is inside the folder of MODEL {spec}, which the command reads"
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:  # pragma: no cover - a dependency of timm
        return None
    cache = Path(HF_HUB_CACHE).resolve()
    if target == cache or cache in target.parents:
        return "it is inside the Hugging Face cache"
    return None


def check_output_file(option: str, output: str, spec: str, overwrite: bool) -> None:
    """Refuse writing the file ``output`` of a command that reads ``MODEL`` ``spec``.

    Args:
        option: The option's name, for messages (``"--output"``).
        output: The file to write.
        spec: The ``MODEL`` argument.
        overwrite: ``--overwrite`` was given.

    Raises:
        CommandError: If ``output`` is a folder, or an existing file of the model's folder (also
            through a link) or of the Hub cache, or exists and ``overwrite`` is false.
    """
    path = Path(output)
    if path.is_dir():
        raise CommandError(f"{option} {output} is a folder; give a file name")
    if not path.exists():
        return
    reason = _protected(path, spec)
    folder = model_folder(spec)
    files = folder.iterdir() if folder is not None and folder.is_dir() else ()
    if reason is None and any(path.samefile(f) for f in files):  # a link to a model file
        reason = f"it is a file of MODEL {spec}, which the command reads"
    if reason is not None:
        raise CommandError(f"{option} {output}: refusing to write over it, {reason}")
    if not overwrite:
        raise CommandError(f"{option} {output} already exists; pass --overwrite to replace it")


def check_output_folder(option: str, output: str, spec: str, overwrite: bool) -> None:
    """Refuse saving a model to the folder ``output`` for a command that reads ``spec``.

    Args:
        option: The option's name, for messages (``"--output"``).
        output: The folder to save to.
        spec: The ``MODEL`` argument.
        overwrite: ``--overwrite`` was given.

    Raises:
        CommandError: If ``output`` is the model's own folder (or inside it, or in the Hub
            cache), is a file, is a non-empty folder that holds no saved model, or holds a saved
            model and ``overwrite`` is false.
    """
    from ..hub import CONFIG_NAME

    path = Path(output)
    reason = _protected(path, spec)
    if reason is not None:
        raise CommandError(f"{option} {output}: refusing to save there, {reason}")
    if path.exists() and not path.is_dir():
        raise CommandError(f"{option} {output} is a file; give a folder to save the model to")
    if not path.is_dir() or not any(path.iterdir()):
        return
    if not (path / CONFIG_NAME).is_file():
        raise CommandError(
            f"{option} {output} is a folder that holds files but no saved model; give a new "
            "or empty folder"
        )
    if not overwrite:
        raise CommandError(
            f"{option} {output} already holds a saved model; pass --overwrite to replace it"
        )
