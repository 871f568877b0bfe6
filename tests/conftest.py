from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

# Two cores are shared by the test processes; one torch thread each keeps them from thrashing.
torch.set_num_threads(int(os.environ.get("CPRFL_TEST_THREADS", "1")))

# The COCO-LT / VOC-LT list files (a folder laid out like the official repository's data/:
# coco/coco_lt_train.txt, ..., voc/...) for the tests that read the real splits.
LT_SPLITS_ENV = "CPRFL_LT_SPLITS"
# Where this project's development machines keep them, used when the variable is not set.
_DEV_LT_SPLITS = Path(__file__).resolve().parents[2] / "shared" / "data" / "lt_splits"


def lt_splits_dir() -> Path:
    """The folder of the real COCO-LT / VOC-LT split files (may not exist: see
    :data:`LT_SPLITS_SKIP`)."""
    value = os.environ.get(LT_SPLITS_ENV)
    return Path(value).expanduser() if value else _DEV_LT_SPLITS


LT_SPLITS_SKIP = (
    f"the COCO-LT / VOC-LT split files are not available: set {LT_SPLITS_ENV} to a folder laid "
    "out like the data/ folder of github.com/jiexuanyan/CPRFL (coco/coco_lt_train.txt, "
    "coco/coco_lt_test.txt, coco/coco_labels.txt, voc/voc_lt_train.txt, ...); "
    "cprfl_zoo.data.download_lt_split fetches the lists into such a folder"
)

TINY_HEAD = {"embed_dim": 32, "num_heads": 2, "head_dim": 8, "mlp_hidden_dim": 24}


def tiny_cprfl(class_names: list[str], text_dim: int = 16, **kwargs):
    """An eval-mode CPRFL on timm's ``test_resnet`` with the tiny head and seeded embeddings.

    Args:
        class_names: The label set.
        text_dim: Width of the random text embeddings (drawn after ``torch.manual_seed(0)``).
        **kwargs: More ``create_cprfl`` arguments (``thresholds``, ``cosine_classifier``...).

    Returns:
        The model, the same for the same arguments.
    """
    from cprfl_zoo import create_cprfl

    torch.manual_seed(0)
    return create_cprfl(
        "test_resnet",
        class_names=class_names,
        text_embeddings=torch.randn(len(class_names), text_dim),
        pretrained=False,
        **TINY_HEAD,
        **kwargs,
    ).eval()


def random_problem(n=300, c=9, seed=0, p=0.3):
    """Seeded ``(n, c)`` random scores and 0/1 float targets; every class has a positive.

    For the tests of :mod:`cprfl_zoo.metrics`.
    """
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, c, generator=g)
    targets = (torch.rand(n, c, generator=g) < p).float()
    targets[0] = 1.0  # every class has at least one positive
    return scores, targets


def value_and_grad(fn, x, y, upstream_seed=1):
    """A loss and its gradient with respect to ``x`` under a seeded random upstream gradient.

    For the tests of :mod:`cprfl_zoo.losses`.
    """
    out = fn(x, y)
    upstream = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad(out, x, upstream)
    return out.detach(), grad


@pytest.fixture
def tiny_head() -> dict:
    return dict(TINY_HEAD)


@pytest.fixture(autouse=True)
def _no_hub_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hub counts as reachable unless a test says otherwise: no test opens a connection, and
    whether a download is tried depends on HF_HUB_OFFLINE alone, as it would online."""
    from cprfl_zoo import network

    monkeypatch.setattr(network, "_connects", lambda host, port, timeout: True)
    monkeypatch.setattr(network, "_probes", {})


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Every test gets its own empty embedding cache, never the user's."""
    monkeypatch.setenv("CPRFL_ZOO_CACHE", str(tmp_path_factory.mktemp("cprfl_cache")))


def rgba_drawings(num_classes: int, styles: int = 2, side: int = 12) -> tuple[np.ndarray, list]:
    """Opaque squares; class c's style s has the colour (c, s, 255), so it can be found."""
    images = np.zeros((num_classes * styles, side, side, 4), dtype=np.uint8)
    for c in range(num_classes):
        for s in range(styles):
            images[c * styles + s] = (c, s, 255, 255)
    pools = [np.arange(c * styles, (c + 1) * styles) for c in range(num_classes)]
    return images, pools
