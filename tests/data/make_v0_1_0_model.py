"""Write tests/data/v0_1_0_model and v0_1_0_logits.json with cprfl_zoo 0.1.0 (commit 4999037).

Run once against the release, never the current code::

    git worktree add /tmp/v010 4999037
    PYTHONPATH=/tmp/v010 python tests/data/make_v0_1_0_model.py tests/data/v0_1_0_model
    git worktree remove /tmp/v010
"""

import json
import sys
from pathlib import Path

import torch

import cprfl_zoo
from cprfl_zoo import CPRFL

assert cprfl_zoo.__version__ == "0.1.0", cprfl_zoo.__file__
out = Path(sys.argv[1])
torch.manual_seed(0)
emb = torch.randn(3, 16)
model = CPRFL(
    "test_resnet",
    class_names=["cat", "dog", "traffic_light"],
    text_embeddings=emb,
    dim=16,
    num_heads=2,
    head_dim=4,
    mlp_hidden_dim=8,
    pretrained_backbone=False,
    backbone_kwargs={"channels": (8, 8, 8, 16), "stem_width": 8},
).eval()
model.save_pretrained(out)
x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    logits = model(x)
(out.parent / "v0_1_0_logits.json").write_text(
    json.dumps(
        {
            "input": "torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))",
            "logits": logits.tolist(),
        },
        indent=None,
    )
    + "\n"
)
print(logits, cprfl_zoo.__file__)
