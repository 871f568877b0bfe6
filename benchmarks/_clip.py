"""Random-weight CLIP (OpenAI RN50's architecture) for the benchmarks; nothing is downloaded.

* :func:`write_random_clip_checkpoint`: an open_clip ``RN50-quickgelu`` checkpoint with random
  weights, which ``create_cprfl(..., text_pretrained=<file>)`` and open_clip both load
  (``bench_create.py``, ``bench_train_step.py``).
* :class:`OfficialStyleTextEncoder`: the official code's text encoder, which re-encodes the
  prompts on the full 77-token context on every call (``bench_train_step.py``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from cprfl_zoo.fileio import atomic_path

CLIP_MODEL = "RN50-quickgelu"


def write_random_clip_checkpoint(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write an open_clip ``RN50-quickgelu`` state dict with random weights, atomically.

    Args:
        path: The ``.safetensors`` file to write.
        seed: Seed of the random initialisation.

    Returns:
        The path written.
    """
    import open_clip
    from safetensors.torch import save_file

    path = Path(path)
    torch.manual_seed(seed)
    level = logging.root.level
    logging.root.setLevel(logging.ERROR)  # open_clip warns that no weights were loaded
    try:
        model = open_clip.create_model(CLIP_MODEL, pretrained=None)
    finally:
        logging.root.setLevel(level)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
    return path


class OfficialStyleTextEncoder(nn.Module):
    """Re-encodes fixed prompts through a CLIP text tower on every call, full context.

    The official ``TextEncoder`` (``src/models/build_model_TF.py``): token embedding, positional
    embedding, the causal transformer over all 77 positions, final LayerNorm, the end-of-text
    token's feature times ``text_projection``; open_clip's ``CLIP.encode_text`` is exactly that.

    Args:
        clip_model: An open_clip ``CLIP`` (its image tower is dropped).
        tokens: (C, 77) token ids of the class prompts.
    """

    def __init__(self, clip_model: nn.Module, tokens: torch.Tensor) -> None:
        super().__init__()
        clip_model.visual = None
        self.clip = clip_model
        self.register_buffer("tokens", tokens)

    def forward(self) -> torch.Tensor:
        return self.clip.encode_text(self.tokens).float()
