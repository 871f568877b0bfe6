"""Export a deployed CPRFL model as a ``torch.export`` program (.pt2) or an ONNX file.

Both exports take images (B, C, H, W) with a symbolic batch dimension ``batch`` (H and W are
fixed to the export's input size) and return raw logits (B, C). Each file carries what a server
needs to turn the logits into labels, as string key/value metadata (ONNX ``metadata_props``; for
.pt2 the extra file ``cprfl_zoo.json``):

* ``class_names``: JSON list of the label names, in logit order;
* ``activation``: ``"sigmoid"`` (multi-label: one independent probability per class);
* ``output``: ``"logits"``;
* ``thresholds``: JSON list of the per-class decision thresholds on the probabilities;
* ``preprocessing``: JSON object with ``input_size``, ``mean``, ``std`` (and ``interpolation``,
  ``crop_pct``, ``crop_mode`` when known), the backbone's timm data config;
* ``input_name``, ``output_name``, ``cprfl_zoo_version``.

ONNX export needs the ``onnx`` extra (``pip install "cprfl-zoo[onnx]"``: onnx, onnxscript).
"""

from __future__ import annotations

import io
import json
import logging
import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._version import __version__
from .deploy import DeployedCPRFL
from .fileio import atomic_path, atomic_write_bytes
from .pt2_archive import check_loadable, read_extra_json

_logger = logging.getLogger(__name__)

__all__ = [
    "EXPORT_FORMATS",
    "METADATA_FILE",
    "MIN_OPSET",
    "check_opset",
    "check_suffix",
    "export_metadata",
    "export_model",
    "export_onnx",
    "export_program",
    "export_pt2",
    "load_pt2",
    "max_opset",
    "read_metadata",
]

EXPORT_FORMATS = ("onnx", "pt2")
METADATA_FILE = "cprfl_zoo.json"
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18
MIN_OPSET = 17
_PREPROCESSING_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
_JSON_KEYS = ("class_names", "thresholds", "preprocessing")
# Files are for serving: readable by everyone, like the model folders save_pretrained writes.
_FILE_MODE = 0o644


def _deployed(model: nn.Module) -> DeployedCPRFL:
    if isinstance(model, DeployedCPRFL):
        return model
    deploy = getattr(model, "deploy", None)
    if not callable(deploy):
        raise TypeError(
            f"export needs a CPRFL model or its deploy() module, got {type(model).__name__}"
        )
    return deploy()


def _input_size(module: DeployedCPRFL, input_size: Sequence[int] | None) -> tuple[int, int, int]:
    size = input_size if input_size is not None else module.pretrained_cfg.get("input_size")
    if size is None:
        raise ValueError(
            "the model's pretrained_cfg has no input_size; pass input_size=(C, H, W) "
            "(--input-size on the command line)"
        )
    if isinstance(size, (str, bytes)) or not isinstance(size, Sequence):
        raise ValueError(f"input_size must be (C, H, W) or (H, W) of positive ints, got {size!r}")
    bad = [s for s in size if isinstance(s, bool) or not isinstance(s, numbers.Integral)]
    if bad:
        # int(159.7) would export at 159 without a word
        raise ValueError(
            f"input_size must be (C, H, W) or (H, W) of positive ints, got {tuple(size)} "
            f"({bad[0]!r} is not an integer)"
        )
    size = tuple(int(s) for s in size)
    if len(size) == 2:
        size = (module.in_chans, *size)
    if len(size) != 3 or min(size) <= 0:
        raise ValueError(f"input_size must be (C, H, W) or (H, W) of positive ints, got {size}")
    if size[0] != module.in_chans:
        raise ValueError(
            f"input_size {size} has {size[0]} channels but the model expects {module.in_chans}"
        )
    return size  # type: ignore[return-value]


def export_metadata(model: nn.Module, input_size: Sequence[int] | None = None) -> dict[str, str]:
    """The metadata an export carries, as strings (JSON for lists and objects).

    Args:
        model: A CPRFL model or its :class:`~cprfl_zoo.deploy.DeployedCPRFL`.
        input_size: The export's input size (C, H, W); default the model's ``input_size``.

    Returns:
        The key/value pairs described in the module docstring.
    """
    module = _deployed(model)
    cfg = module.pretrained_cfg
    prep: dict[str, Any] = {k: cfg[k] for k in _PREPROCESSING_KEYS if cfg.get(k) is not None}
    prep["input_size"] = list(_input_size(module, input_size))
    prep = {k: list(v) if isinstance(v, tuple) else v for k, v in prep.items()}
    return {
        "class_names": json.dumps(module.class_names, ensure_ascii=False),
        "activation": "sigmoid",
        "output": "logits",
        "thresholds": json.dumps([float(t) for t in module.thresholds.tolist()]),
        "preprocessing": json.dumps(prep),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "cprfl_zoo_version": __version__,
    }


def _decode(metadata: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = dict(metadata)
    for key in _JSON_KEYS:
        if key in out:
            out[key] = json.loads(out[key])
    return out


def _example_and_shapes(
    module: DeployedCPRFL, input_size: Sequence[int] | None
) -> tuple[torch.Tensor, dict[str, Any]]:
    param = next(module.parameters())
    # Batch 2, not 1: torch.export specialises sizes 0 and 1.
    example = torch.randn(2, *_input_size(module, input_size), device=param.device)
    example = example.to(param.dtype)
    dynamic = {"x": {0: torch.export.Dim("batch", min=1)}}
    return example, dynamic


def export_program(
    model: nn.Module, input_size: Sequence[int] | None = None
) -> torch.export.ExportedProgram:
    """``torch.export`` the deployed model with a symbolic batch dimension.

    Args:
        model: A CPRFL model (deployed first) or its :class:`~cprfl_zoo.deploy.DeployedCPRFL`.
        input_size: Image size (C, H, W) the program takes; default the model's ``input_size``.

    Returns:
        The exported program; ``program.module()(images)`` gives the logits.
    """
    module = _deployed(model)
    example, dynamic = _example_and_shapes(module, input_size)
    return torch.export.export(module, (example,), dynamic_shapes=dynamic)


def export_pt2(
    model: nn.Module, path: str | os.PathLike[str], input_size: Sequence[int] | None = None
) -> Path:
    """Write the ``torch.export`` program to a .pt2 file, with the metadata as an extra file.

    Read it back with :func:`load_pt2`.

    Args:
        model: A CPRFL model (deployed first) or its :class:`~cprfl_zoo.deploy.DeployedCPRFL`.
        path: The file to write (atomically).
        input_size: Image size (C, H, W); default the model's ``input_size``.

    Returns:
        The path written.
    """
    module = _deployed(model)
    program = export_program(module, input_size)
    extra = {METADATA_FILE: json.dumps(export_metadata(module, input_size), ensure_ascii=False)}
    # A file object, not the temporary name: torch.export warns about names not ending in .pt2.
    with atomic_path(path, mode=_FILE_MODE) as tmp, tmp.open("wb") as f:
        torch.export.save(program, f, extra_files=extra)
    _logger.info("wrote %s (torch.export, %d classes)", path, module.num_classes)
    return Path(path)


def load_pt2(path: str | os.PathLike[str]) -> tuple[torch.export.ExportedProgram, dict[str, Any]]:
    """Load a .pt2 file written by :func:`export_pt2`, refusing one that would run code.

    ``torch.export.load`` may unpickle objects stored in the archive (and retries the sample
    inputs with ``weights_only=False``), load compiled libraries and ``eval`` expressions of
    the graph. The file is read once and checked by :func:`cprfl_zoo.pt2_archive.check_loadable`
    before torch sees those same bytes: an archive with a pickled or compiled payload, sample
    inputs the safe unpickler refuses, guard code or a symbolic expression that is not shape
    arithmetic is refused, so nothing in it runs.

    Args:
        path: The file.

    Returns:
        The exported program and its metadata (``class_names`` and ``thresholds`` as lists,
        ``preprocessing`` as a dict).

    Raises:
        ValueError: If the file is not a .pt2 archive written by :func:`export_pt2`, or holds
            a payload that would run code (:class:`~cprfl_zoo.pt2_archive.UnsafeArchiveError`).
    """
    data = Path(path).read_bytes()
    check_loadable(data, str(path))
    metadata = _pt2_metadata(data, str(path))
    try:
        program = torch.export.load(io.BytesIO(data))
    except (RuntimeError, AssertionError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: torch.export could not load the program ({e})") from e
    return program, metadata


def _pt2_metadata(data: bytes, source: str) -> dict[str, Any]:
    return _checked_metadata(read_extra_json(data, METADATA_FILE, source), source)


def _checked_metadata(metadata: Any, source: str) -> dict[str, Any]:
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ValueError(f"{source}: the cprfl_zoo metadata is not a map of strings")
    missing = [key for key in ("class_names", "thresholds") if key not in metadata]
    if missing:
        raise ValueError(
            f"{source} carries no cprfl_zoo metadata ({missing} missing); export it with "
            "cprfl_zoo.export"
        )
    try:
        return _decode(metadata)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{source}: bad JSON in the cprfl_zoo metadata ({e})") from None


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    input_size: Sequence[int] | None = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write the deployed model as ONNX (dynamo exporter) with the metadata as metadata_props.

    The graph's input is ``images`` (batch, C, H, W) and its output ``logits`` (batch, classes),
    with ``batch`` a symbolic dimension.

    Args:
        model: A CPRFL model (deployed first) or its :class:`~cprfl_zoo.deploy.DeployedCPRFL`.
        path: The file to write (atomically).
        input_size: Image size (C, H, W); default the model's ``input_size``.
        opset: ONNX opset version, from :data:`MIN_OPSET` (17) to :func:`max_opset`.

    Returns:
        The path written.

    Raises:
        ImportError: If onnx or onnxscript is missing (the ``onnx`` extra).
        ValueError: For an opset outside the supported range (see :func:`check_opset`), a bad
            ``input_size``, or a model too large for one ONNX file (2 GiB).
    """
    _require_onnx()
    check_opset(opset)
    import onnx

    module = _deployed(model)
    example, dynamic = _example_and_shapes(module, input_size)
    program = torch.onnx.export(
        module,
        (example,),
        dynamo=True,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=dynamic,
        verbose=False,
    )
    proto = program.model_proto
    written = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    if written != [opset]:  # the exporter falls back to its default when it cannot convert
        raise ValueError(f"the ONNX exporter wrote opset {written} instead of {opset}")
    onnx.helper.set_model_props(proto, export_metadata(module, input_size))
    proto.doc_string = (
        f"CPRFL (cprfl_zoo {__version__}), {module.num_classes} classes: {OUTPUT_NAME} are raw "
        "logits; sigmoid gives one independent probability per class (multi-label)"
    )
    try:
        data = proto.SerializeToString()
    except ValueError as e:
        raise ValueError(
            f"the ONNX model is too large for one file ({e}); export with format 'pt2' instead"
        ) from e
    atomic_write_bytes(path, data, mode=_FILE_MODE)
    _logger.info("wrote %s (ONNX opset %d, %d classes)", path, opset, module.num_classes)
    return Path(path)


def max_opset() -> int | None:
    """The highest ONNX opset the installed exporter converts to, or ``None`` without onnxscript.

    torch's dynamo exporter converts its graph with onnxscript's version converter, which
    supports opsets up to a limit (25 with onnxscript 0.7); asked for more, it logs a traceback
    and falls back to opset 18.

    Returns:
        The limit, or ``None`` if onnx / onnxscript are not installed.
    """
    try:
        import onnx
        from onnxscript.version_converter import _version_converter
    except ImportError:
        return None
    limit = onnx.defs.onnx_opset_version()
    return min(limit, getattr(_version_converter, "SUPPORTED_MAX_ONNX_OPSET", limit))


def check_opset(opset: Any) -> int:
    """Check an ONNX opset for :func:`export_onnx`.

    Args:
        opset: The requested opset.

    Returns:
        The opset.

    Raises:
        ValueError: If it is not an integer from :data:`MIN_OPSET` (17, for LayerNormalization)
            to :func:`max_opset`.
    """
    high = max_opset()
    supported = f"{MIN_OPSET} to {high}" if high is not None else f"at least {MIN_OPSET}"
    if isinstance(opset, bool) or not isinstance(opset, numbers.Integral):
        raise ValueError(f"opset must be an integer ({supported}), got {opset!r}")
    if opset < MIN_OPSET or (high is not None and opset > high):
        raise ValueError(
            f"opset {opset} is not supported: the ONNX export takes {supported} (17 for "
            "LayerNormalization; the maximum is what the installed onnxscript converts to)"
        )
    return int(opset)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the cprfl_zoo metadata of an exported .onnx or .pt2 file, running nothing.

    The kind of file is decided by its content, whatever its name (``X.ONNX``, ``X.bin``): a
    zip archive is read as .pt2, with :mod:`zipfile` (``extra/cprfl_zoo.json``; nothing is
    unpickled and torch.export is not called), anything else as ONNX (without external data).

    Args:
        path: The file.

    Returns:
        The metadata, with ``class_names`` and ``thresholds`` as lists and ``preprocessing`` as
        a dict.

    Raises:
        ValueError: If the file is neither a .pt2 archive nor an ONNX model, or carries no
            cprfl_zoo metadata (the message names the file).
        ImportError: If an ONNX file is read without the ``onnx`` package.
    """
    path = Path(path)
    data = path.read_bytes()
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip archive: .pt2
        return _pt2_metadata(data, str(path))
    if path.suffix.lower() == ".pt2":
        raise ValueError(f"{path}: not a torch.export .pt2 file (not a zip archive)")
    _require_onnx("onnx")
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"{path}: neither an ONNX model nor a .pt2 archive ({type(e).__name__}: {e})"
        ) from None
    return _checked_metadata({p.key: p.value for p in proto.metadata_props}, str(path))


def export_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    format: str,
    input_size: Sequence[int] | None = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export to ``format`` (``"onnx"`` or ``"pt2"``); see :func:`export_onnx`, :func:`export_pt2`.

    Args:
        model: A CPRFL model or its :class:`~cprfl_zoo.deploy.DeployedCPRFL`.
        path: The file to write.
        format: ``"onnx"`` or ``"pt2"``.
        input_size: Image size (C, H, W); default the model's ``input_size``.
        opset: ONNX opset (ONNX only).

    Returns:
        The path written.

    Raises:
        ValueError: For an unknown format, or a suffix naming the other one (``m.onnx`` with
            ``format="pt2"``).
    """
    check_suffix(path, format)
    if format == "onnx":
        return export_onnx(model, path, input_size, opset)
    if format == "pt2":
        return export_pt2(model, path, input_size)
    raise ValueError(f"unknown export format {format!r}; expected one of {EXPORT_FORMATS}")


def check_suffix(path: str | os.PathLike[str], format: str) -> None:
    """Refuse a file name whose suffix names the other export format (``m.onnx`` for pt2).

    Args:
        path: The file to write.
        format: ``"onnx"`` or ``"pt2"``.

    Raises:
        ValueError: If ``format`` is unknown, or ``path`` ends in ``.onnx`` / ``.pt2`` (in any
            case) and that is not ``format``.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; expected one of {EXPORT_FORMATS}")
    suffix = Path(path).suffix.lower()
    if suffix[1:] in EXPORT_FORMATS and suffix[1:] != format:
        raise ValueError(
            f"{path} is named {suffix} but the format is {format}; name it .{format} or pick "
            f"format {suffix[1:]!r}"
        )


def _require_onnx(*names: str) -> None:
    missing = []
    for name in names or ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(
            f'ONNX support needs {" and ".join(missing)}: pip install "cprfl-zoo[onnx]"'
        )
