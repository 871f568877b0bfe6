"""Convert checkpoints of the official CPRFL code (github.com/jiexuanyan/CPRFL) into CPRFL models.

An official checkpoint is a torch pickle holding a dict with ``state_dict`` (and ``epoch``,
``score``, ``model``); keys may carry DataParallel's ``module.`` prefix. Its tensors map onto
:class:`~cprfl_zoo.model.CPRFL` as follows:

================================================  ===========================================
official                                          cprfl_zoo
================================================  ===========================================
``Backbone.{0,1,4,5,6,7}.*``                      ``backbone.{conv1,bn1,layer1..layer4}.*``
``fc.0.*`` (φ)                                    ``visual_proj.*``
``label_emb.0.*``, ``label_emb.3.*`` (PI)         ``prompt_init.net.fc1.*``, ``.fc2.*``
``label_emb.*`` (linear PI)                       ``prompt_init.net.*``
``attention.layers.0.0.norm.*``                   ``vsi.norm1.*``
``attention.layers.0.0.fn.to_qkv.weight``         ``vsi.attn.qkv.weight``
``attention.layers.0.0.fn.to_out.0.*``            ``vsi.attn.proj.*``
``attention.layers.0.1.norm.*``                   ``vsi.norm2.*``
``attention.layers.0.1.fn.net.{0,3}.*``           ``vsi.mlp.fc1.*``, ``vsi.mlp.fc2.*``
``text_encoder.*`` (fine-tuned CLIP RN50 text)    class embeddings (or the trainable tower)
================================================  ===========================================

The class embeddings are the fine-tuned text tower's end-of-text features of
``"a photo of a {name}."`` (underscores turned into spaces), computed once at conversion. Every
head size is read from the tensor shapes, except the number of VSI heads, which the shapes do not
determine (the official code uses 8). The official images are raw [0, 1] tensors resized to
448 × 448 with no mean/std normalisation, and the converted model's ``pretrained_cfg`` says so.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch

from .class_lists import get_class_names
from .classes import validate_class_inputs
from .fileio import file_sha256
from .head_config import validate_head_args
from .hub import check_state_dict
from .messages import listed
from .model import CPRFL
from .text import DEFAULT_MODEL_NAME, DEFAULT_TEMPLATES

_logger = logging.getLogger(__name__)

__all__ = [
    "OFFICIAL_DATA_CONFIG",
    "OFFICIAL_TEMPLATE",
    "convert_official_checkpoint",
    "convert_official_state_dict",
    "load_official_state_dict",
    "official_text_tower",
]

# The official code's prompt and text encoder are cprfl_zoo's defaults (names kept for imports).
OFFICIAL_TEMPLATE = DEFAULT_TEMPLATES[0]
OFFICIAL_TOKENIZER = DEFAULT_MODEL_NAME
OFFICIAL_DATA_CONFIG: dict[str, Any] = {
    "input_size": (3, 448, 448),
    "mean": (0.0, 0.0, 0.0),
    "std": (1.0, 1.0, 1.0),
    "interpolation": "bilinear",
    "crop_pct": 1.0,
    "crop_mode": "squash",
}

_BACKBONE_PARTS = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3"}
_BACKBONE_PARTS["7"] = "layer4"
_VSI_KEYS = {
    "attention.layers.0.0.norm.": "vsi.norm1.",
    "attention.layers.0.0.fn.to_qkv.": "vsi.attn.qkv.",
    "attention.layers.0.0.fn.to_out.0.": "vsi.attn.proj.",
    "attention.layers.0.1.norm.": "vsi.norm2.",
    "attention.layers.0.1.fn.net.0.": "vsi.mlp.fc1.",
    "attention.layers.0.1.fn.net.3.": "vsi.mlp.fc2.",
}
# (bottleneck blocks?, blocks per stage) -> timm ResNet with torchvision's parameter names.
_RESNETS = {
    (False, (2, 2, 2, 2)): "resnet18",
    (False, (3, 4, 6, 3)): "resnet34",
    (True, (3, 4, 6, 3)): "resnet50",
    (True, (3, 4, 23, 3)): "resnet101",
    (True, (3, 8, 36, 3)): "resnet152",
}
_TEXT_PREFIX = "text_encoder."
_CLIP_HEAD_WIDTH = 64  # OpenAI CLIP's text transformer uses width // 64 heads


# ---------------------------------------------------------------------- reading
def load_official_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read an official CPRFL checkpoint safely and return its tensors without ``module.``.

    The file is read with ``torch.load(weights_only=True)``, which refuses arbitrary pickled
    objects.

    Args:
        path: The ``.pth`` / ``.pth.tar`` checkpoint: a dict with ``state_dict``, or a bare state
            dict.

    Returns:
        The state dict, with any DataParallel ``module.`` prefix removed.

    Raises:
        FileNotFoundError: If the file does not exist.
        IsADirectoryError: If ``path`` is a folder.
        ValueError: If it holds no tensors in a recognised layout, or cannot be read safely.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"official checkpoint {path} is a folder; expected the .pth / .pth.tar file"
        )
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise ValueError(
            f"cannot read {path} as a weights-only torch checkpoint ({type(e).__name__}: {e}); "
            "it must be a checkpoint saved by the official CPRFL code"
        ) from e
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{path} holds no state dict (expected a dict with 'state_dict')")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(
                f"{path}: entry {key!r} of the state dict is {type(value).__name__}, not a tensor"
            )
        out[key.removeprefix("module.")] = value
    return out


# ---------------------------------------------------------------------- mapping
def _require(sd: Mapping[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    if key not in sd:
        raise ValueError(f"{source} has no tensor {key!r}: not an official CPRFL checkpoint")
    return sd[key]


def _infer_backbone(sd: Mapping[str, torch.Tensor], source: str) -> str:
    blocks = []
    for stage in ("4", "5", "6", "7"):
        idx = {int(m.group(1)) for k in sd if (m := re.match(rf"Backbone\.{stage}\.(\d+)\.", k))}
        if not idx:
            raise ValueError(f"{source} has no Backbone.{stage}.* tensors (ResNet stage)")
        blocks.append(max(idx) + 1)
    bottleneck = "Backbone.4.0.conv3.weight" in sd
    name = _RESNETS.get((bottleneck, tuple(blocks)))
    if name is None:
        kind = "bottleneck" if bottleneck else "basic"
        raise ValueError(
            f"{source}: the backbone has {blocks} {kind} blocks per stage, which is no torchvision "
            "ResNet (the official code uses ResNet-101: [3, 4, 23, 3] bottleneck blocks)"
        )
    return name


def _check_supported(sd: Mapping[str, torch.Tensor], source: str) -> None:
    deeper = sorted(k for k in sd if re.match(r"attention\.layers\.[1-9]\d*\.", k))
    if deeper:
        raise ValueError(
            f"{source} has a VSI transformer deeper than one layer ({listed(deeper)}); CPRFL's "
            "VSI is one layer (the official config's depth = 1)"
        )
    if "attention.layers.0.0.fn.to_out.3.weight" in sd:
        raise ValueError(
            f"{source} uses the official 'out2_neck' attention output (to_out.0 .. to_out.3), "
            "which cprfl_zoo does not implement; only out2_neck = False checkpoints convert"
        )
    if "attention.layers.0.0.fn.to_qkv.bias" in sd:
        raise ValueError(f"{source}: to_qkv has a bias, which the official code never has")


def _map_head(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool, list[str]]:
    """Rename every non-text tensor; return (mapped, linear_pi, keys not recognised)."""
    mapped: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    linear_pi = "label_emb.weight" in sd or "label_emb.3.weight" not in sd
    for key, value in sd.items():
        if key.startswith(_TEXT_PREFIX):
            continue
        new = None
        if m := re.match(r"Backbone\.(\d+)\.(.+)$", key):
            part = _BACKBONE_PARTS.get(m.group(1))
            new = f"backbone.{part}.{m.group(2)}" if part else None
        elif key.startswith("fc.0."):
            new = "visual_proj." + key[len("fc.0.") :]
        elif key.startswith("label_emb."):
            rest = key[len("label_emb.") :]
            if linear_pi:
                rest = rest.removeprefix("0.")
                new = f"prompt_init.net.{rest}" if rest in ("weight", "bias") else None
            elif rest.startswith(("0.", "3.")):
                new = f"prompt_init.net.{'fc1' if rest[0] == '0' else 'fc2'}.{rest[2:]}"
        else:
            for old, ours in _VSI_KEYS.items():
                if key.startswith(old):
                    new = ours + key[len(old) :]
                    break
        if new is None:
            unknown.append(key)
        else:
            mapped[new] = value
    return mapped, linear_pi, unknown


def _head_sizes(sd: Mapping[str, torch.Tensor], linear_pi: bool, source: str) -> dict[str, Any]:
    fc = _require(sd, "fc.0.weight", source)
    dim = int(fc.shape[0])
    first = "label_emb.weight" if "label_emb.weight" in sd else "label_emb.0.weight"
    pi = _require(sd, first, source)
    qkv = _require(sd, "attention.layers.0.0.fn.to_qkv.weight", source)
    ffn = _require(sd, "attention.layers.0.1.fn.net.0.weight", source)
    if qkv.shape[0] % 3:
        raise ValueError(f"{source}: to_qkv.weight has {qkv.shape[0]} rows, not a multiple of 3")
    sizes: dict[str, Any] = {
        "embed_dim": dim,
        "text_dim": int(pi.shape[1]),
        "inner_dim": int(qkv.shape[0]) // 3,
        "mlp_hidden_dim": int(ffn.shape[0]),
        "pi_linear": linear_pi,
    }
    if not linear_pi:
        hidden = int(pi.shape[0])
        ratio = hidden / dim
        if int(dim * ratio) != hidden:
            raise ValueError(
                f"{source}: PI hidden width {hidden} is not expressible as embed_dim × ratio for "
                f"embed_dim={dim}"
            )
        sizes["pi_mlp_ratio"] = ratio
    return sizes


# ---------------------------------------------------------------------- text
def _text_arch(text_sd: Mapping[str, torch.Tensor], source: str) -> dict[str, Any]:
    emb = _require(text_sd, "token_embedding.weight", f"{source} (text_encoder)")
    pos = _require(text_sd, "positional_embedding", f"{source} (text_encoder)")
    proj = _require(text_sd, "text_projection", f"{source} (text_encoder)")
    layers = {
        int(m.group(1)) for k in text_sd if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))
    }
    width = int(emb.shape[1])
    if not layers or width % _CLIP_HEAD_WIDTH:
        raise ValueError(
            f"{source}: text_encoder has {len(layers)} resblocks and width {width}; expected "
            f"an OpenAI CLIP text transformer (width a multiple of {_CLIP_HEAD_WIDTH})"
        )
    return {
        "embed_dim": int(proj.shape[1]),
        "quick_gelu": True,
        "text_cfg": {
            "context_length": int(pos.shape[0]),
            "vocab_size": int(emb.shape[0]),
            "width": width,
            "heads": width // _CLIP_HEAD_WIDTH,
            "layers": max(layers) + 1,
        },
    }


def official_text_tower(
    state_dict: Mapping[str, torch.Tensor], class_names: Sequence[str], source: str = "checkpoint"
) -> Any:
    """Build the checkpoint's fine-tuned CLIP text tower, with the official class prompts.

    The tower's sizes come from the tensor shapes: width from ``token_embedding``, layers from
    the resblocks, context from ``positional_embedding``, heads = width // 64 (as OpenAI CLIP),
    output width from ``text_projection``; it uses QuickGELU, as OpenAI's CLIP does.

    Args:
        state_dict: The official state dict (``text_encoder.*`` keys are used).
        class_names: Class names, in logit order.
        source: Name of the checkpoint, for error messages.

    Returns:
        A :class:`cprfl_zoo.text.TextTower` in eval mode holding the tokenised prompts
        ``"a photo of a {name}."``; calling it returns the (C, m) class embeddings.

    Raises:
        ValueError: If the text tower is missing or not an OpenAI CLIP text transformer.
    """
    from .text import TextTower

    text_sd = {
        k[len(_TEXT_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(_TEXT_PREFIX)
    }
    if not text_sd:
        raise ValueError(f"{source} has no text_encoder.* tensors (the fine-tuned CLIP text tower)")
    arch = _text_arch(text_sd, source)
    tower = TextTower(arch, model_name=OFFICIAL_TOKENIZER, templates=(OFFICIAL_TEMPLATE,))
    expected = tower.text.state_dict()
    problems = sorted(set(expected) ^ set(text_sd)) + sorted(
        k for k in expected if k in text_sd and expected[k].shape != text_sd[k].shape
    )
    if problems:
        raise ValueError(
            f"{source}: text_encoder does not match an OpenAI CLIP text transformer of width "
            f"{arch['text_cfg']['width']}, {arch['text_cfg']['layers']} layers (tensors: "
            f"text_encoder.{listed(problems)})"
        )
    tower.text.load_state_dict({k: v.float() for k, v in text_sd.items()}, strict=True)
    tower.set_class_names(list(class_names))
    return tower.eval()


# ---------------------------------------------------------------------- conversion
def _resolve_class_names(class_names: str | Sequence[str]) -> list[str]:
    if isinstance(class_names, str):
        return get_class_names(class_names)
    return validate_class_inputs(class_names)


def convert_official_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    class_names: str | Sequence[str],
    *,
    num_heads: int = 8,
    drop_rate: float = 0.1,
    trainable_text_encoder: bool = False,
    source: str = "the official checkpoint",
    text_encoder_cfg: Mapping[str, Any] | None = None,
) -> CPRFL:
    """Build a CPRFL model from an official state dict (``module.`` prefix already removed).

    Args:
        state_dict: The official tensors.
        class_names: Class names in the order the model was trained with, or a built-in list
            name (``"coco-lt"``, ``"voc-lt"``).
        num_heads: VSI attention heads (the official ``head_num``; shapes cannot tell).
        drop_rate: Dropout of the converted head (only matters when training further).
        trainable_text_encoder: Keep the fine-tuned text tower in the model (trainable mode)
            instead of only its class embeddings.
        source: Name of the checkpoint, for error messages.
        text_encoder_cfg: Provenance overrides for ``model.text_encoder_cfg`` (e.g. a
            ``weights`` identity naming the checkpoint file's SHA-256).

    Returns:
        The model in eval mode; its logits equal the official model's.

    Raises:
        ValueError: For unknown, missing or mis-shaped tensors, an unsupported official variant,
            or bad class names.
    """
    names = _resolve_class_names(class_names)
    validate_head_args({"num_heads": num_heads, "drop_rate": drop_rate})
    _check_supported(state_dict, source)
    backbone = _infer_backbone(state_dict, source)
    mapped, linear_pi, unknown = _map_head(state_dict)
    if unknown:
        raise ValueError(
            f"{source} has tensors the official CPRFL model does not: {listed(unknown)}"
        )
    sizes = _head_sizes(state_dict, linear_pi, source)
    inner = sizes.pop("inner_dim")
    if inner % num_heads:
        raise ValueError(
            f"{source}: the attention's inner width {inner} is not divisible by num_heads="
            f"{num_heads}"
        )

    tower = official_text_tower(state_dict, names, source)
    with torch.no_grad():
        embeddings = tower().float()
    if embeddings.shape[1] != sizes["text_dim"]:
        raise ValueError(
            f"{source}: the text tower gives {embeddings.shape[1]}-d features but label_emb "
            f"expects {sizes['text_dim']}"
        )
    provenance = {
        "model_name": OFFICIAL_TOKENIZER,
        "pretrained": "openai",
        "weights": "official-cprfl-checkpoint",
        "templates": [OFFICIAL_TEMPLATE],
        "normalize": False,
        "text_transform": "underscores-to-spaces",
        "text_dim": int(embeddings.shape[1]),
        **dict(text_encoder_cfg or {}),
    }
    extra: dict[str, Any] = {}
    if trainable_text_encoder:
        provenance.update(trainable=True, text_tower=tower.config)
        extra = {"trainable_text_encoder": True, "text_tower": tower}

    arch = f"cprfl_{backbone}" if timm.is_model(f"cprfl_{backbone}") else "cprfl"
    if arch == "cprfl":
        extra["backbone"] = backbone
    model = timm.create_model(
        arch,
        pretrained=False,
        class_names=names,
        text_embeddings=embeddings,
        num_heads=num_heads,
        head_dim=inner // num_heads,
        qkv_bias=False,
        drop_rate=drop_rate,
        text_encoder_cfg=provenance,
        **sizes,
        **extra,
    )
    mapped["class_embeddings"] = embeddings
    if trainable_text_encoder:
        prefix = next(name for name, module in model.named_modules() if module is tower)
        mapped.update({f"{prefix}.{k}": v for k, v in tower.state_dict().items()})
    check_state_dict(mapped, model, source=source)
    model.load_state_dict(mapped, strict=True)
    model.pretrained_cfg = dict(model.pretrained_cfg, architecture=arch, **OFFICIAL_DATA_CONFIG)
    model.default_cfg = model.pretrained_cfg
    return model.eval()


def convert_official_checkpoint(
    path: str | os.PathLike[str],
    class_names: str | Sequence[str],
    *,
    num_heads: int = 8,
    drop_rate: float = 0.1,
    trainable_text_encoder: bool = False,
) -> CPRFL:
    """Convert a checkpoint of the official CPRFL code into a :class:`~cprfl_zoo.model.CPRFL`.

    The converted model gives the same logits as the official model in eval mode. Its
    ``pretrained_cfg`` records the official preprocessing (448 × 448, no mean/std
    normalisation), so ``timm.data.resolve_model_data_config(model)`` builds the right
    transform. Save it with ``model.save_pretrained(...)`` or ``model.push_to_hub(...)``.

    Example:
        >>> model = convert_official_checkpoint("coco_lt_best.pth.tar", "coco-lt")
        >>> model.save_pretrained("cprfl-resnet101-coco-lt")

    Args:
        path: The official checkpoint (read with ``weights_only=True``).
        class_names: The class names in training order, or ``"coco-lt"`` / ``"voc-lt"``.
        num_heads: VSI attention heads (the official ``head_num``, 8).
        drop_rate: Dropout of the converted head (only matters when training further).
        trainable_text_encoder: Keep the fine-tuned CLIP text tower in the model, so that
            further training updates it as the official code does; by default only the class
            embeddings it produces are kept.

    Returns:
        The model, in eval mode.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not an official CPRFL checkpoint of a supported variant.
    """
    path = Path(path)
    state_dict = load_official_state_dict(path)
    model = convert_official_state_dict(
        state_dict,
        class_names,
        num_heads=num_heads,
        drop_rate=drop_rate,
        trainable_text_encoder=trainable_text_encoder,
        source=str(path),
        text_encoder_cfg={"weights": f"official-cprfl-checkpoint-sha256:{file_sha256(path)}"},
    )
    _logger.info("converted %s (%d classes)", path, model.num_classes)
    return model
