from __future__ import annotations

import os

import pytest
import torch

# Two cores are shared by the test processes; one torch thread each keeps them from thrashing.
torch.set_num_threads(int(os.environ.get("CPRFL_TEST_THREADS", "1")))

TINY_HEAD = {"dim": 32, "num_heads": 2, "head_dim": 8, "mlp_hidden_dim": 24}


@pytest.fixture
def tiny_head() -> dict:
    return dict(TINY_HEAD)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Every test gets its own empty embedding cache, never the user's."""
    monkeypatch.setenv("CPRFL_ZOO_CACHE", str(tmp_path_factory.mktemp("cprfl_cache")))
