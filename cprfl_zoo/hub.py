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
weights are checked against the architecture the config describes, and any missing, unexpected or
mis-shaped tensor is an error that names it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
from huggingface_hub import HfApi, ModelCard, ModelCardData
from timm.models._hub import save_config_for_hf
from torch import nn

from ._version import __version__

if TYPE_CHECKING:
    from .model import CPRFL

_logger = logging.getLogger(__name__)

__all__ = [
    "CONFIG_NAME",
    "CPRFL_CITATION",
    "MODEL_CARD_NAME",
    "WEIGHTS_NAME",
    "CheckpointMismatchError",
    "build_model_card",
    "check_state_dict",
    "load_pretrained",
    "push_to_hub",
    "save_pretrained",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_CARD_NAME = "README.md"
_DEFAULT_ARCHITECTURE = "cprfl"
_MAX_LISTED = 10
_CARD_TAGS = ("image-classification", "timm", "multi-label", "long-tail", "cprfl")
_CARD_FIELDS = frozenset({"description", "dataset", "license", "tags", "notes", "model_name"})

CPRFL_CITATION = """@inproceedings{yan2024cprfl,
  title     = {Category-Prompt Refined Feature Learning for Long-Tailed Multi-Label Image
               Classification},
  author    = {Yan, Jiexuan and Huang, Sheng and Mu, Nankun and Huangfu, Luwen and Liu, Bo},
  booktitle = {Proceedings of the 32nd ACM International Conference on Multimedia},
  year      = {2024},
  eprint    = {2408.08125},
  archivePrefix = {arXiv}
}"""


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


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    if len(names) > _MAX_LISTED:
        shown += f", ... and {len(names) - _MAX_LISTED} more"
    return shown


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
        CheckpointMismatchError: If a tensor is missing, unexpected, or has a shape that disagrees
            with the config.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} (file {tuple(state_dict[k].shape)}, config {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_listed(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_listed(mismatched)}")
    if problems:
        where = source or _describe_source(model)
        raise CheckpointMismatchError(
            f"{where} does not match the {type(model).__name__} its config describes; "
            + "; ".join(problems)
        )
    return state_dict


# ---------------------------------------------------------------------- model card
def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"
    return str(value)


def _check_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"metrics must be a mapping of name to number, got {type(metrics).__name__}"
        )
    out: dict[str, Any] = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"metric names must be non-empty strings, got {name!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"metric {name!r} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"metric {name!r} is not finite: {value!r}")
        out[name] = value
    return out


def _check_card_fields(model_card: Mapping[str, Any] | None) -> dict[str, Any]:
    if model_card is None:
        return {}
    if not isinstance(model_card, Mapping):
        raise TypeError(f"model_card must be a mapping, got {type(model_card).__name__}")
    unknown = sorted(set(model_card) - _CARD_FIELDS)
    if unknown:
        raise ValueError(
            f"unknown model_card fields {unknown}; supported fields are {sorted(_CARD_FIELDS)}"
        )
    return dict(model_card)


def _text_encoder_lines(text_cfg: Mapping[str, Any]) -> list[str]:
    if not text_cfg:
        return ["- not recorded (the class embeddings were passed in directly)"]
    return [f"- {key}: `{json.dumps(value)}`" for key, value in text_cfg.items()]


def build_model_card(
    model: CPRFL,
    *,
    repo_id: str | None = None,
    metrics: Mapping[str, float] | None = None,
    model_card: Mapping[str, Any] | None = None,
) -> str:
    """Write the model card (README.md) of a CPRFL model.

    Args:
        model: The model.
        repo_id: Hub repository id used in the loading snippet (a placeholder when omitted).
        metrics: Evaluation results to report, e.g. ``{"mAP": 56.3, "head mAP": 60.1,
            "medium mAP": 58.4, "tail mAP": 48.9}``.
        model_card: Optional extra fields: ``description``, ``dataset``, ``license``, ``tags``
            (added to the defaults), ``notes`` and ``model_name``.

    Returns:
        The card's markdown, with YAML front matter (``library_name: timm`` and tags such as
        ``multi-label``, ``long-tail``, ``cprfl``).

    Raises:
        ValueError: For non-numeric metrics or unknown card fields.
    """
    values = _check_metrics(metrics)
    fields = _check_card_fields(model_card)
    args = model.model_args
    tags = list(_CARD_TAGS)
    for tag in fields.get("tags") or []:
        if tag not in tags:
            tags.append(str(tag))
    name = fields.get("model_name") or (repo_id.split("/")[-1] if repo_id else "CPRFL model")
    data = ModelCardData(
        library_name="timm",
        license=fields.get("license") or "apache-2.0",
        tags=tags,
        pipeline_tag="image-classification",
        model_name=name,
        datasets=[fields["dataset"]] if fields.get("dataset") else None,
    )
    ref = repo_id or "<user>/<repo>"
    backbone = args["backbone"]
    lines = [
        f"# {name}",
        "",
        fields.get("description")
        or (
            "A multi-label image classifier: CPRFL (Category-Prompt Refined Feature Learning, "
            "ACM MM 2024) on a timm backbone, built with "
            "[cprfl_zoo](https://github.com/cprfl-zoo/cprfl_zoo)."
        ),
        "",
        "## Model details",
        "",
        f"- Backbone: `{backbone}` (timm)"
        + (
            f", arguments `{json.dumps(args['backbone_kwargs'])}`"
            if args["backbone_kwargs"]
            else ""
        ),
        f"- Head: prompt width d = {args['dim']}, VSI with {args['num_heads']} heads of "
        f"{args['head_dim']}, FFN hidden {args['mlp_hidden_dim']}, "
        + ("linear PI" if args["pi_linear"] else f"PI hidden ratio {args['pi_mlp_ratio']}"),
        f"- Classes: {model.num_classes}; class embeddings of width {args['embed_dim']}",
        f"- Parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M",
        f"- Input: {_data_line(model)}",
        "",
        "### Text encoder (class embeddings)",
        "",
        *_text_encoder_lines(model.text_encoder_cfg),
        "",
        "The class embeddings are stored in the weights file; loading never runs CLIP.",
        "",
    ]
    if values:
        lines += ["## Results", ""]
        if fields.get("dataset"):
            lines += [f"On {fields['dataset']}:", ""]
        lines += ["| Metric | Value |", "| --- | --- |"]
        lines += [f"| {k} | {_format_value(v)} |" for k, v in values.items()]
        lines.append("")
    lines += [
        "## How to use",
        "",
        "```python",
        "import cprfl_zoo, timm, torch",
        "",
        f'model = cprfl_zoo.CPRFL.from_pretrained("{ref}").eval()',
        f'# or: timm.create_model("hf-hub:{ref}", pretrained=True)',
        "config = timm.data.resolve_model_data_config(model)",
        "transform = timm.data.create_transform(**config, is_training=False)",
        "with torch.no_grad():",
        "    probs = model(transform(image).unsqueeze(0)).sigmoid()  # (1, num_classes)",
        "labels = model.class_names  # in logit order",
        "```",
        "",
        "## Labels",
        "",
        ", ".join(f"`{n}`" for n in model.class_names),
        "",
    ]
    if fields.get("notes"):
        lines += ["## Notes", "", str(fields["notes"]), ""]
    lines += ["## Citation", "", "```bibtex", CPRFL_CITATION, "```", ""]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
    return str(card)


def _data_line(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size")
    parts = []
    if size:
        parts.append(f"{size[-2]}×{size[-1]}")
    if cfg.get("mean") is not None:
        parts.append(f"mean {tuple(cfg['mean'])}, std {tuple(cfg.get('std') or ())}")
    return ", ".join(parts) if parts else "see config.json"


# ---------------------------------------------------------------------- saving
def _architecture(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or _DEFAULT_ARCHITECTURE


def _write_folder(
    model: CPRFL,
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
        },
        model_args=model_args,
    )
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    (folder / MODEL_CARD_NAME).write_text(readme, encoding="utf-8")


def save_pretrained(
    model: CPRFL,
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
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _write_folder(model, tmp, repo_id=repo_id, metrics=metrics, model_card=model_card)
        target.mkdir(exist_ok=True)
        config = target / CONFIG_NAME
        if config.exists():
            config.unlink()  # the folder must not look valid while its weights are being replaced
        for name in (WEIGHTS_NAME, MODEL_CARD_NAME, CONFIG_NAME):
            os.replace(tmp / name, target / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _logger.info("saved %s to %s", type(model).__name__, target)
    return target


def push_to_hub(
    model: CPRFL,
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
    **kwargs: Any,
) -> CPRFL:
    """Load a saved CPRFL model from a local folder or the Hugging Face Hub.

    Loading builds the backbone without its ImageNet weights and never runs CLIP: every tensor,
    the class embeddings included, comes from ``model.safetensors``.

    Args:
        repo_id_or_path: A folder written by :func:`save_pretrained`, a Hub repository id
            (``"user/repo"``, optionally ``"user/repo@revision"``), or a timm model name with an
            ``"hf-hub:"`` / ``"local-dir:"`` prefix.
        revision: Hub branch, tag or commit.
        cache_dir: Hugging Face cache folder (default: the standard cache).
        **kwargs: Passed to ``timm.create_model`` (e.g. ``drop_rate``).

    Returns:
        The model, in training mode as timm returns models.

    Raises:
        FileNotFoundError: If a local folder lacks ``config.json`` or ``model.safetensors``.
        CheckpointMismatchError: If the weights do not match the config.
        TypeError: If the saved model is not a CPRFL model.
    """
    import timm

    from .model import CPRFL

    name = _model_name(repo_id_or_path, revision)
    if name.startswith("local-dir:"):
        _check_local_folder(Path(name.removeprefix("local-dir:")))
    if cache_dir is not None:
        kwargs["cache_dir"] = cache_dir
    model = timm.create_model(name, pretrained=True, **kwargs)
    if not isinstance(model, CPRFL):
        raise TypeError(f"{name} holds a timm {type(model).__name__}, not a CPRFL model")
    return model
