"""Save, share and load CPRFL models in timm's Hugging Face Hub format.

A saved model is a folder (or Hub repository) with three files:

* ``config.json``: timm's own export config (``architecture``, ``num_classes``, ``num_features``,
  ``label_names``, ``model_args``, ``pretrained_cfg``), written by timm's ``save_config_for_hf``.
  ``model_args`` holds everything needed to rebuild the model: backbone name and arguments, every
  head size, the class names in logit order and which text encoder produced the class embeddings.
* ``model.safetensors``: every tensor, the class embeddings included. Never a pickle.
* ``README.md``: a model card.

Because the format is timm's, ``timm.create_model("hf-hub:<repo>", pretrained=True)`` and
``"local-dir:<folder>"`` load these models once ``cprfl_zoo`` is imported. Loading is strict: the
weights are checked against the architecture the config describes, and any missing, unexpected,
mis-shaped, wrongly typed or non-finite tensor is an error that names it. Since 0.2.0
``config.json`` also records the SHA-256 of ``model.safetensors`` (``weights_sha256``) and the
weights file's metadata records the class names and head shape; both are verified on load when
present (folders of 0.1.0 have neither and still load).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import timm
from huggingface_hub import HfApi
from timm.models._hub import save_config_for_hf
from torch import nn

from ._version import __version__
from .checkpoint import (
    CHECKSUM_FIELD,
    CONFIG_NAME,
    META_CLASS_NAMES,
    META_HEAD,
    WEIGHTS_NAME,
    CheckpointMismatchError,
    check_saved_model_args,
    check_self_contained,
    check_state_dict,
    head_shape,
    read_saved_config,
    saved_config_name,
)
from .fileio import atomic_folder
from .model_card import CPRFL_CITATION, MODEL_CARD_NAME, build_model_card
from .network import hub_file

_logger = logging.getLogger(__name__)

__all__ = [
    "CHECKSUM_FIELD",
    "CONFIG_NAME",
    "CPRFL_CITATION",
    "MODEL_CARD_NAME",
    "WEIGHTS_NAME",
    "CheckpointMismatchError",
    "build_model_card",
    "check_saved_model_args",
    "check_state_dict",
    "load_pretrained",
    "push_to_hub",
    "read_saved_config",
    "save_pretrained",
    "saved_config_name",
]

_DEFAULT_ARCHITECTURE = "cprfl"


# ---------------------------------------------------------------------- saving
def _architecture(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or _DEFAULT_ARCHITECTURE


def _write_folder(
    model: nn.Module,
    folder: Path,
    *,
    repo_id: str | None,
    metrics: Mapping[str, float] | None,
    model_card: Mapping[str, Any] | None,
) -> None:
    model_args = model.model_args  # raises for models built from a module instance
    readme = build_model_card(model, repo_id=repo_id, metrics=metrics, model_card=model_card)
    if not (getattr(model, "pretrained_cfg", None) or {}).get("input_size"):
        raise ValueError(
            "the model's pretrained_cfg has no input_size; set model.pretrained_cfg['input_size'] "
            "to the (C, H, W) the model expects before saving"
        )
    check_self_contained(model_args.get("backbone"), "the model's backbone")
    # cloned: safetensors refuses tensors that share storage (tied weights, e.g. CoaT)
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": "pt",
        META_CLASS_NAMES: json.dumps(list(model.class_names)),
        META_HEAD: json.dumps(head_shape(model_args)),
    }
    data = _canonical_safetensors(safetensors.torch.save(tensors, metadata=metadata))
    (folder / WEIGHTS_NAME).write_bytes(data)
    save_config_for_hf(
        model,
        str(folder / CONFIG_NAME),
        model_config={
            "label_names": list(model.class_names),
            "pretrained_cfg": {
                "architecture": _architecture(model),
                "hf_hub_filename": WEIGHTS_NAME,
                "num_classes": model.num_classes,
                "label_names": list(model.class_names),
            },
            "cprfl_zoo_version": __version__,
            CHECKSUM_FIELD: hashlib.sha256(data).hexdigest(),
        },
        model_args=model_args,
    )
    (folder / MODEL_CARD_NAME).write_text(readme, encoding="utf-8")


def _canonical_safetensors(data: bytes) -> bytes:
    """Rewrite a safetensors header with sorted keys, so equal tensors give equal files.

    safetensors writes ``__metadata__`` in hash-map order, which changes from call to call;
    the file's checksum would then change with it.
    """
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    if len(text) > size:
        return data
    return data[:8] + text + b" " * (size - len(text)) + data[8 + size :]


def save_pretrained(
    model: nn.Module,
    save_directory: str | os.PathLike[str],
    *,
    repo_id: str | None = None,
    metrics: Mapping[str, float] | None = None,
    model_card: Mapping[str, Any] | None = None,
) -> Path:
    """Save a model as ``config.json`` + ``model.safetensors`` + ``README.md`` in timm's format.

    The files are written into a temporary folder next to ``save_directory`` and moved into place
    with ``config.json`` last, so an interrupted save never leaves a folder that looks complete.

    Args:
        model: The model to save.
        save_directory: The folder to write (created if needed; existing files of the same names
            are replaced).
        repo_id: Hub repository id shown in the model card's loading snippet.
        metrics: Evaluation results for the model card (see :func:`build_model_card`).
        model_card: Extra model card fields (see :func:`build_model_card`).

    Returns:
        The folder path.

    Raises:
        ValueError: If the model cannot be described by a config (a backbone module instance),
            or for bad metrics / card fields.
    """
    target = Path(save_directory)
    if target.exists() and not target.is_dir():
        raise ValueError(f"save_directory {str(target)!r} exists and is not a folder")
    # config.json goes last: the folder must not look valid while its weights are being replaced
    with atomic_folder(target, last=(CONFIG_NAME,)) as tmp:
        _write_folder(model, tmp, repo_id=repo_id, metrics=metrics, model_card=model_card)
    _logger.info("saved %s to %s", type(model).__name__, target)
    return target


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload CPRFL model",
    create_pr: bool = False,
    metrics: Mapping[str, float] | None = None,
    model_card: Mapping[str, Any] | None = None,
) -> Any:
    """Upload a model to the Hugging Face Hub, in the same layout as :func:`save_pretrained`.

    Args:
        model: The model to upload.
        repo_id: ``"user/repo"``; created if it does not exist.
        token: Hub token (default: the logged-in user's / ``HF_TOKEN``).
        private: Create the repository as private.
        revision: Branch to push to (created from ``main`` if needed).
        commit_message: The commit message.
        create_pr: Open a pull request instead of committing to the branch.
        metrics: Evaluation results for the model card.
        model_card: Extra model card fields.

    Returns:
        huggingface_hub's ``CommitInfo`` of the upload.

    Raises:
        ValueError: For a malformed ``repo_id``.
    """
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id must look like 'user/repo', got {repo_id!r}")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="cprfl-push-") as tmp:
        folder = save_pretrained(
            model, Path(tmp) / "model", repo_id=repo_id, metrics=metrics, model_card=model_card
        )
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision is not None and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            revision=revision,
            commit_message=commit_message,
            create_pr=create_pr,
        )


# ---------------------------------------------------------------------- loading
def _model_name(repo_id_or_path: str | os.PathLike[str], revision: str | None) -> str:
    if isinstance(repo_id_or_path, os.PathLike) or Path(str(repo_id_or_path)).is_dir():
        folder = Path(repo_id_or_path)
        if revision is not None:
            raise ValueError(
                f"revision={revision!r} only applies to Hub repositories, not {folder}"
            )
        return f"local-dir:{folder}"
    name = str(repo_id_or_path)
    if name.startswith("local-dir:"):
        if revision is not None:
            raise ValueError(f"revision={revision!r} only applies to Hub repositories, not {name}")
        return name
    repo = name.removeprefix("hf-hub:")
    if not repo or repo.count("/") != 1 or not all(repo.split("@")[0].split("/")):
        raise ValueError(
            f"{name!r} is neither an existing folder nor a Hub repository id like 'user/repo'"
        )
    if revision is not None:
        if "@" in repo:
            raise ValueError(f"{name!r} already names a revision; do not also pass revision=")
        repo = f"{repo}@{revision}"
    return f"hf-hub:{repo}"


def _check_local_folder(folder: Path) -> None:
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}: it is not a saved CPRFL model")
    if not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(
            f"{folder} has no {WEIGHTS_NAME}; CPRFL loads weights only from safetensors"
        )


def load_pretrained(
    repo_id_or_path: str | os.PathLike[str],
    revision: str | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    verify_checksum: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Load a saved CPRFL model from a local folder or the Hugging Face Hub.

    Loading builds the backbone without its ImageNet weights and never runs CLIP: every tensor,
    the class embeddings included, comes from ``model.safetensors``.

    Args:
        repo_id_or_path: A folder written by :func:`save_pretrained`, a Hub repository id
            (``"user/repo"``, optionally ``"user/repo@revision"``), or a timm model name with an
            ``"hf-hub:"`` / ``"local-dir:"`` prefix.
        revision: Hub branch, tag or commit.
        cache_dir: Hugging Face cache folder (default: the standard cache).
        verify_checksum: Check ``model.safetensors`` against the SHA-256 that ``config.json``
            records (folders saved before 0.2.0 or by other tools record none and are not
            checked). Turn off only for a weights file changed on purpose.
        **kwargs: Passed to ``timm.create_model`` (e.g. ``drop_rate``).

    Returns:
        The model, in training mode as timm returns models.

    Raises:
        FileNotFoundError: If a local folder lacks ``config.json`` or ``model.safetensors``.
        ValueError: If ``config.json`` is malformed (the message names the file and the field)
            or ``model.safetensors`` is not a complete safetensors file (the message names it).
        CheckpointMismatchError: If the weights do not match the config, are not finite, or
            fail the recorded checksum.
        TypeError: If the saved model is not a CPRFL model.
    """
    name = _model_name(repo_id_or_path, revision)
    if name.startswith("local-dir:"):
        folder = Path(name.removeprefix("local-dir:"))
        _check_local_folder(folder)
        read_saved_config(folder / CONFIG_NAME)
        weights = str(folder / WEIGHTS_NAME)
    else:
        repo, _, rev = name.removeprefix("hf-hub:").partition("@")
        config = hub_file(repo, CONFIG_NAME, revision=rev or None, cache_dir=cache_dir)
        read_saved_config(config, f"{name} ({CONFIG_NAME})")
        weights = f"{name} ({WEIGHTS_NAME})"
    if cache_dir is not None:
        kwargs["cache_dir"] = cache_dir
    try:
        model = timm.create_model(name, pretrained=True, verify_checksum=verify_checksum, **kwargs)
    except safetensors.SafetensorError as e:
        raise ValueError(
            f"{weights} is not a complete safetensors file ({e}); it is empty, truncated or "
            "not safetensors: re-download or re-save it"
        ) from None
    return model
