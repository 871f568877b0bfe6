"""Write tests/data/c087809_model and c087809_logits.json with the last code before the one-door
redesign (commit c087809: version string 0.1.0, 0.2.0 file format, ``text_encoder_cfg.embed_dim``).

Run once against that commit, never the current code::

    git worktree add /tmp/c087809 c087809
    PYTHONPATH=/tmp/c087809 python tests/data/make_c087809_model.py tests/data/c087809_model
    git worktree remove /tmp/c087809
"""

import json
import sys
from pathlib import Path

import torch

import cprfl_zoo

out = Path(sys.argv[1])
torch.manual_seed(0)
model = cprfl_zoo.create_cprfl(
    "test_resnet",
    class_names=["cat", "dog", "traffic_light", "zebra"],
    text_embeddings=torch.randn(4, 12),
    text_encoder_cfg={"model_name": "RN50-quickgelu", "pretrained": "openai", "embed_dim": 12},
    pretrained_backbone=False,
    embed_dim=16,
    num_heads=2,
    head_dim=4,
    mlp_hidden_dim=8,
    cosine_classifier=True,
    thresholds=[0.3, 0.5, 0.7, 0.4],
    backbone_kwargs={"channels": (8, 8, 8, 16), "stem_width": 8},
).eval()
model.save_pretrained(out)
x = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    logits = model(x)
(out.parent / "c087809_logits.json").write_text(
    json.dumps({"input": "torch.rand(2, 3, 40, 56) seeded 1", "logits": logits.tolist()}) + "\n"
)
print(logits, cprfl_zoo.__file__)
