"""Class names to CLIP text embeddings, computed once and cached on disk.

CPRFL initialises its category prompts from text embeddings W (C, m) of the class names. By
default they reproduce the official code: the OpenAI CLIP RN50 text tower with QuickGELU
(open_clip ``"RN50-quickgelu"``, tag ``"openai"``), the prompt ``"a photo of a {}."`` with
underscores in the names turned into spaces, and the end-of-text token's feature after
``text_projection``, not normalised. Any open_clip model name and tag, ``hf-hub:`` id,
``local-dir:`` folder or local checkpoint file works, as does any callable mapping names to a
(C, m) tensor.

Only the text tower is kept: the image tower is freed as soon as the model is loaded. The token
context is trimmed to the longest prompt of each batch before encoding; CLIP's text transformer is
causal and reads the end-of-text token, so the result is unchanged while the work shrinks (COCO's
prompts need 8 of the 77 positions).

:class:`TextTower` is also the trainable text encoder of the official code's mode, where the tower
is a submodule of the model and re-encodes the (tokenised once) prompts on every training step.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import logging
import os
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .classes import validate_class_inputs
from .fileio import file_sha256
from .text_cache import (
    CACHE_ENV,
    cache_file_name,
    read_cache_entry,
    resolve_cache_dir,
    write_cache_entry,
)

_logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MODEL_NAME",
    "DEFAULT_PRETRAINED",
    "DEFAULT_TEMPLATES",
    "EncodedClassNames",
    "OfflineCacheMissError",
    "TextEncoderSpec",
    "TextTower",
    "build_prompts",
    "combine_templates",
    "encode_class_names",
    "encode_class_names_from_config",
    "encode_class_names_info",
    "load_text_tower",
    "pop_text_encoder_kwargs",
    "prepare_text_inputs",
]

DEFAULT_MODEL_NAME = "RN50-quickgelu"
DEFAULT_PRETRAINED = "openai"
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
TEXT_TRANSFORM = "underscores-to-spaces"
_KEY_VERSION = 1
_SCHEMAS = ("hf-hub:", "local-dir:")
_CUSTOM_PREFIX = "custom:"

TextEncoderFn = Callable[[list[str]], torch.Tensor]

# create_cprfl / timm.create_model keyword -> text encoder request field.
_USER_KWARGS = {
    "text_encoder": "model_name",
    "text_pretrained": "pretrained",
    "templates": "templates",
    "normalize_embeddings": "normalize",
    "embed_cache_dir": "cache_dir",
}
_REQUEST_FIELDS = frozenset({"model_name", "pretrained", "templates", "normalize", "cache_dir"})
# Provenance fields written by this module; accepted (and ignored) when a saved config is reused.
_PROVENANCE_FIELDS = frozenset(
    {"weights", "embed_dim", "text_transform", "open_clip_version", "trainable", "text_tower"}
)


class OfflineCacheMissError(RuntimeError):
    """Class embeddings are not cached and the CLIP weights cannot be fetched (offline)."""


# ---------------------------------------------------------------------- prompts
def build_prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Fill every template with every class name, template-major.

    Underscores in the names become spaces, as in the official code (``"traffic_light"`` gives
    ``"a photo of a traffic light."``).

    Args:
        class_names: The C class names.
        templates: The T templates, each with one ``{}``.

    Returns:
        T*C prompts: all names with the first template, then all with the second, ...
    """
    return [t.format(name.replace("_", " ")) for t in templates for name in class_names]


def combine_templates(features: torch.Tensor, num_templates: int, normalize: bool) -> torch.Tensor:
    """Reduce per-prompt features (T*C, m), template-major, to class embeddings (C, m).

    With ``normalize`` every feature is L2-normalised, the templates are averaged and the mean is
    normalised again (open_clip's zero-shot classifier recipe); without it (one template only)
    the raw features are returned.

    Args:
        features: (T*C, m) text features.
        num_templates: T.
        normalize: Whether to L2-normalise (required when T > 1).

    Returns:
        (C, m) class embeddings.
    """
    if not normalize:
        if num_templates != 1:
            raise ValueError("averaging several templates needs normalize=True")
        return features
    feats = F.normalize(features, dim=-1)
    feats = feats.view(num_templates, -1, feats.shape[-1]).mean(0)
    return F.normalize(feats, dim=-1)


def _check_templates(templates: str | Sequence[str] | None) -> tuple[str, ...]:
    if templates is None:
        return DEFAULT_TEMPLATES
    if isinstance(templates, str):
        templates = (templates,)
    if not isinstance(templates, Sequence) or not templates:
        raise ValueError(f"templates must be a non-empty sequence of strings, got {templates!r}")
    out = []
    for t in templates:
        if not isinstance(t, str):
            raise ValueError(f"template {t!r} is not a string")
        try:
            ok = t.count("{}") == 1 and bool(t.format("x"))
        except (IndexError, KeyError, ValueError):
            ok = False
        if not ok:
            raise ValueError(
                f"template {t!r} must contain exactly one '{{}}' where the class name goes, and "
                "no other braces"
            )
        out.append(t)
    return tuple(out)


# ---------------------------------------------------------------------- weights identity
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _FILE_DIGESTS:
        _FILE_DIGESTS[memo] = file_sha256(path)
    return _FILE_DIGESTS[memo]


def _local_dir_sha256(folder: Path) -> str:
    if not folder.is_dir():
        raise ValueError(f"local-dir: folder {folder} does not exist")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.name == "open_clip_config.json" or p.suffix in (".safetensors", ".bin", ".pth")
    )
    if not any(p.name == "open_clip_config.json" for p in files):
        raise ValueError(f"local-dir: folder {folder} has no open_clip_config.json")
    digest = hashlib.sha256()
    for p in files:
        digest.update(f"{p.name}:{_file_sha256(p)}\n".encode())
    return digest.hexdigest()


def _is_truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or _is_truthy(os.environ.get("HF_HUB_OFFLINE"))


def _hf_file_cached(repo_id: str, filenames: Sequence[str]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in filenames)


# ---------------------------------------------------------------------- the encoder request
@dataclass(frozen=True)
class TextEncoderSpec:
    """A checked open_clip text-encoder request: model, weights, templates, normalisation.

    Build it with :meth:`resolve`, which fills the defaults and validates every field.

    Attributes:
        model_name: open_clip model name (``"RN50-quickgelu"``), ``"hf-hub:org/repo"`` or
            ``"local-dir:/path"``.
        pretrained: Pretrained tag (``"openai"``) or absolute checkpoint path; ``None`` for
            ``hf-hub:`` and ``local-dir:`` models, which carry their own weights.
        templates: Prompt templates, each with one ``{}``.
        normalize: L2-normalise the embeddings (always, when several templates are averaged).
    """

    model_name: str
    pretrained: str | None
    templates: tuple[str, ...]
    normalize: bool

    @classmethod
    def resolve(
        cls,
        model_name: str = DEFAULT_MODEL_NAME,
        pretrained: str | os.PathLike[str] | None = None,
        templates: str | Sequence[str] | None = None,
        normalize: bool | None = None,
    ) -> TextEncoderSpec:
        """Validate a request and fill its defaults.

        Args:
            model_name: open_clip model name, ``hf-hub:`` id or ``local-dir:`` folder.
            pretrained: Tag or checkpoint file for a built-in model name. ``None`` picks
                ``"openai"`` when the model has such weights.
            templates: One template or several; default ``("a photo of a {}.",)``.
            normalize: Default: ``False`` for one template, ``True`` for several.

        Returns:
            The resolved spec.

        Raises:
            ValueError: For an unknown model or tag, a missing checkpoint file, a bad template or
                ``normalize=False`` with several templates.
        """
        import open_clip

        if not isinstance(model_name, str) or not model_name.strip():
            raise ValueError(f"model_name must be a non-empty string, got {model_name!r}")
        model_name = model_name.strip()
        templates = _check_templates(templates)
        if normalize is None:
            normalize = len(templates) > 1
        if not normalize and len(templates) > 1:
            raise ValueError(
                f"{len(templates)} templates are averaged as normalised features; "
                "normalize=False is only possible with one template"
            )
        if model_name.startswith(_SCHEMAS):
            if pretrained is not None:
                raise ValueError(
                    f"{model_name} carries its own weights; pretrained={pretrained!r} cannot be "
                    "combined with it (pass pretrained=None)"
                )
            if model_name.startswith("local-dir:"):
                folder = Path(model_name[len("local-dir:") :]).expanduser().resolve()
                model_name = f"local-dir:{folder}"
            return cls(model_name, None, templates, bool(normalize))

        model_name = model_name.replace("/", "-")
        if model_name not in open_clip.list_models():
            close = difflib.get_close_matches(model_name, open_clip.list_models(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown open_clip model name {model_name!r}{hint}")
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained is None:
            if DEFAULT_PRETRAINED not in tags:
                raise ValueError(
                    f"pretrained is needed for {model_name!r}: one of its tags {tags} or a "
                    "checkpoint file (it has no 'openai' weights to default to)"
                )
            pretrained = DEFAULT_PRETRAINED
        pretrained = os.fspath(pretrained)
        if open_clip.get_pretrained_cfg(model_name, pretrained):
            pretrained = pretrained.lower().replace("-", "_")
        elif os.path.isfile(pretrained):
            pretrained = str(Path(pretrained).resolve())
        else:
            raise ValueError(
                f"pretrained={pretrained!r} for {model_name!r} is neither one of its tags "
                f"{tags} nor an existing checkpoint file"
            )
        return cls(model_name, pretrained, templates, bool(normalize))

    @property
    def pretrained_is_file(self) -> bool:
        """Whether the weights come from a local checkpoint file."""
        return self.pretrained is not None and os.path.isabs(self.pretrained)

    def weights_identity(self) -> str:
        """Name the weights: a tag, an ``hf-hub:`` id, or a SHA-256 of the local files.

        Returns:
            ``"tag:openai"``, ``"hf-hub:org/repo"``, ``"sha256:<hex>"`` (checkpoint file) or
            ``"local-dir-sha256:<hex>"`` (config and weight files of a ``local-dir:`` folder).
        """
        if self.model_name.startswith("hf-hub:"):
            return self.model_name
        if self.model_name.startswith("local-dir:"):
            return f"local-dir-sha256:{_local_dir_sha256(Path(self.model_name[10:]))}"
        if self.pretrained_is_file:
            return f"sha256:{_file_sha256(Path(self.pretrained))}"
        return f"tag:{self.pretrained}"

    def cache_key(self, class_names: Sequence[str]) -> dict[str, Any]:
        """Return the cache key of these class names' embeddings.

        Args:
            class_names: The class names, in order.

        Returns:
            A JSON-able dict of everything that determines the embeddings.
        """
        return {
            "version": _KEY_VERSION,
            "model_name": self.model_name,
            "weights": self.weights_identity(),
            "templates": list(self.templates),
            "normalize": self.normalize,
            "text_transform": TEXT_TRANSFORM,
            "class_names": list(class_names),
        }

    def provenance(self, embed_dim: int) -> dict[str, Any]:
        """Describe what produced the embeddings, as stored in ``model.text_encoder_cfg``.

        Args:
            embed_dim: Width m of the embeddings.

        Returns:
            A JSON-able dict; passing it back as ``text_encoder_cfg`` reproduces the encoder.
        """
        import open_clip

        return {
            "model_name": self.model_name,
            "pretrained": self.pretrained,
            "weights": self.weights_identity(),
            "templates": list(self.templates),
            "normalize": self.normalize,
            "text_transform": TEXT_TRANSFORM,
            "embed_dim": int(embed_dim),
            "open_clip_version": open_clip.__version__,
        }

    def weights_available_offline(self) -> bool:
        """Whether the weights can be loaded without the network.

        Returns:
            ``True`` for local files and folders, and for hub weights already in the local
            Hugging Face cache (or open_clip's download folder).
        """
        if self.model_name.startswith("local-dir:") or self.pretrained_is_file:
            return True
        from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

        if self.model_name.startswith("hf-hub:"):
            repo = self.model_name[len("hf-hub:") :]
            return _hf_file_cached(repo, ["open_clip_config.json"]) and _hf_file_cached(
                repo, [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
            )
        import open_clip

        cfg = open_clip.get_pretrained_cfg(self.model_name, self.pretrained or "")
        if cfg.get("hf_hub"):
            # open_clip's convention: "org/repo/" means the default file, "org/repo/file" a file.
            repo, filename = os.path.split(cfg["hf_hub"])
            filename = filename or HF_WEIGHTS_NAME
            names = [filename]
            if filename == HF_WEIGHTS_NAME:
                names.insert(0, HF_SAFE_WEIGHTS_NAME)
            elif filename.endswith((".bin", ".pth")):
                names.insert(0, filename[:-4] + ".safetensors")
            if _hf_file_cached(repo, names):
                return True
        url = cfg.get("url", "")
        return bool(url) and os.path.isfile(
            os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        )


# ---------------------------------------------------------------------- the text tower
def _build_text_module(arch: Mapping[str, Any]) -> nn.Module:
    # open_clip's own builder, so every text-tower option of its configs is honoured.
    from open_clip.model import _build_text_tower

    return _build_text_tower(
        int(arch["embed_dim"]), copy.deepcopy(dict(arch["text_cfg"])), bool(arch["quick_gelu"])
    )


def _text_arch(model_name: str) -> dict[str, Any]:
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
        tokenizer: open_clip model name whose tokenizer builds the prompts.
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
        tokenizer: str,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        normalize: bool = False,
        num_classes: int = 0,
        token_length: int | None = None,
        text: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.arch = copy.deepcopy(dict(arch))
        self.tokenizer_name = tokenizer
        self.templates = _check_templates(templates)
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
        tokenizer: str,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        normalize: bool = False,
    ) -> TextTower:
        """Take the text tower of a loaded open_clip model, sharing its weights.

        Args:
            model: An open_clip ``CLIP``, ``CustomTextCLIP`` or ``CoCa``.
            arch: Its ``{"embed_dim", "quick_gelu", "text_cfg"}``.
            tokenizer: The open_clip model name whose tokenizer fits it.
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
        return cls(arch, tokenizer=tokenizer, templates=templates, normalize=normalize, text=text)

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
            tokenizer=config["tokenizer"],
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
            "tokenizer": self.tokenizer_name,
            "templates": list(self.templates),
            "normalize": self.normalize,
            "token_length": int(self.tokens.shape[1]),
        }

    @property
    def embed_dim(self) -> int:
        """Width m of the text features."""
        return int(self.arch["embed_dim"])

    @property
    def trimmable(self) -> bool:
        """Whether the context can be trimmed without changing the result."""
        from open_clip.transformer import TextTransformer

        text = self.text
        return (
            isinstance(text, TextTransformer)
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

            self._tokenizer = open_clip.get_tokenizer(
                self.tokenizer_name, context_length=self.context_length
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
            return tokens.new_zeros((0, self.embed_dim), dtype=torch.float32)
        return self._encode_prefix(tokens[:, : int(self.needed_lengths(tokens).max())])

    def forward(self) -> torch.Tensor:
        """Encode the stored prompts into class embeddings.

        Returns:
            (C, m) class embeddings.
        """
        # The buffer is already trimmed, so no length is computed (and no device sync happens).
        feats = self._encode_prefix(self.tokens) if self.trimmable else self.encode(self.tokens)
        return combine_templates(feats, len(self.templates), self.normalize)


def load_text_tower(spec: TextEncoderSpec) -> TextTower:
    """Load an open_clip model's weights and keep only its text tower.

    Args:
        spec: The resolved encoder request.

    Returns:
        The tower on the CPU, in eval mode, with no prompts stored yet.

    Raises:
        RuntimeError: If open_clip cannot load the weights.
    """
    import open_clip

    _logger.info("loading the text tower of %s (%s)", spec.model_name, spec.pretrained)
    model = open_clip.create_model(
        spec.model_name, pretrained=spec.pretrained, require_pretrained=True, weights_only=True
    )
    arch = _text_arch(spec.model_name)
    tower = TextTower.from_open_clip(
        model, arch, tokenizer=spec.model_name, templates=spec.templates, normalize=spec.normalize
    )
    del model  # the image tower goes with it; the tower holds only the text weights
    return tower.eval()


# ---------------------------------------------------------------------- encoding
@dataclass
class EncodedClassNames:
    """Class embeddings and where they came from.

    Attributes:
        embeddings: (C, m) float32 class embeddings on the CPU.
        text_encoder_cfg: JSON-able description of what produced them.
        cache_file: The cache entry read or written (``None`` if uncached or not writable).
        from_cache: Whether they were read from the cache.
    """

    embeddings: torch.Tensor
    text_encoder_cfg: dict[str, Any]
    cache_file: Path | None
    from_cache: bool


def _callable_name(fn: Callable[..., Any]) -> str:
    target = fn if hasattr(fn, "__qualname__") else type(fn)
    return f"{getattr(target, '__module__', '?')}.{target.__qualname__}"


def _encode_with_callable(
    fn: TextEncoderFn, names: list[str], normalize: bool | None
) -> EncodedClassNames:
    out = fn(list(names))
    if not isinstance(out, torch.Tensor):
        try:
            out = torch.as_tensor(out)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(
                f"the text_encoder callable returned {type(out).__name__}, not a (C, m) tensor"
            ) from e
    if out.ndim != 2 or out.shape[0] != len(names):
        raise ValueError(
            f"the text_encoder callable returned shape {tuple(out.shape)}; expected "
            f"({len(names)}, m), one row per class name"
        )
    out = out.detach().to("cpu", torch.float32)
    if not torch.isfinite(out).all():
        raise ValueError("the text_encoder callable returned NaN or infinite values")
    if normalize:
        out = F.normalize(out, dim=-1)
    cfg = {
        "model_name": f"{_CUSTOM_PREFIX}{_callable_name(fn)}",
        "normalize": bool(normalize),
        "embed_dim": int(out.shape[1]),
    }
    return EncodedClassNames(out.contiguous(), cfg, None, False)


def _offline_error(spec: TextEncoderSpec, entry: Path | None, num_classes: int) -> str:
    options = f" --pretrained {spec.pretrained}" if spec.pretrained else ""
    options += "".join(f" --template {t!r}" for t in spec.templates)
    if spec.normalize and len(spec.templates) == 1:
        options += " --normalize"
    where = (
        f"the cache entry {entry} is missing"
        if entry is not None
        else "the cache is off (use_cache=False)"
    )
    fill = (
        f", then copy the file it prints ({entry.name}) into {entry.parent} here (or point "
        f"${CACHE_ENV} at a folder holding it)"
        if entry is not None
        else ""
    )
    return (
        f"cannot compute class embeddings of {num_classes} classes with {spec.model_name} "
        f"({spec.weights_identity()}): {where}, and the CLIP weights are not in the local cache "
        "while Hugging Face is offline (HF_HUB_OFFLINE). Fill the cache on a machine with "
        "internet: write the class names, one per line, to classes.txt and run `cprfl-zoo embed "
        f"--classes classes.txt --model {spec.model_name}{options}`{fill}; or pass the "
        "embeddings yourself with text_embeddings="
    )


def encode_class_names_info(
    class_names: Sequence[str],
    model_name: str | TextEncoderFn = DEFAULT_MODEL_NAME,
    pretrained: str | os.PathLike[str] | None = None,
    templates: str | Sequence[str] | None = None,
    *,
    normalize: bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> EncodedClassNames:
    """Like :func:`encode_class_names`, but also return the provenance and the cache file.

    Args:
        class_names: Class names, in order.
        model_name: open_clip model name, ``hf-hub:`` id, ``local-dir:`` folder, or a callable
            mapping a list of names to a (C, m) tensor (never cached).
        pretrained: Tag or checkpoint path for a built-in model name.
        templates: Prompt template(s), each with one ``{}``.
        normalize: L2-normalise (default: only when several templates are averaged).
        cache_dir: Folder of the cache files (default: see :mod:`cprfl_zoo.text_cache`).
        use_cache: Read and write the cache.
        batch_size: Prompts encoded at once.
        device: Where to encode on a miss (default: CUDA if available, else CPU).
        progress: Show a progress bar (default: only on a terminal).

    Returns:
        The embeddings, their ``text_encoder_cfg``, the cache file and whether it was a hit.

    Raises:
        OfflineCacheMissError: On a miss while offline, when the weights are not cached locally.
        ValueError: For bad class names, templates, model names or tags.
    """
    names = validate_class_inputs(class_names)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if callable(model_name) and not isinstance(model_name, str):
        if templates is not None or pretrained is not None:
            raise ValueError(
                "templates and pretrained only apply to open_clip text encoders; a callable "
                "text encoder receives the class names and builds its own prompts"
            )
        return _encode_with_callable(model_name, names, normalize)

    spec = TextEncoderSpec.resolve(model_name, pretrained, templates, normalize)
    key = spec.cache_key(names)
    folder = resolve_cache_dir(cache_dir)
    entry = folder / cache_file_name(key) if use_cache else None
    if use_cache:
        cached = read_cache_entry(key, folder)
        if cached is not None:
            _logger.debug("class embeddings read from %s", entry)
            return EncodedClassNames(cached, spec.provenance(cached.shape[1]), entry, True)
    if _is_offline() and not spec.weights_available_offline():
        raise OfflineCacheMissError(_offline_error(spec, entry, len(names)))

    embeddings = _encode_with_tower(spec, names, batch_size, device, progress)
    provenance = spec.provenance(embeddings.shape[1])
    written = None
    if use_cache:
        written = write_cache_entry(key, embeddings, folder, provenance)
    return EncodedClassNames(embeddings, provenance, written, False)


@torch.no_grad()
def _encode_with_tower(
    spec: TextEncoderSpec,
    names: list[str],
    batch_size: int,
    device: str | torch.device | None,
    progress: bool | None,
) -> torch.Tensor:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tower = load_text_tower(spec).to(device)
    tokens = tower.tokenize(names)
    # Batches of similar length waste the least work once each batch is trimmed.
    order = torch.argsort(tower.needed_lengths(tokens), stable=True)
    feats = torch.empty(len(tokens), tower.embed_dim, dtype=torch.float32)
    with tqdm(
        total=len(tokens),
        unit="prompt",
        desc=f"encoding with {spec.model_name}",
        disable=(None if progress is None else not progress),
    ) as bar:
        for start in range(0, len(tokens), batch_size):
            idx = order[start : start + batch_size]
            feats[idx] = tower.encode(tokens[idx].to(device)).float().cpu()
            bar.update(len(idx))
    return combine_templates(feats, len(spec.templates), spec.normalize).contiguous()


def encode_class_names(
    class_names: Sequence[str],
    model_name: str | TextEncoderFn = DEFAULT_MODEL_NAME,
    pretrained: str | os.PathLike[str] | None = None,
    templates: str | Sequence[str] | None = None,
    *,
    normalize: bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """Encode class names into text embeddings W (C, m), computing them once and caching them.

    The defaults reproduce the official CPRFL code: OpenAI CLIP RN50 with QuickGELU
    (``"RN50-quickgelu"``, ``"openai"``; plain ``"RN50"`` gives different numbers), the template
    ``"a photo of a {}."``, underscores turned into spaces, no normalisation.

    A cache hit never builds or downloads a CLIP model. On a miss the text tower is loaded (the
    image tower freed at once), the prompts are encoded in batches with trimmed context, and the
    result is written atomically to the cache.

    Args:
        class_names: Class names, in order.
        model_name: open_clip model name, ``hf-hub:`` id, ``local-dir:`` folder, or a callable
            mapping a list of names to a (C, m) tensor (never cached).
        pretrained: Tag (``"openai"``) or checkpoint path for a built-in model name; ``None``
            picks ``"openai"`` where the model has it.
        templates: Prompt template(s), each with one ``{}``. Several are normalised, averaged
            and renormalised.
        normalize: L2-normalise (default: only when several templates are averaged).
        cache_dir: Folder of the cache files (default ``$CPRFL_ZOO_CACHE/text_embeddings``, else
            ``$XDG_CACHE_HOME/cprfl_zoo/text_embeddings``, else
            ``~/.cache/cprfl_zoo/text_embeddings``).
        use_cache: Read and write the cache.
        batch_size: Prompts encoded at once.
        device: Where to encode on a miss (default: CUDA if available, else CPU).
        progress: Show a progress bar (default: only on a terminal).

    Returns:
        (C, m) float32 embeddings on the CPU.

    Raises:
        OfflineCacheMissError: On a miss while offline, when the weights are not cached locally.
        ValueError: For bad class names, templates, model names or tags.
    """
    return encode_class_names_info(
        class_names,
        model_name,
        pretrained,
        templates,
        normalize=normalize,
        cache_dir=cache_dir,
        use_cache=use_cache,
        batch_size=batch_size,
        device=device,
        progress=progress,
    ).embeddings


# ---------------------------------------------------------------------- model integration
def _request_args(text_encoder_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    cfg = dict(text_encoder_cfg or {})
    unknown = sorted(set(cfg) - _REQUEST_FIELDS - _PROVENANCE_FIELDS)
    if unknown:
        # Provenance records may carry extra information (a converted checkpoint's hash, ...).
        _logger.debug("text_encoder_cfg keys %s do not affect the encoding", unknown)
    name = cfg.get("model_name", DEFAULT_MODEL_NAME)
    if isinstance(name, str) and name.startswith(_CUSTOM_PREFIX):
        raise ValueError(
            f"text_encoder_cfg names a custom text encoder ({name}), which cannot be rebuilt "
            "from a config; pass the callable as text_encoder=, or pass text_embeddings="
        )
    return {k: v for k, v in cfg.items() if k in _REQUEST_FIELDS}


def encode_class_names_from_config(
    class_names: Sequence[str],
    text_encoder_cfg: Mapping[str, Any] | None,
    *,
    same_weights: bool = False,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Encode class names as a ``text_encoder_cfg`` request says.

    Args:
        class_names: Class names, in order.
        text_encoder_cfg: ``model_name`` (name or callable), ``pretrained``, ``templates``,
            ``normalize``, ``cache_dir``; a saved model's ``text_encoder_cfg`` works as well
            (other keys are ignored). ``None`` means the defaults.
        same_weights: Require the weights to be those recorded in ``text_encoder_cfg["weights"]``
            (for embeddings that must match a trained model's).

    Returns:
        The (C, m) embeddings and the JSON-able ``text_encoder_cfg`` that describes them.

    Raises:
        ValueError: For a custom encoder that cannot be rebuilt, or weights that differ from
            the recorded ones when ``same_weights``.
    """
    args = _request_args(text_encoder_cfg)
    recorded = (text_encoder_cfg or {}).get("weights")
    name = args.get("model_name", DEFAULT_MODEL_NAME)
    if recorded and isinstance(name, str):
        spec = TextEncoderSpec.resolve(
            name, args.get("pretrained"), args.get("templates"), args.get("normalize")
        )
        found = spec.weights_identity()
        if found != recorded:
            message = (
                f"the class embeddings were made with weights {recorded!r}, but "
                f"{spec.model_name} ({spec.pretrained}) now resolves to {found!r}"
            )
            if same_weights:
                raise ValueError(
                    f"{message}; pass text_embeddings computed with the original text encoder"
                )
            _logger.warning(message)
    result = encode_class_names_info(class_names, **args)
    return result.embeddings, result.text_encoder_cfg


def pop_text_encoder_kwargs(kwargs: MutableMapping[str, Any]) -> dict[str, Any]:
    """Remove the text-encoder keywords of ``create_cprfl`` from ``kwargs``.

    Args:
        kwargs: Keyword arguments of a CPRFL entrypoint; modified in place.

    Returns:
        The keywords found, with a value other than ``None``, by their user-facing name.
    """
    found = {k: kwargs.pop(k) for k in list(_USER_KWARGS) if k in kwargs}
    return {k: v for k, v in found.items() if v is not None}


def prepare_text_inputs(
    model_kwargs: MutableMapping[str, Any], text_kwargs: Mapping[str, Any], *, pretrained: bool
) -> None:
    """Fill ``text_embeddings``, ``text_encoder_cfg`` (and ``text_tower``) of a CPRFL build.

    Nothing is computed when saved weights are loaded (they hold W) or embeddings are given.

    Args:
        model_kwargs: CPRFL constructor arguments; modified in place.
        text_kwargs: From :func:`pop_text_encoder_kwargs`.
        pretrained: Whether complete CPRFL weights will be loaded.

    Raises:
        ValueError: If text-encoder keywords are given but unused, or the trainable mode is
            combined with given embeddings or a callable encoder.
    """
    trainable = bool(model_kwargs.get("trainable_text_encoder"))
    given = model_kwargs.get("text_embeddings") is not None
    if pretrained or given or "class_names" not in model_kwargs:
        if text_kwargs:
            why = "saved weights are loaded" if pretrained else "text_embeddings were given"
            raise ValueError(
                f"{sorted(text_kwargs)} choose how class embeddings are computed, but none are "
                f"computed here: {why}"
            )
        if trainable and given and not pretrained and model_kwargs.get("text_tower") is None:
            raise ValueError(
                "trainable_text_encoder=True computes the class embeddings with the CLIP text "
                "tower; do not pass text_embeddings"
            )
        return
    request = dict(model_kwargs.get("text_encoder_cfg") or {})
    request.update({_USER_KWARGS[k]: v for k, v in text_kwargs.items()})
    names = model_kwargs["class_names"]
    if not trainable:
        embeddings, cfg = encode_class_names_from_config(names, request)
        model_kwargs["text_embeddings"] = embeddings
        model_kwargs["text_encoder_cfg"] = cfg
        return

    args = _request_args(request)
    args.pop("cache_dir", None)
    if callable(args.get("model_name")) and not isinstance(args.get("model_name"), str):
        raise ValueError(
            "trainable_text_encoder=True needs an open_clip text tower; a callable text_encoder "
            "can only give frozen embeddings"
        )
    spec = TextEncoderSpec.resolve(**args)
    if _is_offline() and not spec.weights_available_offline():
        raise OfflineCacheMissError(
            f"trainable_text_encoder=True needs the weights of {spec.model_name} "
            f"({spec.weights_identity()}), which are not in the local cache while Hugging Face "
            "is offline (HF_HUB_OFFLINE); download them on a connected machine first"
        )
    tower = load_text_tower(spec)
    from open_clip.transformer import TextTransformer

    if not isinstance(tower.text, TextTransformer):
        raise ValueError(
            f"trainable_text_encoder=True supports open_clip's own text transformers; "
            f"{spec.model_name} uses {type(tower.text).__name__}"
        )
    tower.set_class_names(list(names))
    tower.train()
    with torch.no_grad():
        embeddings = tower().float()
    cfg = spec.provenance(tower.embed_dim)
    cfg.update(trainable=True, text_tower=tower.config)
    model_kwargs["text_embeddings"] = embeddings
    model_kwargs["text_encoder_cfg"] = cfg
    model_kwargs["text_tower"] = tower
