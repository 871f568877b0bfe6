"""A tiny open_clip model with random weights, registered and saved as a local checkpoint.

Used by the text-embedding and CLI tests: the real open_clip loading code reads it by path.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file

TINY_NAME = "tiny-clip-test"
TINY_CFG = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def register_tiny_clip(folder: Path, name: str = TINY_NAME) -> Path:
    """Write the tiny config as ``<folder>/<name>.json`` and register it with open_clip."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(path)
    return path


def save_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Build the tiny model with random weights (seeded) and save it as safetensors."""
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_NAME)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@lru_cache(maxsize=4)
def _reference_model(checkpoint: str) -> tuple[torch.nn.Module, object]:
    model = open_clip.create_model(TINY_NAME, pretrained=checkpoint).eval()
    return model, open_clip.get_tokenizer(TINY_NAME)


def reference_text_features(checkpoint: Path, prompts: list[str]) -> torch.Tensor:
    """open_clip's own ``encode_text`` of the prompts, on the full 77-token context."""
    model, tokenizer = _reference_model(str(checkpoint))
    tokens = tokenizer(prompts)
    assert tokens.shape[1] == 77
    with torch.no_grad():
        return model.encode_text(tokens).float()
