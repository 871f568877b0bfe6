"""Checks of saved CPRFL models: their ``config.json``, their weights and the loaded tensors.

Every check names the file and the field. They run in timm's loading path too (as the
pretrained filter of the CPRFL entrypoints), so ``timm.create_model("hf-hub:...")`` is as strict
as :func:`cprfl_zoo.hub.load_pretrained`. ``docs/src/reliability.md`` lists them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import timm
import torch
from torch import nn

from .config import CPRFLConfig, check_data_config
from .head_config import upgrade_legacy_args
from .messages import listed
from .network import hub_file

_logger = logging.getLogger(__name__)

__all__ = [
    "CHECKSUM_FIELD",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CheckpointMismatchError",
    "SavedWeights",
    "check_header",
    "check_saved_model_args",
    "check_state_dict",
    "expected_head_shapes",
    "head_shape",
    "parse_saved_config",
    "pretrained_filter",
    "read_saved_config",
    "read_saved_weights",
    "saved_config_name",
    "saved_model_files",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CHECKSUM_FIELD = "weights_sha256"
"""``config.json`` field holding the SHA-256 of ``model.safetensors`` (since 0.2.0)."""
META_CLASS_NAMES = "cprfl_class_names"
META_HEAD = "cprfl_head"
_HEAD_SHAPE_KEYS = (
    "text_dim",
    "embed_dim",
    "num_heads",
    "head_dim",
    "mlp_hidden_dim",
    "pi_mlp_ratio",
    "pi_linear",
    "qkv_bias",
)
_SHA256 = re.compile(r"[0-9a-f]{64}")
ENTRYPOINT_MODULE = "cprfl_zoo.entrypoints"
"""The module whose timm entrypoints build CPRFL models."""


class CheckpointMismatchError(RuntimeError, ValueError):
    """The saved weights do not match the architecture their config describes."""


# ---------------------------------------------------------------------- strict loading
def _describe_source(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("source") == "local-dir" and cfg.get("file"):
        return str(Path(cfg["file"]) / WEIGHTS_NAME)
    if cfg.get("hf_hub_id"):
        filename = cfg.get("hf_hub_filename") or WEIGHTS_NAME
        return f"hf-hub:{cfg['hf_hub_id']} ({filename})"
    if cfg.get("file"):
        return str(cfg["file"])
    return "the checkpoint"


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module, source: str | None = None
) -> Mapping[str, torch.Tensor]:
    """Check that a state dict matches a model exactly, naming every disagreement.

    timm calls this as the pretrained filter of the CPRFL entrypoints, so loading a saved model
    through ``timm.create_model("hf-hub:...")`` is as strict as :func:`load_pretrained`.

    Args:
        state_dict: The tensors read from the checkpoint.
        model: The model built from the checkpoint's config.
        source: Where the tensors came from, for the message (default: from the model's
            ``pretrained_cfg``).

    Returns:
        ``state_dict`` unchanged.

    Raises:
        CheckpointMismatchError: If a tensor is missing, unexpected, has a shape that disagrees
            with the config, holds integers where the model has floats (or the reverse), or has
            NaN or infinite values.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} (file {tuple(state_dict[k].shape)}, config {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    # A cast between float widths is harmless; int64 or bool values loaded into a float weight
    # (or floats into an integer buffer) mean the file holds something else.
    wrong_dtype = [
        f"{k} (file {state_dict[k].dtype}, model {v.dtype})"
        for k, v in expected.items()
        if k in state_dict and _dtype_kind(state_dict[k].dtype) != _dtype_kind(v.dtype)
    ]
    non_finite = [
        k
        for k, v in state_dict.items()
        if k in expected and (v.is_floating_point() or v.is_complex()) and not _all_finite(v)
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {listed(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {listed(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {listed(mismatched)}")
    if wrong_dtype:
        problems.append(f"dtype mismatches: {listed(wrong_dtype)}")
    if non_finite:
        problems.append(f"NaN or infinite values in: {listed(non_finite)}")
    if problems:
        where = source or _describe_source(model)
        raise CheckpointMismatchError(
            f"{where} does not match the {type(model).__name__} its config describes; "
            + "; ".join(problems)
        )
    return state_dict


def _all_finite(tensor: torch.Tensor) -> bool:
    if tensor.is_floating_point() and tensor.element_size() == 1:
        tensor = tensor.float()  # float8 has no isfinite kernel
    return bool(torch.isfinite(tensor).all())


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype.is_complex:
        return "complex"
    if dtype.is_floating_point:
        return "float"
    return "bool" if dtype == torch.bool else "int"


# ---------------------------------------------------------------------- saved config
def check_self_contained(backbone: Any, where: str) -> None:
    """Refuse a backbone name that reads another saved model (``hf-hub:``, ``local-dir:``).

    Args:
        backbone: ``model_args.backbone``.
        where: The field, for the message.

    Raises:
        ValueError: If building the backbone would read another model's config.
    """
    if isinstance(backbone, str) and backbone.startswith(("hf-hub:", "local-dir:")):
        raise ValueError(
            f"{where} is {backbone!r}: building it reads another model's config (from the Hub "
            "or another folder), so a saved CPRFL model would not be self-contained. Build the "
            "model from the timm architecture name (with its tag, e.g. 'resnet50.a1_in1k') "
            "instead"
        )


def saved_config_name(pretrained_cfg: Any) -> str:
    """Name the ``config.json`` timm read a ``pretrained_cfg`` from, for messages.

    Args:
        pretrained_cfg: timm's pretrained config of a ``local-dir:`` or ``hf-hub:`` model.

    Returns:
        The file path, or ``hf-hub:<repo> (config.json)``.
    """
    cfg = pretrained_cfg if isinstance(pretrained_cfg, Mapping) else {}
    if cfg.get("source") == "local-dir" and cfg.get("file"):
        return str(Path(cfg["file"]) / CONFIG_NAME)
    if cfg.get("hf_hub_id"):
        return f"hf-hub:{cfg['hf_hub_id']} ({CONFIG_NAME})"
    return f"the saved {CONFIG_NAME}"


def check_saved_model_args(model_args: Any, where: str) -> None:
    """Check the ``model_args`` of a saved config, naming the file and the field.

    Args:
        model_args: The ``model_args`` field of ``config.json``.
        where: The config file, for the messages.

    Raises:
        ValueError: As :meth:`~cprfl_zoo.config.CPRFLConfig.from_model_args`.
    """
    CPRFLConfig.from_model_args(model_args, where)


def read_saved_config(path: str | os.PathLike[str], where: str | None = None) -> dict[str, Any]:
    """Read and check the ``config.json`` of a saved CPRFL model.

    Args:
        path: The file.
        where: How to name it in messages (default: the path).

    Returns:
        The config.

    Raises:
        ValueError: If the file is not UTF-8 JSON, not an object, names no CPRFL architecture,
            has bad ``model_args`` (see :func:`check_saved_model_args`), ``label_names`` or
            ``num_classes`` that disagree with ``model_args.class_names``, or a malformed
            checksum. Every message names the file and the field.
    """
    where = where or str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise FileNotFoundError(f"{where}: cannot be read ({e.strerror or e})") from None
    return parse_saved_config(data, where)


def parse_saved_config(data: bytes, where: str) -> dict[str, Any]:
    """Parse and check the bytes of a saved ``config.json`` (see :func:`read_saved_config`).

    Args:
        data: The file's bytes.
        where: How to name the file in messages.

    Returns:
        The config.

    Raises:
        ValueError: As :func:`read_saved_config`.
    """
    try:
        cfg = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ValueError(f"{where}: nested too deeply to be a CPRFL config") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{where}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
        ) from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(cfg).__name__}")
    arch = cfg.get("architecture")
    if "architecture" not in cfg:
        raise ValueError(
            f"{where}: the field 'architecture' is missing; expected a CPRFL architecture "
            "such as 'cprfl' or 'cprfl_resnet101'"
        )
    if not isinstance(arch, str) or not timm.is_model(arch):
        raise ValueError(f"{where}: architecture {arch!r} is not a timm model")
    if timm.models.model_entrypoint(arch).__module__ != ENTRYPOINT_MODULE:
        raise TypeError(
            f"{where}: architecture {arch!r} is a plain timm model, not a CPRFL model "
            "(expected 'cprfl' or 'cprfl_<backbone>')"
        )
    if "model_args" not in cfg:
        raise ValueError(f"{where}: the field 'model_args' is missing")
    check_saved_model_args(cfg["model_args"], where)
    names = cfg["model_args"]["class_names"]
    pretrained_cfg = cfg.get("pretrained_cfg", {})
    if not isinstance(pretrained_cfg, dict):
        raise ValueError(
            f"{where}: pretrained_cfg must be an object, got {type(pretrained_cfg).__name__}"
        )
    check_data_config(pretrained_cfg, f"{where}: pretrained_cfg")
    for field, value in (
        ("label_names", cfg.get("label_names")),
        ("pretrained_cfg.label_names", pretrained_cfg.get("label_names")),
    ):
        if value is not None and value != names:
            raise ValueError(
                f"{where}: {field} {_short_names(value)} disagrees with model_args.class_names "
                f"{_short_names(names)}{_first_difference(value, names)}"
            )
    for field, value in (
        ("num_classes", cfg.get("num_classes")),
        ("pretrained_cfg.num_classes", pretrained_cfg.get("num_classes")),
    ):
        if value is not None and value != len(names):
            raise ValueError(
                f"{where}: {field} is {value!r} but model_args.class_names has {len(names)} names"
            )
    checksum = cfg.get(CHECKSUM_FIELD)
    if checksum is not None and not (isinstance(checksum, str) and _SHA256.fullmatch(checksum)):
        raise ValueError(
            f"{where}: {CHECKSUM_FIELD} must be 64 lowercase hex digits, got {checksum!r}"
        )
    return cfg


def _short_names(names: Any) -> str:
    if isinstance(names, list) and len(names) > 6:
        return repr(names[:6])[:-1] + f", ... ({len(names)} names)]"
    return repr(names)


def _first_difference(a: Any, b: list[str]) -> str:
    if not isinstance(a, list) or len(a) != len(b):
        return ""
    i = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
    return f" (first difference at position {i}: {a[i]!r} vs {b[i]!r})"


# ---------------------------------------------------------------------- saved weights
@dataclass(frozen=True)
class SavedWeights:
    """The bytes of a saved model's weights, read once and checked against its config.

    Attributes:
        data: The bytes of ``model.safetensors``.
        header: Its safetensors header: tensor name to ``{"dtype", "shape", ...}``.
        metadata: Its ``__metadata__``.
        where: The weights file, for messages.
        config_where: The ``config.json`` it belongs to, for messages.
        expected_sha256: The checksum ``config.json`` records (``None``: not checked).
    """

    data: bytes
    header: dict[str, Any]
    metadata: dict[str, str]
    where: str
    config_where: str
    expected_sha256: str | None

    def load(self) -> dict[str, torch.Tensor]:
        """Return the tensors.

        Returns:
            Tensor name to tensor, on the CPU.

        Raises:
            ValueError: If the file is not a complete safetensors file.
        """
        try:
            return safetensors.torch.load(self.data)
        except safetensors.SafetensorError as e:
            raise ValueError(
                f"{self.where} is not a complete safetensors file ({e}); it is empty, truncated "
                "or not safetensors: re-download or re-save it"
            ) from None

    def verify_checksum(self) -> None:
        """Compare the SHA-256 of the loaded bytes with the one ``config.json`` records.

        Raises:
            CheckpointMismatchError: If they differ.
        """
        if self.expected_sha256 is None:
            return
        actual = hashlib.sha256(self.data).hexdigest()
        if actual != self.expected_sha256:
            raise CheckpointMismatchError(
                f"{self.where} has SHA-256 {actual}, but {self.config_where} records "
                f"{CHECKSUM_FIELD} {self.expected_sha256}: the weights file changed after it was "
                "saved (corrupted, truncated or edited). Re-download or re-save it; for a file "
                "changed on purpose, load with verify_checksum=False"
            )


def saved_model_files(
    pretrained_cfg: Mapping[str, Any], cache_dir: str | os.PathLike[str] | None
) -> tuple[Path, Path, str, str] | None:
    """Locate the ``config.json`` and ``model.safetensors`` of a ``local-dir:``/``hf-hub:`` load.

    Hub files are downloaded (or read from the cache); nothing else is ever read: a folder
    without ``model.safetensors`` is an error, never a fallback to a pickle.

    Args:
        pretrained_cfg: timm's pretrained config of the load (``source``, ``file`` or
            ``hf_hub_id``).
        cache_dir: Hugging Face cache folder.

    Returns:
        ``(config, weights, config_where, weights_where)`` (the last two name the files in
        messages), or ``None`` when the config names no saved model.

    Raises:
        FileNotFoundError: Naming the missing file.
        ValueError: If the Hub weights file is not safetensors.
    """
    source = pretrained_cfg.get("source")
    if source == "local-dir" and pretrained_cfg.get("file"):
        folder = Path(pretrained_cfg["file"])
        config, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        for path in (config, weights):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} is missing: a saved CPRFL model is {CONFIG_NAME} + {WEIGHTS_NAME} "
                    "(weights are only read from safetensors)"
                )
        return config, weights, str(config), str(weights)
    if source == "hf-hub" and pretrained_cfg.get("hf_hub_id"):
        repo, _, revision = str(pretrained_cfg["hf_hub_id"]).partition("@")
        filename = pretrained_cfg.get("hf_hub_filename") or WEIGHTS_NAME
        if not str(filename).endswith(".safetensors"):
            raise ValueError(
                f"hf-hub:{repo} ({CONFIG_NAME}): pretrained_cfg.hf_hub_filename is "
                f"{filename!r}; CPRFL loads weights only from safetensors"
            )
        found = [
            Path(hub_file(repo, name, revision=revision or None, cache_dir=cache_dir))
            for name in (CONFIG_NAME, filename)
        ]
        ref = f"hf-hub:{pretrained_cfg['hf_hub_id']}"
        return found[0], found[1], f"{ref} ({CONFIG_NAME})", f"{ref} ({filename})"
    return None


def read_saved_weights(
    pretrained_cfg: Mapping[str, Any],
    model_args: Mapping[str, Any],
    config: CPRFLConfig,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    verify_checksum: bool = True,
) -> SavedWeights:
    """Read a saved model's weights once, and check them before any model is built.

    ``config.json`` is read once, as bytes: its ``model_args`` must equal the ``model_args`` the
    model is being built from (a save racing the load is an error, never a silent mix of old
    and new), and its checksum is compared with the SHA-256 of the very bytes that are loaded.
    The tensor shapes of the head, the class names and the head shape recorded in the file's
    metadata are compared with the config from the header alone, so a disagreeing file
    allocates nothing.

    Args:
        pretrained_cfg: timm's pretrained config of the load.
        model_args: The ``model_args`` the model is built from (as timm parsed them).
        config: The checked config built from them.
        cache_dir: Hugging Face cache folder.
        verify_checksum: Compare the weights' SHA-256 with ``config.json``'s
            ``weights_sha256`` (when recorded).

    Returns:
        The weights, not yet turned into tensors.

    Raises:
        FileNotFoundError: If a file is missing.
        ValueError: If a file is malformed.
        CheckpointMismatchError: If the files changed during the load, fail the checksum, or
            disagree with the config.
    """
    files = saved_model_files(pretrained_cfg, cache_dir)
    if files is None:
        raise ValueError("the pretrained config names no saved CPRFL folder or Hub repository")
    config_path, weights_path, where, weights_where = files
    saved = parse_saved_config(config_path.read_bytes(), where)
    if saved.get("model_args") != dict(model_args):
        raise CheckpointMismatchError(
            f"{where} changed while the model was being loaded (saved again?); load it again"
        )
    data = weights_path.read_bytes()
    header, metadata = _safetensors_header(data, weights_where)
    check_header(header, config, weights_where)
    _check_metadata(metadata, config, weights_path, where)
    expected = saved.get(CHECKSUM_FIELD) if verify_checksum else None
    return SavedWeights(data, header, metadata, weights_where, where, expected)


def _safetensors_header(data: bytes, path: str) -> tuple[dict[str, Any], dict[str, str]]:
    problem = None
    if len(data) < 8:
        problem = "header too small"
    else:
        size = int.from_bytes(data[:8], "little")
        if size > len(data) - 8:
            problem = "incomplete metadata, file not fully covered"
        else:
            try:
                header = json.loads(data[8 : 8 + size])
            except (ValueError, RecursionError):
                header = None
            if not isinstance(header, dict):
                problem = "invalid header"
    if problem is not None:
        raise ValueError(
            f"{path} is not a complete safetensors file ({problem}); it is empty, truncated or "
            "not safetensors: re-download or re-save it"
        )
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: the safetensors metadata is not an object")
    return header, metadata


def expected_head_shapes(config: CPRFLConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the head tensors that a config implies (the backbone's are not listed).

    The head's modules are built on the meta device, so this allocates nothing and follows
    every head option without a second copy of the layer shapes.

    Args:
        config: The model's config.

    Returns:
        Tensor name to shape.
    """
    from .prompt_init import PromptInit
    from .vsi import VSI

    head = config.head
    with torch.device("meta"):
        modules = {
            "prompt_init": PromptInit(
                head.text_dim, head.embed_dim, mlp_ratio=head.pi_mlp_ratio, linear=head.pi_linear
            ),
            "vsi": VSI(
                head.embed_dim,
                num_heads=head.num_heads,
                head_dim=head.head_dim,
                mlp_hidden_dim=head.mlp_hidden_dim,
                qkv_bias=head.qkv_bias,
            ),
        }
    shapes = {
        f"{prefix}.{name}": tuple(t.shape)
        for prefix, module in modules.items()
        for name, t in module.state_dict().items()
    }
    shapes["class_embeddings"] = (len(config.class_names), head.text_dim)
    return shapes


def check_header(header: Mapping[str, Any], config: CPRFLConfig, where: str) -> None:
    """Compare the head shapes in a safetensors header with a config, allocating nothing.

    Args:
        header: The parsed header (tensor name to ``{"shape": ...}``).
        config: The config the model will be built from.
        where: The weights file, for messages.

    Raises:
        CheckpointMismatchError: Naming every tensor whose shape disagrees.
    """
    wrong = []
    expected = expected_head_shapes(config)
    for name, shape in sorted(expected.items(), key=lambda item: item[0] != "class_embeddings"):
        entry = header.get(name)
        if not isinstance(entry, Mapping):
            continue  # reported, with every other missing tensor, by check_state_dict
        found = tuple(entry.get("shape") or ())
        if found != shape:
            wrong.append(f"{name} (file {found}, config {shape})")
    if wrong:
        raise CheckpointMismatchError(
            f"{where} does not match the head its config.json describes; shape mismatches: "
            f"{listed(wrong)}"
        )


def _check_metadata(
    metadata: Mapping[str, str], config: CPRFLConfig, weights_path: Path, where: str
) -> None:
    names = list(config.class_names)
    if META_CLASS_NAMES in metadata:
        recorded = _metadata_json(metadata, META_CLASS_NAMES, list, weights_path)
        if recorded != names:
            raise CheckpointMismatchError(
                f"{where}: model_args.class_names {_short_names(names)} "
                f"disagree with the class names recorded in {weights_path} "
                f"{_short_names(recorded)}{_first_difference(names, recorded)}"
                "; the class embeddings in the file are in the recorded order"
            )
    if META_HEAD in metadata:
        recorded = _metadata_json(metadata, META_HEAD, dict, weights_path)
        current = head_shape(config.to_model_args())
        recorded = upgrade_legacy_args(recorded, warn=False)
        diff = [k for k in recorded if k in current and current[k] != recorded[k]]
        if diff:
            shown = ", ".join(f"{k}={current[k]!r} (file {recorded[k]!r})" for k in diff)
            raise CheckpointMismatchError(
                f"{where}: model_args disagree with the head recorded in {weights_path}: {shown}"
            )


def head_shape(model_args: Mapping[str, Any]) -> dict[str, Any]:
    """The head widths of ``model_args`` that the weights file's metadata records.

    Args:
        model_args: A model's ``model_args`` (in the current spelling).

    Returns:
        The recorded subset.
    """
    return {k: model_args[k] for k in _HEAD_SHAPE_KEYS if k in model_args}


def _metadata_json(metadata: Mapping[str, str], key: str, kind: type, path: Path) -> Any:
    try:
        value = json.loads(metadata[key])
    except ValueError:
        value = None
    if not isinstance(value, kind):
        raise CheckpointMismatchError(
            f"{path}: the metadata field {key!r} is not a JSON {kind.__name__}: "
            f"{metadata[key][:80]!r}"
        )
    return value


def pretrained_filter(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module
) -> Mapping[str, torch.Tensor]:
    """The pretrained filter of the CPRFL entrypoints for registered weights (a URL or Hub id).

    Args:
        state_dict: The tensors timm read.
        model: The model built from the config.

    Returns:
        ``state_dict`` unchanged, after :func:`check_state_dict`.
    """
    return check_state_dict(state_dict, model)
