"""A model folder saved by cprfl_zoo 0.1.0 still loads, and gives the logits it gave then.

``tests/data/v0_1_0_model`` was written by ``tests/data/make_v0_1_0_model.py`` run against the
0.1.0 release (commit 4999037); ``tests/data/v0_1_0_logits.json`` holds that model's logits on a
fixed input, computed by 0.1.0. The folder is never regenerated with the current code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import timm
import torch

from cprfl_zoo import CPRFL, create_cprfl

DATA = Path(__file__).parent / "data"


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A copy of the 0.1.0 folder, so that loading can never change the committed files."""
    return Path(shutil.copytree(DATA / "v0_1_0_model", tmp_path / "v0_1_0_model"))


def _expected() -> torch.Tensor:
    record = json.loads((DATA / "v0_1_0_logits.json").read_text(encoding="utf-8"))
    return torch.tensor(record["logits"])


def _logits(model: torch.nn.Module) -> torch.Tensor:
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(images)


def test_folder_is_the_0_1_0_one():
    config = json.loads((DATA / "v0_1_0_model" / "config.json").read_text(encoding="utf-8"))
    assert config["cprfl_zoo_version"] == "0.1.0" and "weights_sha256" not in config
    assert config["model_args"]["backbone"] == "test_resnet"
    assert config["label_names"] == ["cat", "dog", "traffic_light"]
    assert _expected().shape == (2, 3)


@pytest.mark.parametrize("how", ["from_pretrained", "create_cprfl", "timm"])
def test_0_1_0_folder_loads_with_its_logits(saved: Path, how: str):
    if how == "from_pretrained":
        model = CPRFL.from_pretrained(saved)
    elif how == "create_cprfl":
        model = create_cprfl(f"local-dir:{saved}")
    else:
        model = timm.create_model(f"local-dir:{saved}", pretrained=True)
    assert isinstance(model, CPRFL)
    assert model.class_names == ["cat", "dog", "traffic_light"]
    torch.testing.assert_close(_logits(model), _expected(), rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in saved.iterdir()) == sorted(
        p.name for p in (DATA / "v0_1_0_model").iterdir()
    )
