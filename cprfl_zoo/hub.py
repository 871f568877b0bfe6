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
import math
import os
import re
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
from .classes import validate_class_inputs
from .fileio import atomic_folder, file_sha256
from .messages import listed

if TYPE_CHECKING:
    from .model import CPRFL

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
    "pretrained_filter",
    "push_to_hub",
    "read_saved_config",
    "save_pretrained",
    "saved_config_name",
    "verify_saved_weights",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_CARD_NAME = "README.md"
CHECKSUM_FIELD = "weights_sha256"
"""``config.json`` field holding the SHA-256 of ``model.safetensors`` (since 0.2.0)."""
_META_CLASS_NAMES = "cprfl_class_names"
_META_HEAD = "cprfl_head"
_HEAD_SHAPE_KEYS = (
    "embed_dim",
    "dim",
    "num_heads",
    "head_dim",
    "mlp_hidden_dim",
    "pi_mlp_ratio",
    "pi_linear",
    "qkv_bias",
)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DEFAULT_ARCHITECTURE = "cprfl"
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
def _check_self_contained(backbone: Any, where: str) -> None:
    if isinstance(backbone, str) and backbone.startswith(("hf-hub:", "local-dir:")):
        raise ValueError(
            f"{where} is {backbone!r}: building it reads another model's config (from the Hub "
            "or another folder), so a saved CPRFL model would not be self-contained. Build the "
            "model from the timm architecture name (with its tag, e.g. 'resnet50.a1_in1k') "
            "instead"
        )


def _allowed_model_args() -> set[str]:
    import inspect

    from .model import _HEAD_ARGS, CPRFL

    params = inspect.signature(CPRFL.__init__).parameters
    return (set(params) - {"self"}) | set(_HEAD_ARGS)


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
    from .model import validate_head_args

    if not isinstance(model_args, Mapping):
        raise ValueError(
            f"{where}: model_args must be an object of CPRFL arguments, got "
            f"{type(model_args).__name__}"
        )
    unknown = sorted(set(model_args) - _allowed_model_args())
    if unknown:
        raise ValueError(
            f"{where}: model_args has unknown key(s) {unknown}; expected arguments of "
            f"cprfl_zoo.CPRFL ({', '.join(sorted(_allowed_model_args()))})"
        )
    for key in ("backbone", "class_names"):
        if key not in model_args:
            raise ValueError(f"{where}: model_args.{key} is missing")
    backbone = model_args["backbone"]
    if not isinstance(backbone, str) or not backbone:
        raise ValueError(
            f"{where}: model_args.backbone must be a timm model name, got {backbone!r}"
        )
    _check_self_contained(backbone, f"{where}: model_args.backbone")
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
        from .thresholds import validate_thresholds

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
    import timm

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
    if timm.models.model_entrypoint(arch).__module__ != "cprfl_zoo.model":
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
    from huggingface_hub import try_to_load_from_cache

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
    if _META_CLASS_NAMES in metadata:
        recorded = _metadata_json(metadata, _META_CLASS_NAMES, list, weights_path)
        if recorded != list(model.class_names):
            raise CheckpointMismatchError(
                f"{where}: model_args.class_names {_short_names(list(model.class_names))} "
                f"disagree with the class names recorded in {weights_path} "
                f"{_short_names(recorded)}{_first_difference(list(model.class_names), recorded)}"
                "; the class embeddings in the file are in the recorded order"
            )
    if _META_HEAD in metadata:
        recorded = _metadata_json(metadata, _META_HEAD, dict, weights_path)
        current = _head_shape(model.model_args)
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
        "This is a **multi-label** model: each class has its own probability, "
        "`sigmoid(logit)`, and an image can have any number of labels. The Hub's "
        "image-classification widget applies a softmax across classes, which is wrong for "
        "such a model (the widget's scores compete and sum to 1); use `predict()`, which applies "
        "the sigmoid and the model's thresholds:",
        "",
        "```python",
        "import cprfl_zoo",
        "from PIL import Image",
        "",
        f'model = cprfl_zoo.CPRFL.from_pretrained("{ref}").eval()',
        'predictions = model.predict([Image.open("photo.jpg")])  # one Prediction per image',
        "print(predictions[0].labels, predictions[0].probabilities)  # labels above threshold",
        "```",
        "",
        "or, from the command line: `cprfl-zoo predict "
        + (f"hf-hub:{ref}" if repo_id else "MODEL")
        + " photos/ --output preds.jsonl`. The raw probabilities:",
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
        "predicted = probs[0] >= model.get_thresholds()  # per-class thresholds",
        "```",
        "",
        "### Decision thresholds",
        "",
        *_threshold_lines(model),
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


def _threshold_lines(model: nn.Module) -> list[str]:
    values = getattr(model, "thresholds", None)
    if values is None:
        return [
            "Not calibrated: every class uses probability 0.5. Calibrate per-class thresholds on "
            "a validation set with `cprfl-zoo calibrate` (stored in `config.json`)."
        ]
    ordered = sorted(values)
    median = ordered[len(ordered) // 2]
    return [
        f"Calibrated per class on a validation set (maximum F1 of each class): probabilities "
        f"from {ordered[0]:.3f} to {ordered[-1]:.3f}, median {median:.3f}; stored in "
        "`config.json` (`model_args.thresholds`, in logit order) and used by `predict()`."
    ]


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
    _check_self_contained(model_args.get("backbone"), "the model's backbone")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": "pt",
        _META_CLASS_NAMES: json.dumps(list(model.class_names)),
        _META_HEAD: json.dumps(_head_shape(model_args)),
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


def _head_shape(model_args: Mapping[str, Any]) -> dict[str, Any]:
    return {k: model_args[k] for k in _HEAD_SHAPE_KEYS if k in model_args}


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
    # config.json goes last: the folder must not look valid while its weights are being replaced
    with atomic_folder(target, last=(CONFIG_NAME,)) as tmp:
        _write_folder(model, tmp, repo_id=repo_id, metrics=metrics, model_card=model_card)
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
    verify_checksum: bool = True,
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
    import timm
    from huggingface_hub import hf_hub_download

    from .model import CPRFL

    name = _model_name(repo_id_or_path, revision)
    if name.startswith("local-dir:"):
        folder = Path(name.removeprefix("local-dir:"))
        _check_local_folder(folder)
        read_saved_config(folder / CONFIG_NAME)
        weights = str(folder / WEIGHTS_NAME)
    else:
        repo, _, rev = name.removeprefix("hf-hub:").partition("@")
        config = hf_hub_download(repo, CONFIG_NAME, revision=rev or None, cache_dir=cache_dir)
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
    if not isinstance(model, CPRFL):
        raise TypeError(f"{name} holds a timm {type(model).__name__}, not a CPRFL model")
    return model
