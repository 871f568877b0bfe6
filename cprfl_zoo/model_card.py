"""The model card (``README.md``) of a saved CPRFL model."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import torch
from huggingface_hub import ModelCard, ModelCardData
from torch import nn

__all__ = ["CPRFL_CITATION", "MODEL_CARD_NAME", "build_model_card", "card_metrics"]

MODEL_CARD_NAME = "README.md"
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


# The metrics computed at decision thresholds (the others, mAP and AP, rank the scores).
_THRESHOLDED = ("OP", "OR", "OF1", "CP", "CR", "CF1")


def _format_value(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def card_metrics(
    model: nn.Module,
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    train_class_counts: Any = None,
    head_threshold: int = 100,
    tail_threshold: int = 20,
) -> dict[str, float]:
    """The model card's results of an evaluation, in percent, at the model's own thresholds.

    mAP (with head / medium / tail mAP when the training counts are given), and OF1 / CF1 of
    ``sigmoid(logit) >= threshold`` with the thresholds the model carries: its calibrated
    per-class thresholds, or 0.5 when it has none (``model.get_thresholds()``). Pass the result
    as ``save_pretrained(..., metrics=...)``; the card says which thresholds those were.

    Args:
        model: The model, as it is saved (after any calibration).
        logits: ``(N, C)`` logits of the evaluation set.
        targets: ``(N, C)`` multi-hot targets.
        train_class_counts: ``(C,)`` training positives per class, for the head / medium / tail
            mAP, or None.
        head_threshold: See :func:`cprfl_zoo.metrics.long_tail_split`.
        tail_threshold: See :func:`cprfl_zoo.metrics.long_tail_split`.

    Returns:
        ``{"mAP", ["head mAP", "medium mAP", "tail mAP",] "OF1", "CF1"}`` in percent; a group
        without classes is left out.
    """
    from .metrics import long_tail_map, long_tail_split, mean_average_precision, threshold_metrics

    results: dict[str, float] = {}
    if train_class_counts is not None:
        split = long_tail_split(train_class_counts, head_threshold, tail_threshold)
        groups = long_tail_map(logits, targets, split).as_dict(100)
        names = {"mAP": "mAP", "mAP_head": "head mAP", "mAP_medium": "medium mAP"}
        names["mAP_tail"] = "tail mAP"
        results.update({names[k]: v for k, v in groups.items() if math.isfinite(v)})
    else:
        results["mAP"] = 100 * mean_average_precision(logits, targets).map
    thresholds = model.get_thresholds().to(logits.device)
    at = threshold_metrics(logits, targets, threshold=thresholds, from_logits=True).as_dict(100)
    results.update(OF1=at["OF1"], CF1=at["CF1"])
    return results


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
    model: nn.Module,
    *,
    repo_id: str | None = None,
    metrics: Mapping[str, float] | None = None,
    model_card: Mapping[str, Any] | None = None,
) -> str:
    """Write the model card (README.md) of a CPRFL model.

    Args:
        model: The model.
        repo_id: Hub repository id used in the loading snippet (a placeholder when omitted).
        metrics: Evaluation results to report, in percent, e.g. ``{"mAP": 56.3, "head mAP":
            60.1, "medium mAP": 58.4, "tail mAP": 48.9, "CF1": 52.0}``; thresholded metrics
            (OP, OR, OF1, CP, CR, CF1) at the thresholds the model carries, which the card
            names. :func:`card_metrics` computes them from an evaluation's logits.
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
        f"- Head: prompt width d = {args['embed_dim']}, VSI with {args['num_heads']} heads of "
        f"{args['head_dim']}, FFN hidden {args['mlp_hidden_dim']}, "
        + ("linear PI" if args["pi_linear"] else f"PI hidden ratio {args['pi_mlp_ratio']}"),
        f"- Classes: {model.num_classes}; class embeddings of width {args['text_dim']}",
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
        lines += ["| Metric | Value (%) |", "| --- | --- |"]
        lines += [f"| {k} | {_format_value(v)} |" for k, v in values.items()]
        lines += ["", _results_note(model, values), ""]
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


def _results_note(model: nn.Module, values: Mapping[str, Any]) -> str:
    note = "In percent."
    thresholded = [k for k in values if k.split()[0] in _THRESHOLDED]
    if thresholded:
        at = (
            "the model's calibrated per-class thresholds (below)"
            if getattr(model, "thresholds", None) is not None
            else "probability 0.5 for every class (the model is not calibrated)"
        )
        note += f" {', '.join(thresholded)}: predictions at {at}."
    return note


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
