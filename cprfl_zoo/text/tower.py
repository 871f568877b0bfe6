"""The open_clip side of the text encoder: its model registry and the text tower.

This is the one module of :mod:`cprfl_zoo.text` that imports open_clip, always inside a
function, so that ``import cprfl_zoo`` stays light.

:class:`TextTower` is the text half of an open_clip model. It computes the class embeddings once
(:func:`~cprfl_zoo.text.encode_class_names`) and is the trainable text encoder of the official
code's mode, where it is a submodule of the model and re-encodes the prompts, tokenised once, on
every training step. For that step the token context is trimmed to the longest prompt: CLIP's
text transformer is causal and reads the end-of-text token, so the result is unchanged while the
work shrinks (COCO's prompts need 8 of the 77 positions).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from .templates import DEFAULT_TEMPLATES, build_prompts, check_templates, combine_templates
from .weights import hf_file_cached


class TowerRequest(Protocol):
    """What :func:`load_text_tower` reads of a :class:`~cprfl_zoo.text.TextConfig`."""

    model_name: str
    pretrained: str | None
    templates: tuple[str, ...]
    normalize: bool


_logger = logging.getLogger(__name__)

__all__ = [
    "TextTower",
    "hub_weights_cached",
    "hub_weights_location",
    "is_pretrained_tag",
    "load_text_tower",
    "model_names",
    "open_clip_version",
    "pretrained_tags",
    "text_arch",
]


@contextlib.contextmanager
def _no_implicit_logging_setup() -> Iterator[None]:
    """Keep open_clip from setting up the application's logging.

    open_clip logs through the root logger's module functions (``logging.info(...)``), which
    call ``logging.basicConfig()`` when the root logger has no handler. From then on every record
    of every library is printed by that handler too: huggingface_hub's, which have their own
    handler, twice. A do-nothing handler on the root logger for the call prevents it.
    """
    root = logging.getLogger()
    if root.handlers:
        yield
        return
    handler = logging.NullHandler()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


# ---------------------------------------------------------------------- the open_clip registry
def model_names() -> list[str]:
    """Return the model names open_clip knows (built-in and registered configs).

    Returns:
        The names.
    """
    import open_clip

    return open_clip.list_models()


def pretrained_tags(model_name: str) -> list[str]:
    """Return the pretrained tags open_clip has for a model name.

    Args:
        model_name: An open_clip model name.

    Returns:
        The tags, such as ``["openai", "yfcc15m"]``.
    """
    import open_clip

    return open_clip.list_pretrained_tags_by_model(model_name)


def is_pretrained_tag(model_name: str, tag: str) -> bool:
    """Return whether ``tag`` names pretrained weights of ``model_name`` in open_clip.

    Args:
        model_name: An open_clip model name.
        tag: A tag, in any case, with ``-`` or ``_``.

    Returns:
        ``True`` for a known tag.
    """
    import open_clip

    return bool(open_clip.get_pretrained_cfg(model_name, tag))


def open_clip_version() -> str:
    """Return the installed open_clip version, as recorded with the embeddings.

    Returns:
        The version string.
    """
    import open_clip

    return open_clip.__version__


def _hub_weights_files(
    model_name: str, pretrained: str | None
) -> tuple[list[tuple[str, list[str]]], str]:
    """The Hub files open_clip loads for these weights, and the URL it falls back to.

    Returns:
        ``[(repo, candidate file names), ...]``, every entry needed (any candidate of each),
        and the download URL of URL-hosted weights (``""`` if none).
    """
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if model_name.startswith("hf-hub:"):
        repo = model_name[len("hf-hub:") :]
        return [
            (repo, ["open_clip_config.json"]),
            (repo, [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]),
        ], ""
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained or "")
    files = []
    if cfg.get("hf_hub"):
        # open_clip's convention: "org/repo/" means the default file, "org/repo/file" a file.
        repo, filename = os.path.split(cfg["hf_hub"])
        filename = filename or HF_WEIGHTS_NAME
        names = [filename]
        if filename == HF_WEIGHTS_NAME:
            names.insert(0, HF_SAFE_WEIGHTS_NAME)
        elif filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        files.append((repo, names))
    return files, cfg.get("url", "")


def hub_weights_cached(model_name: str, pretrained: str | None) -> bool:
    """Return whether open_clip would find these hub weights without the network.

    Args:
        model_name: An open_clip model name or ``hf-hub:`` id.
        pretrained: The pretrained tag of a model name; ``None`` for ``hf-hub:``.

    Returns:
        ``True`` when the weights are in the local Hugging Face cache (or, for weights that
        open_clip downloads from a URL, in its ``~/.cache/clip`` folder).
    """
    files, url = _hub_weights_files(model_name, pretrained)
    if files and all(hf_file_cached(repo, names) for repo, names in files):
        return True
    return bool(url) and os.path.isfile(
        os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
    )


def hub_weights_location(model_name: str, pretrained: str | None) -> str:
    """Name the files open_clip downloads for these weights, for error messages.

    Args:
        model_name: An open_clip model name or ``hf-hub:`` id.
        pretrained: The pretrained tag of a model name; ``None`` for ``hf-hub:``.

    Returns:
        E.g. ``"open_clip_model.safetensors or open_clip_pytorch_model.bin of
        https://huggingface.co/timm/resnet50_clip.openai"``, or the URL of URL-hosted weights.
    """
    files, url = _hub_weights_files(model_name, pretrained)
    if not files:
        return url or f"the weights of {model_name} ({pretrained})"
    return "; ".join(
        f"{' or '.join(names)} of https://huggingface.co/{repo}" for repo, names in files
    )


# ---------------------------------------------------------------------- the text tower
def _build_text_module(arch: Mapping[str, Any]) -> nn.Module:
    # open_clip's own builder, so every text-tower option of its configs is honoured.
    from open_clip.model import _build_text_tower

    return _build_text_tower(
        int(arch["embed_dim"]), copy.deepcopy(dict(arch["text_cfg"])), bool(arch["quick_gelu"])
    )


def text_arch(model_name: str) -> dict[str, Any]:
    """Return the text-tower part of an open_clip model config.

    Args:
        model_name: An open_clip model name.

    Returns:
        ``{"embed_dim", "quick_gelu", "text_cfg"}``, a copy.

    Raises:
        ValueError: If open_clip has no config (with a text tower) of that name.
    """
    import open_clip

    cfg = open_clip.get_model_config(model_name)
    if cfg is None or "text_cfg" not in cfg:
        raise ValueError(f"no open_clip model config found for {model_name!r}")
    return {
        "embed_dim": int(cfg["embed_dim"]),
        "quick_gelu": bool(cfg.get("quick_gelu", False)),
        "text_cfg": copy.deepcopy(cfg["text_cfg"]),
    }


class TextTower(nn.Module):
    """The text half of an open_clip model, with the tokenised class prompts as a buffer.

    ``encode(tokens)`` maps any tokens to text features; ``forward()`` encodes the stored prompts
    and returns the class embeddings (C, m). For open_clip's causal text transformers that pool a
    token position (the end-of-text token), the context is trimmed to the longest prompt; other
    towers (SigLIP's bidirectional one, Hugging Face text models) run on the full context.

    Args:
        arch: ``{"embed_dim", "quick_gelu", "text_cfg"}`` of the open_clip model config.
        model_name: open_clip model name whose tokenizer builds the prompts.
        templates: Prompt templates, each with one ``{}``.
        normalize: L2-normalise the class embeddings (required with several templates).
        num_classes: Number of classes the token buffer is sized for.
        token_length: Width of the token buffer (default: the model's context length).
        text: An existing text module (sharing its weights); built from ``arch`` when omitted.
    """

    def __init__(
        self,
        arch: Mapping[str, Any],
        *,
        model_name: str,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        normalize: bool = False,
        num_classes: int = 0,
        token_length: int | None = None,
        text: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.arch = copy.deepcopy(dict(arch))
        self.model_name = model_name
        self.templates = check_templates(templates)
        if not normalize and len(self.templates) > 1:
            raise ValueError("averaging several templates needs normalize=True")
        self.normalize = bool(normalize)
        self.text = text if text is not None else _build_text_module(self.arch)
        self.context_length = int(self.arch["text_cfg"].get("context_length", 77))
        length = int(token_length or self.context_length)
        self.register_buffer(
            "tokens", torch.zeros(len(self.templates) * num_classes, length, dtype=torch.long)
        )
        self._tokenizer: Any = None

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_open_clip(
        cls,
        model: nn.Module,
        arch: Mapping[str, Any],
        *,
        model_name: str,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        normalize: bool = False,
    ) -> TextTower:
        """Take the text tower of a loaded open_clip model, sharing its weights.

        Args:
            model: An open_clip ``CLIP``, ``CustomTextCLIP`` or ``CoCa``.
            arch: Its ``{"embed_dim", "quick_gelu", "text_cfg"}``.
            model_name: The open_clip model name whose tokenizer fits it.
            templates: Prompt templates.
            normalize: L2-normalise the class embeddings.

        Returns:
            The tower; dropping ``model`` afterwards frees the image tower.
        """
        text = getattr(model, "text", None)
        if text is None:
            # open_clip's CLIP keeps the text parts at its top level; gather them in a text
            # transformer built on the meta device, adopting (not copying) the loaded tensors.
            parts = ("token_embedding", "positional_embedding", "transformer", "ln_final")
            parts += ("text_projection",)
            with torch.device("meta"):
                text = _build_text_module(arch)
            state = {k: v for k, v in model.state_dict().items() if k.split(".", 1)[0] in parts}
            text.load_state_dict(state, strict=True, assign=True)
            if getattr(text, "attn_mask", None) is not None:
                text.attn_mask = model.attn_mask
        return cls(arch, model_name=model_name, templates=templates, normalize=normalize, text=text)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None, num_classes: int) -> TextTower:
        """Build an empty tower (random weights, zero tokens) from :attr:`config`.

        Args:
            config: A tower's :attr:`config`, as saved in ``text_encoder_cfg["text_tower"]``.
            num_classes: Number of classes.

        Returns:
            The tower, ready for ``load_state_dict``.

        Raises:
            ValueError: If ``config`` is missing or incomplete.
        """
        needed = ("arch", "tokenizer", "templates", "normalize", "token_length")
        if not isinstance(config, Mapping) or any(k not in config for k in needed):
            raise ValueError(
                "trainable_text_encoder=True needs the text tower's architecture "
                "(text_encoder_cfg['text_tower'] with keys " + ", ".join(needed) + "); create "
                "the model with create_cprfl(..., trainable_text_encoder=True) and no "
                "text_embeddings, so that the CLIP text tower is loaded"
            )
        return cls(
            config["arch"],
            model_name=config["tokenizer"],
            templates=config["templates"],
            normalize=config["normalize"],
            num_classes=num_classes,
            token_length=int(config["token_length"]),
        )

    @property
    def config(self) -> dict[str, Any]:
        """JSON-able description that rebuilds this tower with :meth:`from_config`."""
        return {
            "arch": copy.deepcopy(self.arch),
            "tokenizer": self.model_name,
            "templates": list(self.templates),
            "normalize": self.normalize,
            "token_length": int(self.tokens.shape[1]),
        }

    @property
    def text_dim(self) -> int:
        """Width m of the text features."""
        return int(self.arch["embed_dim"])

    @property
    def is_text_transformer(self) -> bool:
        """Whether the text module is open_clip's own ``TextTransformer``."""
        from open_clip.transformer import TextTransformer

        return isinstance(self.text, TextTransformer)

    @property
    def trimmable(self) -> bool:
        """Whether the context can be trimmed without changing the result."""
        text = self.text
        return (
            self.is_text_transformer
            and text.cls_emb is None
            and text.attn_mask is not None
            and not text.use_pad_mask
            and text.pool_type in ("argmax", "eos")
        )

    # ---------------------------------------------------------------- tokens
    def _pooled_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.text.pool_type == "argmax":
            return tokens.argmax(dim=-1)
        return (tokens == self.text.eos_id).int().argmax(dim=-1)

    def needed_lengths(self, tokens: torch.Tensor) -> torch.Tensor:
        """Return how many leading positions of each token row the result depends on.

        Args:
            tokens: (N, L) token ids.

        Returns:
            (N,) lengths; all ``L`` when the tower cannot be trimmed.
        """
        if not self.trimmable:
            return torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.long)
        return self._pooled_positions(tokens) + 1

    def tokenize(self, class_names: Sequence[str]) -> torch.Tensor:
        """Tokenise the prompts of these classes, trimmed to the longest when possible.

        Args:
            class_names: The C class names.

        Returns:
            (T*C, L) token ids, template-major.
        """
        if self._tokenizer is None:
            import open_clip

            with _no_implicit_logging_setup():
                self._tokenizer = open_clip.get_tokenizer(
                    self.model_name, context_length=self.context_length
                )
        tokens = self._tokenizer(build_prompts(class_names, self.templates)).long()
        if self.trimmable and len(tokens):
            tokens = tokens[:, : int(self.needed_lengths(tokens).max())]
        return tokens.contiguous()

    def set_class_names(self, class_names: Sequence[str]) -> None:
        """Tokenise and store the prompts of new classes.

        Args:
            class_names: The class names, in logit order.
        """
        self.tokens = self.tokenize(class_names).to(self.tokens.device)

    # ---------------------------------------------------------------- encoding
    def _encode_prefix(self, tokens: torch.Tensor) -> torch.Tensor:
        from open_clip.transformer import text_global_pool

        text = self.text
        n = tokens.shape[1]
        cast_dtype = text.transformer.get_cast_dtype()
        x = text.token_embedding(tokens).to(cast_dtype)
        x = x + text.positional_embedding[:n].to(cast_dtype)
        x = text.transformer(x, attn_mask=text.attn_mask[:n, :n])
        x = text.ln_final(x)
        x = text_global_pool(x, tokens, text.pool_type, eos_token_id=text.eos_id)
        if isinstance(text.text_projection, nn.Linear):
            x = text.text_projection(x)
        elif text.text_projection is not None:
            x = x @ text.text_projection
        return x

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encode token rows into text features, trimming the context when possible.

        Args:
            tokens: (N, L) token ids.

        Returns:
            (N, m) features: the pooled token's feature after the text projection.
        """
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape (N, L), got {tuple(tokens.shape)}")
        if not self.trimmable:
            out = self.text(tokens)
            return out[0] if isinstance(out, tuple) else out
        if tokens.shape[0] == 0:
            return tokens.new_zeros((0, self.text_dim), dtype=torch.float32)
        return self._encode_prefix(tokens[:, : int(self.needed_lengths(tokens).max())])

    def forward(self) -> torch.Tensor:
        """Encode the stored prompts into class embeddings.

        Returns:
            (C, m) class embeddings.
        """
        # The buffer is already trimmed, so no length is computed (and no device sync happens).
        feats = self._encode_prefix(self.tokens) if self.trimmable else self.encode(self.tokens)
        return combine_templates(feats, len(self.templates), self.normalize)


def load_text_tower(config: TowerRequest) -> TextTower:
    """Load an open_clip model's weights and keep only its text tower.

    Args:
        config: The resolved text configuration (an open_clip model, not a callable).

    Returns:
        The tower on the CPU, in eval mode, with no prompts stored yet.

    Raises:
        RuntimeError: If open_clip cannot load the weights.
    """
    import open_clip

    _logger.info("loading the text tower of %s (%s)", config.model_name, config.pretrained)
    with _no_implicit_logging_setup():
        model = open_clip.create_model(
            config.model_name,
            pretrained=config.pretrained,
            require_pretrained=True,
            weights_only=True,
        )
    tower = TextTower.from_open_clip(
        model,
        text_arch(config.model_name),
        model_name=config.model_name,
        templates=config.templates,
        normalize=config.normalize,
    )
    del model  # the image tower goes with it; the tower holds only the text weights
    return tower.eval()
