"""Checks of saved CPRFL models: their ``config.json``, their weights and the loaded tensors.

Every check names the file and the field. They run in timm's loading path too (as the
pretrained filter of the CPRFL entrypoints), so ``timm.create_model("hf-hub:...")`` is as strict
as :func:`cprfl_zoo.hub.load_pretrained`. ``docs/src/reliability.md`` lists them.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors
import timm
import torch
from huggingface_hub import try_to_load_from_cache
from torch import nn

from .classes import validate_class_inputs
from .fileio import file_sha256
from .head_config import MODEL_ARGS, upgrade_legacy_args, validate_head_args
from .messages import listed
from .thresholds import validate_thresholds

if TYPE_CHECKING:
    from .model import CPRFL

_logger = logging.getLogger(__name__)

__all__ = [
    "CHECKSUM_FIELD",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CheckpointMismatchError",
    "check_saved_model_args",
    "check_state_dict",
    "head_shape",
    "pretrained_filter",
    "read_saved_config",
    "saved_config_name",
    "verify_saved_weights",
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
        if k in expected
        and (v.is_floating_point() or v.is_complex())
        and not bool(torch.isfinite(v).all())
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
        ValueError: If ``model_args`` is not an object, has a key that is no argument of
            :class:`~cprfl_zoo.model.CPRFL`, lacks ``backbone`` or ``class_names``, has a value
            of the wrong type or range, or names a backbone that is not self-contained.
    """
    if not isinstance(model_args, Mapping):
        raise ValueError(
            f"{where}: model_args must be an object of CPRFL arguments, got "
            f"{type(model_args).__name__}"
        )
    try:
        model_args = upgrade_legacy_args(model_args, warn=False)
    except ValueError as e:
        raise ValueError(f"{where}: model_args: {e}") from None
    unknown = sorted(set(model_args) - MODEL_ARGS)
    if unknown:
        raise ValueError(
            f"{where}: model_args has unknown key(s) {unknown}; expected arguments of "
            f"cprfl_zoo.CPRFL ({', '.join(sorted(MODEL_ARGS))})"
        )
    for key in ("backbone", "class_names"):
        if key not in model_args:
            raise ValueError(f"{where}: model_args.{key} is missing")
    backbone = model_args["backbone"]
    if not isinstance(backbone, str) or not backbone:
        raise ValueError(
            f"{where}: model_args.backbone must be a timm model name, got {backbone!r}"
        )
    check_self_contained(backbone, f"{where}: model_args.backbone")
    names = model_args["class_names"]
    if not isinstance(names, list):
        raise ValueError(
            f"{where}: model_args.class_names must be a list of strings, got {type(names).__name__}"
        )
    try:
        validate_class_inputs(names)
        validate_head_args(model_args, strict_types=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: model_args.{e}") from None
    for key in ("backbone_kwargs", "text_encoder_cfg"):
        value = model_args.get(key)
        if value is not None and not isinstance(value, Mapping):
            raise ValueError(
                f"{where}: model_args.{key} must be an object, got {type(value).__name__}"
            )
    if model_args.get("thresholds") is not None:
        if not isinstance(model_args["thresholds"], list):
            raise ValueError(
                f"{where}: model_args.thresholds must be a list of {len(names)} numbers, got "
                f"{type(model_args['thresholds']).__name__}"
            )
        try:
            validate_thresholds(model_args["thresholds"], len(names), "thresholds")
        except ValueError as e:
            raise ValueError(f"{where}: model_args.{e}") from None


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
        cfg = json.loads(Path(path).read_bytes().decode("utf-8"))
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
def _saved_files(
    model: nn.Module, cache_dir: str | os.PathLike[str] | None
) -> tuple[Path, Path, str] | None:
    """Config file, weights file and their description, for weights from a folder or Hub cache."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("source") == "local-dir" and cfg.get("file"):
        folder = Path(cfg["file"])
        return folder / CONFIG_NAME, folder / WEIGHTS_NAME, str(folder / CONFIG_NAME)
    if cfg.get("source") == "hf-hub" and cfg.get("hf_hub_id"):
        repo, _, revision = str(cfg["hf_hub_id"]).partition("@")
        found = [
            try_to_load_from_cache(repo, name, cache_dir=cache_dir, revision=revision or None)
            for name in (CONFIG_NAME, cfg.get("hf_hub_filename") or WEIGHTS_NAME)
        ]
        if all(isinstance(f, str) for f in found):
            return Path(found[0]), Path(found[1]), f"hf-hub:{cfg['hf_hub_id']} ({CONFIG_NAME})"
        _logger.warning(
            "could not find hf-hub:%s in the local cache to verify its checksum", cfg["hf_hub_id"]
        )
    return None


def verify_saved_weights(
    model: CPRFL,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    verify_checksum: bool = True,
) -> None:
    """Check a loaded model against what its folder recorded when it was saved.

    * ``label_names`` (timm's ``pretrained_cfg["label_names"]``) must equal the class names;
    * the class names and head shape recorded in the metadata of ``model.safetensors`` must
      equal those of ``config.json`` (a reordered class list or swapped ``num_heads`` /
      ``head_dim`` keep every shape);
    * the SHA-256 of ``model.safetensors`` must equal the ``weights_sha256`` of
      ``config.json``.

    Folders saved before 0.2.0 (or by other tools) have neither the metadata nor the checksum;
    what is not recorded is not checked.

    Args:
        model: A model whose ``pretrained_cfg`` names the folder or Hub snapshot it came from.
        cache_dir: The Hugging Face cache it was loaded with.
        verify_checksum: Check the checksum; turn off for a weights file changed on purpose.

    Raises:
        CheckpointMismatchError: Naming the file and both values on any disagreement.
    """
    label_names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    if label_names is not None and list(label_names) != list(model.class_names):
        raise CheckpointMismatchError(
            f"{_describe_source(model)}: label_names {_short_names(list(label_names))} disagree "
            f"with the model's class names {_short_names(list(model.class_names))}"
        )
    files = _saved_files(model, cache_dir)
    if files is None:
        return
    config_path, weights_path, where = files
    if not weights_path.is_file():
        return  # timm loaded another file; nothing of ours to compare with
    with safetensors.safe_open(str(weights_path), "pt") as f:
        metadata = f.metadata() or {}
    if META_CLASS_NAMES in metadata:
        recorded = _metadata_json(metadata, META_CLASS_NAMES, list, weights_path)
        if recorded != list(model.class_names):
            raise CheckpointMismatchError(
                f"{where}: model_args.class_names {_short_names(list(model.class_names))} "
                f"disagree with the class names recorded in {weights_path} "
                f"{_short_names(recorded)}{_first_difference(list(model.class_names), recorded)}"
                "; the class embeddings in the file are in the recorded order"
            )
    if META_HEAD in metadata:
        recorded = _metadata_json(metadata, META_HEAD, dict, weights_path)
        current = head_shape(model.model_args)
        recorded = upgrade_legacy_args(recorded, warn=False)
        diff = [k for k in recorded if k in current and current[k] != recorded[k]]
        if diff:
            shown = ", ".join(f"{k}={current[k]!r} (file {recorded[k]!r})" for k in diff)
            raise CheckpointMismatchError(
                f"{where}: model_args disagree with the head recorded in {weights_path}: {shown}"
            )
    if not verify_checksum:
        return
    try:
        expected = json.loads(config_path.read_text(encoding="utf-8")).get(CHECKSUM_FIELD)
    except (OSError, ValueError, AttributeError):
        expected = None
    if expected is None:
        return
    actual = file_sha256(weights_path)
    if actual != expected:
        raise CheckpointMismatchError(
            f"{weights_path} has SHA-256 {actual}, but {where} records {CHECKSUM_FIELD} "
            f"{expected}: the weights file changed after it was saved (corrupted, truncated or "
            "edited). Re-download or re-save it; for a file changed on purpose, load with "
            "verify_checksum=False"
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
    state_dict: Mapping[str, torch.Tensor],
    model: CPRFL,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    verify_checksum: bool = True,
) -> Mapping[str, torch.Tensor]:
    """The pretrained filter of the CPRFL entrypoints.

    Runs :func:`check_state_dict`, then :func:`verify_saved_weights`.

    Args:
        state_dict: The tensors timm read.
        model: The model built from the saved config.
        cache_dir: The Hugging Face cache of the load.
        verify_checksum: Check the weights file's SHA-256.

    Returns:
        ``state_dict`` unchanged.
    """
    check_state_dict(state_dict, model)
    verify_saved_weights(model, cache_dir=cache_dir, verify_checksum=verify_checksum)
    return state_dict
