"""The CPRFL model (its timm entrypoints are in :mod:`cprfl_zoo.entrypoints`).

CPRFL (Category-Prompt Refined Feature Learning, ACM MM 2024) puts a prompt-based head on a
backbone's local tokens:

1. ``F = φ(backbone tokens)``, a linear projection to width d;
2. ``P = PI(W)``, category prompts from the class text embeddings W;
3. ``P' = VSI([F; P])[prompt rows]``, category-specific features;
4. ``logit_i = p'_i · p_i``: the prompts are also the classifier.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from timm.layers import register_notrace_module
from timm.models._manipulate import checkpoint
from torch import nn

from .backbone import (
    BackboneWeightsError,
    backbone_tokens,
    check_images,
    check_tokens,
    create_backbone_checked,
    feature_layout,
    num_prefix_tokens,
)
from .classes import validate_class_inputs
from .config import (
    CPRFLConfig,
    check_backbone_kwargs,
    check_logit_offsets,
    upgrade_text_encoder_cfg,
)
from .deploy import DeployedCPRFL
from .head_config import COSINE_EPS, HeadConfig, resolve_head_config, validate_head_args
from .hub import load_pretrained, push_to_hub, save_pretrained
from .predict import predict
from .prompt_init import PromptInit
from .thresholds import DEFAULT_THRESHOLD, validate_thresholds
from .timm_contract import (
    backbone_traits,
    check_fx_leaf,
    fx_tracing,
    prefixed_feature_info,
    prefixed_matcher_fn,
    traced_tokens,
    under_backbone,
)
from .vsi import VSI, PromptAttention

if TYPE_CHECKING:
    from .predict import Prediction

_logger = logging.getLogger(__name__)

__all__ = [
    "CPRFL",
    "BackboneWeightsError",
    "HeadConfig",
    "validate_class_inputs",
    "validate_head_args",
]

_DATA_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")


COSINE_INIT_SCALE = 10.0  # initial s of the opt-in cosine classifier

# FX: the prompt attention branches on the device and sizes of its inputs (to pick a kernel), so
# timm's tracer (``timm.models.create_feature_extractor``, timm's FX tests) keeps it whole.
register_notrace_module(PromptAttention)


torch.fx.wrap("traced_tokens")


class CPRFL(nn.Module):
    """CPRFL: a category-prompt head on the local tokens of any timm backbone.

    Create it with :func:`cprfl_zoo.create_cprfl` or ``timm.create_model("cprfl_resnet101", ...)``.

    Args:
        backbone: timm model name (with optional tag) or module following timm's
            ``forward_features`` / ``num_features`` contract.
        class_names: Class names in logit order.
        text_embeddings: Class embeddings W (C, m). May be omitted only together with
            ``text_dim``, when the weights (which contain W) are loaded right after.
        head_cfg: The head's widths, rates and options as one record; or give its fields
            (``embed_dim``, ``num_heads``, ``drop_rate``, ...) as keyword arguments.
        pretrained_backbone: Load timm's pretrained weights for a named backbone.
        backbone_kwargs: Extra keyword arguments for ``timm.create_model`` of the backbone.
        img_size: Input image size for backbones that take one (ViT, Swin).
        in_chans: Number of input image channels.
        num_classes: As in timm: ``len(class_names)`` (the default), or 0 for a model without
            classes, whose ``forward`` returns the pooled pre-logits (B, ``head_hidden_size``),
            as a timm model built with ``num_classes=0`` does (see :meth:`reset_classifier`).
            With 0, ``class_names`` may be omitted when ``text_dim`` is given.
        global_pool: Accepted for timm compatibility; CPRFL does not pool (must be empty).
        text_encoder_cfg: JSON-serialisable description of what produced the embeddings.
        trainable_text_encoder: Keep the CLIP text tower as the submodule ``text_tower`` and
            re-encode the class prompts on every forward pass, fine-tuning it (the official
            code's mode). Rebuilt from ``text_encoder_cfg["text_tower"]`` when ``text_tower`` is
            not given (for loading saved weights).
        text_tower: A loaded :class:`~cprfl_zoo.text.TextTower` with the class prompts; implies
            ``trainable_text_encoder``.
        thresholds: Per-class decision thresholds, probabilities in [0, 1] applied to
            ``sigmoid(logits)``, in logit order (see :meth:`set_thresholds` and
            :func:`cprfl_zoo.thresholds.calibrate_thresholds`); ``None``: not calibrated, 0.5.
        logit_adjustment: Per-class post-hoc logit offsets, subtracted from every logit (see
            :meth:`set_logit_adjustment`); ``None``: none.
        **head_args: The fields of :class:`~cprfl_zoo.head_config.HeadConfig`: ``embed_dim``
            (the width d of the tokens, prompts and VSI, 2048, as timm's ``embed_dim``),
            ``text_dim`` (m, inferred from ``text_embeddings``), ``num_heads``, ``head_dim``,
            ``mlp_hidden_dim``, ``qkv_bias``, ``drop_rate``, ``attn_drop_rate``,
            ``pi_mlp_ratio``, ``pi_linear``, ``detach_classifier_prompts``,
            ``detach_refined_features``, ``cosine_classifier``, ``classifier_tau``. The 0.1.0
            spelling (``dim`` for
            d, ``embed_dim`` for m) is accepted with a ``FutureWarning`` until 0.3.0.

    Raises:
        ValueError: For missing class names or embeddings, an unknown argument, or a head field
            out of range (the message names it).
    """

    def __init__(
        self,
        backbone: str | nn.Module = "resnet101",
        class_names: Sequence[str] | None = None,
        text_embeddings: torch.Tensor | None = None,
        *,
        head_cfg: HeadConfig | None = None,
        pretrained_backbone: bool = False,
        backbone_kwargs: dict[str, Any] | None = None,
        img_size: int | Sequence[int] | None = None,
        in_chans: int = 3,
        num_classes: int | None = None,
        global_pool: str | None = None,
        text_encoder_cfg: dict[str, Any] | None = None,
        trainable_text_encoder: bool = False,
        text_tower: nn.Module | None = None,
        thresholds: Sequence[float] | None = None,
        logit_adjustment: Sequence[float] | torch.Tensor | None = None,
        **head_args: Any,
    ) -> None:
        super().__init__()
        features_model = num_classes == 0
        if class_names is None and not features_model:
            raise ValueError("class_names is required: CPRFL builds one prompt per class name")
        names = [] if class_names is None else validate_class_inputs(class_names, text_embeddings)
        if num_classes not in (None, 0, len(names)):
            raise ValueError(
                f"num_classes={num_classes} disagrees with the {len(names)} class names given "
                "(CPRFL has one class per name; num_classes=0 builds a model without classes)"
            )
        if global_pool:
            raise ValueError(f"CPRFL does not pool its features; got global_pool={global_pool!r}")
        if not names and head_cfg is None and head_args.get("text_dim") is None:
            raise ValueError(
                "num_classes=0 without class_names needs text_dim=<width of the class text "
                "embeddings> (what set_classes(names, embeddings) will take later)"
            )
        width = None if text_embeddings is None else int(text_embeddings.shape[1])
        cfg = resolve_head_config(head_cfg, head_args, text_width=width)
        validate_head_args({"in_chans": in_chans})
        backbone_kwargs = dict(backbone_kwargs or {})
        check_backbone_kwargs(backbone_kwargs, "backbone_kwargs")
        if img_size is None and "img_size" in backbone_kwargs:  # saved as the model's img_size
            img_size = backbone_kwargs.pop("img_size")
        self.config = CPRFLConfig(
            backbone=backbone if isinstance(backbone, str) else None,  # type: ignore[arg-type]
            class_names=tuple(names),
            head=cfg,
            backbone_kwargs=backbone_kwargs,
            img_size=img_size if img_size is None or isinstance(img_size, int) else tuple(img_size),
            in_chans=in_chans,
            trainable_text_encoder=trainable_text_encoder or text_tower is not None,
        )
        if isinstance(backbone, str):
            backbone_kwargs = dict(backbone_kwargs)
            if img_size is not None:
                backbone_kwargs["img_size"] = img_size
            if in_chans != 3:
                backbone_kwargs["in_chans"] = in_chans
        self.backbone = create_backbone_checked(backbone, pretrained_backbone, backbone_kwargs)
        self.visual_proj = nn.Linear(self.backbone.num_features, cfg.embed_dim)
        self.prompt_init = PromptInit(
            cfg.text_dim, cfg.embed_dim, mlp_ratio=cfg.pi_mlp_ratio, linear=cfg.pi_linear
        )
        self.vsi = VSI(
            cfg.embed_dim,
            num_heads=cfg.num_heads,
            head_dim=cfg.head_dim,
            mlp_hidden_dim=cfg.mlp_hidden_dim,
            qkv_bias=cfg.qkv_bias,
            drop_rate=cfg.drop_rate,
            attn_drop_rate=cfg.attn_drop_rate,
        )
        if text_embeddings is None:
            text_embeddings = torch.zeros(len(names), cfg.text_dim)
        self.register_buffer("class_embeddings", text_embeddings.detach().float().clone())

        self.head_cfg = cfg
        self.class_names = names
        self.num_classes = len(names)
        self.num_features = self.backbone.num_features
        self.head_hidden_size = self.embed_dim = cfg.embed_dim
        self.text_dim = cfg.text_dim
        self.in_chans = in_chans
        if cfg.cosine_classifier:
            self.logit_scale = nn.Parameter(torch.tensor(math.log(COSINE_INIT_SCALE)))
            self.logit_bias = nn.Parameter(torch.zeros(()))
        self.grad_checkpointing = False
        self._thresholds: list[float] | None = None
        if thresholds is not None:
            self.set_thresholds(thresholds)
        # The offsets as saved (float64 values); ``logit_offset`` is their copy on the device.
        self._logit_adjustment: list[float] | None = None
        self.register_buffer("logit_offset", torch.zeros(len(names)), persistent=False)
        if logit_adjustment is not None:
            self.set_logit_adjustment(logit_adjustment)
        self.text_encoder_cfg = upgrade_text_encoder_cfg(text_encoder_cfg or {})
        if trainable_text_encoder and text_tower is None:
            from .text import TextTower

            text_tower = TextTower.from_config(self.text_encoder_cfg.get("text_tower"), len(names))
        if text_tower is not None and text_tower.text_dim != cfg.text_dim:
            raise ValueError(
                f"the text tower gives width {text_tower.text_dim}, but text_dim={cfg.text_dim}"
            )
        self.text_tower = text_tower
        self.class_embeddings_frozen = False
        self.feature_info = prefixed_feature_info(self.backbone)
        # timm's input traits (read by its data config and exporters) are the backbone's.
        self._traits = backbone_traits(self.backbone)
        self.pretrained_cfg: dict[str, Any] = self.backbone_data_config()
        self._init_head_weights()
        if features_model and names:
            self.reset_classifier(0)

    # The head options read in forward, as timm models keep theirs: views of head_cfg.
    @property
    def detach_classifier_prompts(self) -> bool:
        """Whether gradients through the classifier path ``p_i`` are stopped."""
        return self.head_cfg.detach_classifier_prompts

    @property
    def detach_refined_features(self) -> bool:
        """Whether gradients through the refined features ``p'_i`` are stopped."""
        return self.head_cfg.detach_refined_features

    @property
    def cosine_classifier(self) -> bool:
        """Whether the opt-in cosine classifier scores the classes."""
        return self.head_cfg.cosine_classifier

    # ------------------------------------------------------------------ construction helpers
    def _init_head_weights(self) -> None:
        for module in (self.visual_proj, self.prompt_init, self.vsi):
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5))
                    if m.bias is not None:
                        bound = 1 / math.sqrt(m.in_features)
                        nn.init.uniform_(m.bias, -bound, bound)

    def backbone_data_config(self) -> dict[str, Any]:
        """Return the backbone's preprocessing config (input size, mean, std, ...).

        Returns:
            A dict with timm's data-config keys, taken from the backbone's ``pretrained_cfg`` and
            its current input size.
        """
        cfg = dict(getattr(self.backbone, "pretrained_cfg", None) or {})
        out = {k: cfg[k] for k in _DATA_KEYS if cfg.get(k) is not None}
        size = getattr(getattr(self.backbone, "patch_embed", None), "img_size", None)
        if size is None and self.config.img_size is not None:
            size = self.config.img_size
        if size is not None:
            size = (size, size) if isinstance(size, int) else tuple(size)
            out["input_size"] = (self.in_chans, *size)
        elif "input_size" in out:
            out["input_size"] = (self.in_chans, *out["input_size"][1:])
        out["fixed_input_size"] = bool(cfg.get("fixed_input_size", False))
        return out

    @property
    def model_args(self) -> dict[str, Any]:
        """JSON-serialisable arguments that rebuild this architecture (without weights).

        Returns:
            :meth:`CPRFLConfig.to_model_args` of :meth:`current_config`.
        """
        return self.current_config().to_model_args()

    def current_config(self) -> CPRFLConfig:
        """The model's :class:`~cprfl_zoo.config.CPRFLConfig`, with its current classes.

        Returns:
            The config (class names, thresholds and text provenance as they are now).

        Raises:
            ValueError: For a model built on a backbone module instance, which no config
                describes, or a model without classes (``num_classes=0``).
        """
        if self.config.backbone is None:
            raise ValueError(
                "this CPRFL model was built from a backbone module instance, which cannot be "
                "described by a config; build it from a timm model name to save or share it"
            )
        self._require_classes("describe it by a config (to save or share it)")
        return self.config.replace(
            class_names=tuple(self.class_names),
            text_encoder_cfg=dict(self.text_encoder_cfg),
            thresholds=None if self._thresholds is None else tuple(self._thresholds),
            logit_adjustment=(
                None if self._logit_adjustment is None else tuple(self._logit_adjustment)
            ),
            trainable_text_encoder=self.text_tower is not None,
        )

    def _require_classes(self, action: str) -> None:
        if self.num_classes == 0:
            raise ValueError(
                f"this CPRFL model has no classes (num_classes=0, a features model), so it "
                f"cannot {action}; give it classes with set_classes(names, text_embeddings)"
            )

    @property
    def _model_args(self) -> dict[str, Any]:
        # timm's exporter reads reconstruction args from here; CPRFL keeps its own, complete set.
        # A module backbone has none; timm.create_model reads this too, so it must not raise.
        if self.config.backbone is None or self.num_classes == 0:
            return {}
        return self.model_args

    @_model_args.setter
    def _model_args(self, value: dict[str, Any]) -> None:
        pass

    # ------------------------------------------------------------------ class space
    def set_classes(
        self, class_names: Sequence[str], text_embeddings: torch.Tensor | None = None
    ) -> None:
        """Swap the label space without touching any trained weight.

        Every weight of CPRFL is shared across classes, so a trained model can score classes it
        never saw, given their text embeddings from the same text encoder.

        Args:
            class_names: New class names, in logit order.
            text_embeddings: Their embeddings (C', m), from the same text encoder. When omitted,
                they are computed (and cached) with the encoder ``text_encoder_cfg`` describes;
                with a trainable text tower, the new prompts are tokenised into it instead.
        """
        if self.text_tower is not None:
            if text_embeddings is not None:
                raise ValueError(
                    "this model encodes its class names with its trainable text tower; call "
                    "set_classes(names) without text_embeddings"
                )
            self.text_tower.set_class_names(validate_class_inputs(class_names))
            self.text_encoder_cfg["text_tower"] = self.text_tower.config
            with torch.no_grad():
                text_embeddings = self.text_tower().float()
        elif text_embeddings is None:
            from .text.encode import encode_class_names_from_config

            if not self.text_encoder_cfg.get("model_name"):
                raise ValueError(
                    "text_embeddings are needed: this model's text_encoder_cfg does not say "
                    "which text encoder produced its class embeddings"
                )
            text_embeddings, _ = encode_class_names_from_config(
                class_names, self.text_encoder_cfg, same_weights=True
            )
        names = validate_class_inputs(class_names, text_embeddings)
        if text_embeddings.shape[1] != self.text_dim:
            raise ValueError(
                f"text_embeddings have width {text_embeddings.shape[1]} but this model's PI "
                f"network expects text_dim={self.text_dim}"
            )
        buf = self.class_embeddings
        self.class_embeddings = text_embeddings.detach().to(buf.device, torch.float32).clone()
        self._set_class_names(names, "set_classes")

    def _set_class_names(self, names: list[str], caller: str) -> None:
        """Record a new label set; per-class settings of the old one are dropped, with a warning."""
        self.class_names = names
        self.num_classes = len(names)
        if self._thresholds is not None:
            _logger.warning(
                "%s: the %d calibrated thresholds belonged to the old classes and were "
                "dropped (every class now uses %s); calibrate again for the new classes",
                caller,
                len(self._thresholds),
                DEFAULT_THRESHOLD,
            )
            self._thresholds = None
        if self._logit_adjustment is not None:
            _logger.warning(
                "%s: the %d logit-adjustment offsets belonged to the old classes and were "
                "dropped; call set_logit_adjustment(...) with the new classes' priors",
                caller,
                len(self._logit_adjustment),
            )
            self._logit_adjustment = None
        self.logit_offset = torch.zeros(len(names), device=self.logit_offset.device)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Timm's classifier reset: ``0`` removes the classes; any other count is refused.

        CPRFL has no per-class weights: its classifier vectors are computed from the class
        names' text embeddings. So ``reset_classifier(0)`` drops the label set (names,
        embeddings, thresholds, logit adjustment) and keeps every weight; the model's
        ``forward`` then returns the pooled pre-logits (B, ``head_hidden_size``), as a timm model
        does after ``reset_classifier(0)``, and :meth:`set_classes` gives it classes again.
        ``reset_classifier(model.num_classes)`` changes nothing.

        Args:
            num_classes: 0, or the current number of classes.
            global_pool: ``None`` or ``"avg"`` (the pre-logits are the average over the image's
                tokens; no other pooling exists).

        Raises:
            ValueError: For another class count (the classes come from names: call
                ``set_classes(names, text_embeddings)``), or another ``global_pool``.
        """
        if global_pool not in (None, "avg"):
            raise ValueError(
                f"global_pool={global_pool!r}: CPRFL's pre-logits are always the average of the "
                "projected image tokens (global_pool='avg'); for unpooled tokens use "
                "forward_features(x), or model.visual_proj(model.forward_features(x))"
            )
        if num_classes == self.num_classes:
            return
        if num_classes != 0:
            raise ValueError(
                f"reset_classifier({num_classes!r}): a CPRFL model's classes come from their "
                "names (one prompt per name, no per-class weight), so a class count alone "
                "cannot define them; call set_classes(names, text_embeddings) for a new label "
                "set, or reset_classifier(0) for a model without classes"
            )
        self.class_embeddings = self.class_embeddings.new_zeros(0, self.text_dim)
        self._set_class_names([], "reset_classifier(0)")
        if self.text_tower is not None:
            _logger.warning(
                "reset_classifier(0): the trainable text tower is kept; set_classes(names) "
                "encodes new class names with it"
            )

    # ------------------------------------------------------------------ thresholds
    @property
    def thresholds(self) -> list[float] | None:
        """Per-class probability thresholds in logit order, or ``None`` when not calibrated."""
        return None if self._thresholds is None else list(self._thresholds)

    def get_thresholds(self) -> torch.Tensor:
        """Return the decision thresholds as a float32 (C,) tensor of probabilities.

        A class is predicted when ``sigmoid(logit) >= threshold``. An uncalibrated model uses
        :data:`~cprfl_zoo.thresholds.DEFAULT_THRESHOLD` (0.5) for every class.

        Returns:
            The thresholds, on the CPU.
        """
        if self._thresholds is None:
            return torch.full((self.num_classes,), DEFAULT_THRESHOLD, dtype=torch.float32)
        return torch.tensor(self._thresholds, dtype=torch.float32)

    def set_thresholds(self, values: float | Sequence[float] | torch.Tensor | None) -> None:
        """Set the per-class decision thresholds (saved with the model, shown in its card).

        Args:
            values: ``num_classes`` probabilities in [0, 1] in logit order (e.g.
                ``calibrate_thresholds(logits, targets).as_list()``), one number for every
                class, or ``None`` to go back to the uncalibrated 0.5.

        Raises:
            ValueError: If the length is not ``num_classes`` or a value is not a finite number
                in [0, 1].
        """
        if values is None:
            self._thresholds = None
            return
        self._thresholds = validate_thresholds(values, self.num_classes)

    # ------------------------------------------------------------------ logit adjustment
    @property
    def logit_adjustment(self) -> list[float] | None:
        """Per-class offsets subtracted from the logits, in logit order, or ``None``."""
        return None if self._logit_adjustment is None else list(self._logit_adjustment)

    def set_logit_adjustment(self, offset: Sequence[float] | torch.Tensor | Any | None) -> None:
        """Carry a post-hoc logit adjustment: every logit becomes ``logit_i - offset_i``.

        Menon et al.'s post-hoc correction (ICLR 2021) with the convention of
        :class:`cprfl_zoo.losses.LogitAdjustment`: ``offset = tau * log(pi / (1 - pi))`` for
        class priors ``pi`` (:func:`cprfl_zoo.losses.logit_adjustment_offset`). The adjusted
        logits are what ``forward`` returns, so :meth:`predict`, evaluation, threshold
        calibration, :meth:`deploy` (folded into the classifier bias) and the exported files
        all use them; ``config.json`` saves the offsets. A per-class shift changes thresholded
        metrics (F1 at fixed thresholds) but no class's AP, so not the mAP. Calibrate the
        thresholds after setting it. :meth:`set_classes` drops it, with a warning.

        Args:
            offset: ``num_classes`` finite numbers in logit order, a
                :class:`~cprfl_zoo.losses.LogitAdjustment` (its ``offset``), or ``None`` to
                remove the adjustment.

        Raises:
            ValueError: If the length is not ``num_classes`` or a value is not finite.
        """
        if offset is None:
            self._logit_adjustment = None
            self.logit_offset = torch.zeros_like(self.logit_offset)
            return
        if isinstance(offset, nn.Module):
            offset = getattr(offset, "offset", offset)
        values = check_logit_offsets(offset, self.num_classes)
        self._logit_adjustment = values
        device = self.logit_offset.device
        self.logit_offset = torch.tensor(values, dtype=self.logit_offset.dtype, device=device)

    def get_class_embeddings(self) -> torch.Tensor:
        """Return the class embeddings W (C, m) used by the PI network.

        With a trainable text tower they are re-encoded from the class prompts on every call,
        unless :meth:`freeze_class_embeddings` stored them.
        """
        if self.text_tower is not None and not self.class_embeddings_frozen:
            return self.text_tower()
        return self.class_embeddings

    @torch.no_grad()
    def freeze_class_embeddings(self) -> torch.Tensor:
        """Encode the class prompts once and use the result until the next ``train()``.

        For inference with a trainable text tower: call it after ``model.eval()`` so each batch
        does not re-encode the prompts. Without a text tower the embeddings are fixed anyway.

        Returns:
            The class embeddings W (C, m), also stored in the ``class_embeddings`` buffer.
        """
        if self.text_tower is not None:
            self.class_embeddings.copy_(self.text_tower().float())
            self.class_embeddings_frozen = True
        return self.class_embeddings

    def train(self, mode: bool = True) -> CPRFL:
        """Set training mode; entering it re-enables re-encoding by a trainable text tower.

        Args:
            mode: Training (``True``) or evaluation (``False``) mode.

        Returns:
            The model.
        """
        if mode:
            self.class_embeddings_frozen = False
        return super().train(mode)

    def get_prompts(self) -> torch.Tensor:
        """Return the category prompts P = PI(W), shape (C, d)."""
        return self.prompt_init(self.get_class_embeddings())

    # ------------------------------------------------------------------ timm API
    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Enable activation checkpointing in the backbone, the VSI and a trainable text tower."""
        self.grad_checkpointing = enable
        for _, module in self._submodels():
            if hasattr(module, "set_grad_checkpointing"):
                module.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay: the backbone's and text tower's own lists."""
        names: set[str] = set()
        for prefix, module in self._submodels():
            fn = getattr(module, "no_weight_decay", None)
            if callable(fn):
                names |= {f"{prefix}.{n}" for n in fn()}
        return names

    def _submodels(self) -> list[tuple[str, nn.Module]]:
        """The pretrained submodules that carry timm / open_clip training hooks, by prefix."""
        subs: list[tuple[str, nn.Module]] = [("backbone", self.backbone)]
        if self.text_tower is not None:
            subs.append(("text_tower.text", self.text_tower.text))
        return subs

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any] | Callable[[str], Any]:
        """Parameter groups for timm's optimiser helpers (layer decay): the backbone's, then head.

        The backbone's own ``group_matcher`` (stem, then each block or stage), with every
        pattern moved under ``backbone.``; the CPRFL head (and a trainable text tower) matches
        none, which timm puts in the last group, as it does a classifier head. So
        ``param_groups_layer_decay`` decays a ViT block by block and leaves the head at the
        full learning rate. A backbone without ``group_matcher`` is one group.

        Args:
            coarse: Passed to the backbone's ``group_matcher`` (stages instead of blocks).

        Returns:
            A dict of group name to regex (or list of ``(regex, suffix)``), in group order, or
            a callable for a backbone whose matcher is one.
        """
        matcher = getattr(self.backbone, "group_matcher", None)
        if not callable(matcher):
            return {"backbone": r"^backbone\."}
        groups = matcher(coarse=coarse)
        if callable(groups):
            return prefixed_matcher_fn(groups)
        out: dict[str, Any] = {}
        for name, spec in groups.items():
            if spec is None or isinstance(spec, str):
                out[name] = spec if spec is None else under_backbone(spec)
            else:
                out[name] = [(under_backbone(regex), suffix) for regex, suffix in spec]
        return out

    def get_classifier(self) -> nn.Module:
        """The module that maps class embeddings to the classifier weights (the PI network)."""
        return self.prompt_init

    def _check_input(self, x: torch.Tensor) -> None:
        if not fx_tracing():
            # after prune_intermediate_layers the head is gone; the backbone's dtype is the same
            weight = getattr(self.visual_proj, "weight", None)
            if weight is None:
                weight = next(self.backbone.parameters())
            check_images(x, self.in_chans, weight.dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Compute the backbone's local tokens, as timm's ``forward_features`` does.

        Prefix (class / register) tokens are dropped and feature maps are flattened; the head
        (φ, PI, VSI, classifier) runs in :meth:`forward_head`.

        Args:
            x: Images (B, in_chans, H, W).

        Returns:
            Backbone tokens (B, v, d0), d0 = ``num_features`` (the backbone's width).
        """
        self._check_input(x)
        features = self.backbone.forward_features(x)
        if fx_tracing():
            layout, prefix = feature_layout(self.backbone), num_prefix_tokens(self.backbone)
            return traced_tokens(features, self.num_features, layout, prefix)
        return backbone_tokens(self.backbone, features)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Project the backbone tokens (φ), refine the prompts with them (VSI), score every class.

        Args:
            x: Backbone tokens (B, v, d0) from :meth:`forward_features` (or precomputed with
                :func:`~cprfl_zoo.backbone.backbone_tokens`).
            pre_logits: Return timm's pre-logits instead: the average of the projected tokens
                φ(F), (B, ``head_hidden_size``), the image's one class-independent vector of
                head width (what ``forward`` returns after ``reset_classifier(0)``). The
                category-specific features P' (B, C, d) are :meth:`forward_refined`'s.

        Returns:
            Logits (B, C) (minus the logit adjustment, when the model carries one), or the
            pre-logits (B, d) when ``pre_logits`` or the model has no classes.

        Raises:
            ValueError: If ``x`` is not (B, v, num_features).
        """
        if pre_logits or self.num_classes == 0:
            if not fx_tracing():
                check_tokens(x, self.visual_proj.in_features)
            return self.visual_proj(x).mean(dim=1)
        prompts = self.get_prompts()
        refined = self._refine(x, prompts)
        if self.detach_refined_features:
            refined = refined.detach()
        classifier = prompts.detach() if self.detach_classifier_prompts else prompts
        weight, bias = self.classifier_weights(classifier.to(refined.dtype))
        if self.cosine_classifier:
            refined = refined / refined.norm(dim=-1, keepdim=True).clamp_min(COSINE_EPS)
        return (refined * weight).sum(-1) + bias

    def forward_refined(self, x: torch.Tensor) -> torch.Tensor:
        """Return the category-specific features P' = VSI([φ(F); P]) at the prompt rows.

        Args:
            x: Backbone tokens (B, v, d0) from :meth:`forward_features`.

        Returns:
            P' (B, C, d), the features each class's classifier vector scores.

        Raises:
            ValueError: If ``x`` is not (B, v, num_features), or the model has no classes.
        """
        self._require_classes("refine class prompts")
        return self._refine(x, self.get_prompts())

    def _refine(self, x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        if fx_tracing():
            check_fx_leaf(x, self.vsi.attn)
        else:
            check_tokens(x, self.visual_proj.in_features)
        x = self.visual_proj(x)
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(self.vsi, x, prompts)
        return self.vsi(x, prompts)

    def classifier_weights(self, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The classifier vectors w_i and biases b_i that score P': ``logit_i = w_i · p'_i + b_i``.

        The one place the classifier options are computed; :meth:`forward_head` and
        :meth:`deploy` both use it. With ``cosine_classifier``, ``p'_i`` is normalised first.

        * the paper: ``w_i = p_i``, ``b_i = 0``;
        * ``classifier_tau`` τ > 0 (Kang et al., 2020): ``w_i = p_i / |p_i|^τ``;
        * ``cosine_classifier``: ``w_i = s · p_i / |p_i|``, ``b_i = b`` (learned ``s``, ``b``);

        and a logit adjustment (:meth:`set_logit_adjustment`) subtracts its offset from b_i.
        Norms are clamped below at :data:`~cprfl_zoo.head_config.COSINE_EPS`.

        Args:
            prompts: The category prompts P (C, d) (e.g. :meth:`get_prompts`).

        Returns:
            ``(weight, bias)``: (C, d) and (C,), in the prompts' dtype.
        """
        bias = -self.logit_offset.to(prompts.dtype)
        if self.cosine_classifier:
            norm = prompts.norm(dim=-1, keepdim=True).clamp_min(COSINE_EPS)
            scale = self.logit_scale.exp().to(prompts.dtype)
            return scale * prompts / norm, bias + self.logit_bias.to(prompts.dtype)
        tau = self.head_cfg.classifier_tau
        if tau:
            norm = prompts.norm(dim=-1, keepdim=True).clamp_min(COSINE_EPS)
            return prompts / norm.pow(tau), bias
        return prompts, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute raw logits; ``torch.sigmoid`` of them are the class probabilities.

        Args:
            x: Images (B, in_chans, H, W).

        Returns:
            Logits (B, C) (minus the logit adjustment, when the model carries one); for a model
            without classes, the pre-logits (B, ``head_hidden_size``).
        """
        return self.forward_head(self.forward_features(x))

    # ------------------------------------------------------------------ timm feature API
    def forward_intermediates(
        self, x: torch.Tensor, *args: Any, **kwargs: Any
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The backbone's ``forward_intermediates``; the final output is :meth:`forward_features`'s.

        Args:
            x: Images (B, in_chans, H, W).
            *args: The backbone's arguments (``indices``, ``norm``, ``stop_early``,
                ``output_fmt``, ``intermediates_only``, ...).
            **kwargs: The same, by name.

        Returns:
            As the backbone's: the intermediate feature maps, or ``(tokens, intermediates)``
            where ``tokens`` are the local tokens (B, v, d0) of :meth:`forward_features`.

        Raises:
            NotImplementedError: If the backbone has no ``forward_intermediates``.
        """
        self._check_input(x)
        out = self._backbone_method("forward_intermediates")(x, *args, **kwargs)
        if isinstance(out, tuple):
            final, intermediates = out
            return backbone_tokens(self.backbone, final), intermediates
        return out

    def prune_intermediate_layers(self, *args: Any, **kwargs: Any) -> Any:
        """Prune the backbone after its last wanted intermediate, as timm's feature wrapper does.

        With ``prune_head`` (timm's default) the CPRFL head goes as well: the model then only
        serves :meth:`forward_intermediates` (``features_only=True``).

        Args:
            *args: The backbone's arguments (``indices``, ``prune_norm``, ``prune_head``).
            **kwargs: The same, by name.

        Returns:
            What the backbone's returns (the kept indices).

        Raises:
            NotImplementedError: If the backbone has no ``prune_intermediate_layers``.
        """
        kwargs = dict(kwargs)
        prune_head = kwargs.pop("prune_head", True)
        out = self._backbone_method("prune_intermediate_layers")(*args, **kwargs, prune_head=True)
        if prune_head:
            self.visual_proj = self.prompt_init = self.vsi = nn.Identity()
            self.text_tower = None
            self.reset_classifier(0)
        return out

    def _backbone_method(self, name: str) -> Callable[..., Any]:
        method = getattr(self.backbone, name, None)
        if not callable(method):
            raise NotImplementedError(
                f"{name}: the backbone {type(self.backbone).__name__} has no {name}(), so this "
                "CPRFL model has none (nor features_only=True); timm gives it to most families"
            )
        return method

    def __prepare_scriptable__(self) -> CPRFL:
        """Refuse TorchScript with the reason (``torch.jit.script`` calls this first).

        Raises:
            RuntimeError: Always.
        """
        raise RuntimeError(
            "CPRFL does not support TorchScript (torch.jit.script): its forward checks its "
            "inputs and picks attention kernels with Python that TorchScript cannot compile, "
            "and PyTorch has deprecated TorchScript. Use torch.export or ONNX "
            "(cprfl_zoo.export, or model.deploy() with torch.export.export), torch.compile, or "
            "torch.jit.trace"
        )

    # ------------------------------------------------------------------ prediction
    def predict(
        self,
        images: Any,
        thresholds: float | Sequence[float] | torch.Tensor | None = None,
        *,
        transform: Any = None,
        batch_size: int = 32,
    ) -> list[Prediction]:
        """Predict the labels of images: sigmoid probabilities at the model's thresholds.

        See :func:`cprfl_zoo.predict.predict`; for many files use
        :class:`~cprfl_zoo.predict.Predictor` or ``cprfl-zoo predict``.

        Args:
            images: PIL images, image paths, or a preprocessed ``(B, C, H, W)`` tensor.
            thresholds: Probability thresholds for this call, one number or one per class
                (default: :meth:`get_thresholds`).
            transform: Preprocessing of PIL images (default: timm's eval transform for the
                model's data config).
            batch_size: Images per forward pass.

        Returns:
            One :class:`~cprfl_zoo.predict.Prediction` per image (``labels``,
            ``probabilities``, ``indices``, in logit order).
        """
        self._require_classes("predict labels")
        return predict(self, images, thresholds, transform=transform, batch_size=batch_size)

    # ------------------------------------------------------------------ deployment
    def deploy(self) -> DeployedCPRFL:
        """Return an inference-only copy for the current label set, with the same logits.

        Everything that does not depend on the image (prompts, their LayerNorm, queries,
        keys/values, the prompt-to-prompt attention and the classifier vectors) is computed once;
        see :class:`~cprfl_zoo.deploy.DeployedCPRFL`. This model is left unchanged. After
        :meth:`set_classes` or more training, call ``deploy()`` again.

        Returns:
            The deployed module, in eval mode; export it with :mod:`cprfl_zoo.export`.
        """
        self._require_classes("be deployed")
        return DeployedCPRFL(self)

    # ------------------------------------------------------------------ sharing
    def save_pretrained(
        self,
        save_directory: str | os.PathLike[str],
        *,
        repo_id: str | None = None,
        metrics: Mapping[str, float] | None = None,
        model_card: Mapping[str, Any] | None = None,
    ) -> Path:
        """Save as ``config.json`` + ``model.safetensors`` + ``README.md`` (timm's hub format).

        See :func:`cprfl_zoo.hub.save_pretrained`.

        Args:
            save_directory: The folder to write.
            repo_id: Hub repository id shown in the model card's loading snippet.
            metrics: Evaluation results for the model card, e.g. ``{"mAP": 56.3}``.
            model_card: Extra model card fields (``description``, ``dataset``, ...).

        Returns:
            The folder path.
        """
        return save_pretrained(
            self, save_directory, repo_id=repo_id, metrics=metrics, model_card=model_card
        )

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload to the Hugging Face Hub; see :func:`cprfl_zoo.hub.push_to_hub`.

        Args:
            repo_id: ``"user/repo"``.
            **kwargs: ``token``, ``private``, ``revision``, ``commit_message``, ``create_pr``,
                ``metrics``, ``model_card``.

        Returns:
            huggingface_hub's ``CommitInfo`` of the upload.
        """
        return push_to_hub(self, repo_id, **kwargs)

    @classmethod
    def from_pretrained(
        cls, repo_id_or_path: str | os.PathLike[str], revision: str | None = None, **kwargs: Any
    ) -> CPRFL:
        """Load a saved model from a folder or the Hub; see :func:`cprfl_zoo.hub.load_pretrained`.

        Args:
            repo_id_or_path: A folder, ``"user/repo"`` or ``"user/repo@revision"``.
            revision: Hub branch, tag or commit.
            **kwargs: ``cache_dir``, ``verify_checksum`` (default on: check ``model.safetensors``
                against the SHA-256 in ``config.json``) and arguments for ``timm.create_model``.

        Returns:
            The model (in training mode, as timm returns models).
        """
        return load_pretrained(repo_id_or_path, revision, **kwargs)
