"""``examples/train.py`` under torchrun, each rank then writing the SHA-256 of its weights.

The DDP test launches this file instead of train.py itself: after ``train()`` returns, every
rank writes ``<output>/weights-digest-rank<r>.json`` with the digests of its model and EMA, so the
test can check that the ranks end with identical weights. The script runs unchanged otherwise.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def state_digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def load_train_script():
    spec = importlib.util.spec_from_file_location("cprfl_example_train", EXAMPLES / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> int:
    script = load_train_script()
    train = script.train

    def train_and_write_digests(ctx, args):
        state = train(ctx, args)
        digest = {
            "rank": ctx.rank,
            "world_size": ctx.world_size,
            "model": state_digest(state.model.state_dict()),
            "ema": state_digest(state.ema.module.state_dict()) if state.ema else None,
        }
        (args.output / f"weights-digest-rank{ctx.rank}.json").write_text(json.dumps(digest))
        return state

    script.train = train_and_write_digests
    return script.main()


if __name__ == "__main__":
    sys.exit(main())
