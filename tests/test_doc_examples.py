"""Every ```python block of README.md and docs/src runs, with the same calls, offline.

Blocks are discovered automatically and run in order, one namespace per file (later blocks use
the ``model`` of earlier ones, as a reader would). The stand-ins are explicit and small:

* ``create_cprfl`` and the ``cprfl_*`` entrypoints build a tiny head on timm's ``test_vit``
  (for ViT names) or ``test_resnet`` (every other backbone), without pretrained weights, with
  random class embeddings unless the block passes a ``text_encoder`` callable;
* Hub names (``hf-hub:...``, ``user/repo``) and saved folders that a block has not written
  itself resolve to one saved tiny model; ``push_to_hub`` records the call;
* ``encode_class_names`` (and the encoding behind ``set_classes``) returns random embeddings of
  the open_clip model's width;
* the namespace holds the data the prose assumes (``images``, ``logits``, ``targets``,
  ``train_set``, ...).

A block that cannot run offline is listed in :data:`EXEMPT` with the reason (keyed by its file
and first line, so an edited block is checked again). A new block runs, and fails the test
until it works or is listed.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from conftest import TINY_HEAD
from PIL import Image

import cprfl_zoo
import cprfl_zoo.factory
import cprfl_zoo.text.encode
from cprfl_zoo import CPRFL
from cprfl_zoo.class_lists import COCO_LT_CLASSES

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs" / "src").rglob("*.md"))]
EMBED_DIM = 16

EXEMPT: dict[tuple[str, str], str] = {
    (
        "docs/src/converting.md",
        "import cprfl_zoo",
    ): "needs an official CPRFL checkpoint; tests/test_convert.py makes the same "
    "convert_official_checkpoint call on a synthetic one",
    (
        "docs/src/datasets.md",
        "from cprfl_zoo.data import MultiLabelImageList, create_transforms, read_image_list",
    ): "reads COCO images under /data/coco; tests/test_data_image_list.py builds "
    "MultiLabelImageList and read_image_list, tests/test_data_transforms.py create_transforms, "
    "on small generated lists",
    (
        "docs/src/datasets.md",
        "from cprfl_zoo.data import create_lt_dataset, download_lt_split, lt_split_path",
    ): "downloads the official split files and reads COCO images; tests/test_data_lt_splits.py "
    "serves the download from a local file and checks the digest",
    (
        "docs/src/metrics.md",
        "import torch",
    ): "builds the COCO-LT training set from /data/coco; the evaluator calls are those of "
    "tests/test_metrics_distributed.py",
    (
        "docs/src/getting_started.md",
        "from cprfl_zoo import AsymmetricLoss",
    ): "a CUDA training loop (autocast on cuda, .cuda()); tests/test_examples.py trains with "
    "the same loss and optimiser on the CPU",
    (
        "docs/src/text_embeddings.md",
        'model = create_cprfl("resnet101", class_names=COCO_LT_CLASSES, '
        "trainable_text_encoder=True)",
    ): "loads CLIP's pretrained text tower; tests/test_text.py runs trainable_text_encoder on a "
    "tiny open_clip model",
    (
        "docs/src/predicting.md",
        "import torch",
    ): "deploy: run by tests/test_export.py::test_docs_deploy_and_export_examples",
    (
        "docs/src/predicting.md",
        "from cprfl_zoo.export import export_onnx, export_pt2, load_pt2",
    ): "ONNX / .pt2 export: run by tests/test_export.py::test_docs_deploy_and_export_examples",
    (
        "docs/src/predicting.md",
        "import json",
    ): "onnxruntime on the exported file: run by "
    "tests/test_export.py::test_docs_deploy_and_export_examples",
}

_BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)


def python_blocks(path: Path) -> list[tuple[int, str, str]]:
    """``(line number, first code line, code)`` of each ```python block of a markdown file."""
    text = path.read_text(encoding="utf-8")
    out = []
    for m in _BLOCK.finditer(text):
        code = m.group(1)
        first = next((line.strip() for line in code.splitlines() if line.strip()), "")
        out.append((text.count("\n", 0, m.start()) + 1, first, code))
    return out


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


FILES_WITH_BLOCKS = [p for p in DOC_FILES if python_blocks(p)]


def test_every_exemption_names_an_existing_block() -> None:
    present = {(_rel(p), first) for p in DOC_FILES for _, first, _ in python_blocks(p)}
    stale = sorted(set(EXEMPT) - present)
    assert not stale, f"exemptions for blocks that no longer exist (update EXEMPT): {stale}"


# ---------------------------------------------------------------------- stand-ins
class _Env:
    """The stand-ins of one file's run, and what they recorded."""

    def __init__(self, saved: Path) -> None:
        self.saved = saved
        self.pushed: list[str] = []
        self.written: set[str] = set()

    def resolve_saved(self, name: str) -> Path:
        """A folder the file wrote itself, else the tiny saved model."""
        name = str(name).removeprefix("local-dir:").removeprefix("hf-hub:").split("@")[0]
        return Path(name) if Path(name, "config.json").is_file() else self.saved


def _tiny_backbone(name: str) -> str:
    return "test_vit" if "vit" in name.split(".")[0] else "test_resnet"


def _random_embeddings(names: list[str], width: int = EMBED_DIM) -> torch.Tensor:
    g = torch.Generator().manual_seed(len(names))
    return torch.randn(len(names), width, generator=g)


def _install(monkeypatch: pytest.MonkeyPatch, env: _Env) -> None:
    real_create = cprfl_zoo.factory.create_cprfl
    real_timm_create = timm.create_model
    real_from_pretrained = CPRFL.from_pretrained.__func__
    real_save = CPRFL.save_pretrained

    def create_cprfl(model_name: str, class_names=None, text_embeddings=None, **kwargs: Any):
        if model_name.startswith(("hf-hub:", "local-dir:")):
            return real_create(f"local-dir:{env.resolve_saved(model_name)}")
        backbone = (
            model_name.removeprefix("cprfl_") if model_name.startswith("cprfl_") else model_name
        )
        kwargs.pop("pretrained", None)
        kwargs.pop("img_size", None) if _tiny_backbone(backbone) == "test_resnet" else None
        for key in TINY_HEAD:
            kwargs.pop(key, None)
        if text_embeddings is None and not callable(kwargs.get("text_encoder")):
            kwargs.pop("text_encoder", None)
            text_embeddings = _random_embeddings(list(class_names))
        kwargs.setdefault("text_encoder_cfg", {"model_name": "RN50-quickgelu", "embed_dim": 16})
        if callable(kwargs.get("text_encoder")):
            kwargs.pop("text_encoder_cfg")
        return real_create(
            _tiny_backbone(backbone),
            class_names=class_names,
            text_embeddings=text_embeddings,
            pretrained=False,
            **TINY_HEAD,
            **kwargs,
        )

    def timm_create_model(name: str, *args: Any, **kwargs: Any):
        if name.startswith(("hf-hub:", "local-dir:")):
            return real_timm_create(f"local-dir:{env.resolve_saved(name)}", *args, **kwargs)
        return real_timm_create(name, *args, **kwargs)

    def from_pretrained(cls, repo_id_or_path, revision=None, **kwargs):
        return real_from_pretrained(cls, env.resolve_saved(repo_id_or_path), **kwargs)

    def save_pretrained(self, save_directory, **kwargs):
        env.written.add(str(save_directory))
        return real_save(self, save_directory, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> None:
        env.pushed.append(repo_id)

    def encode_class_names(names, model_name="RN50-quickgelu", pretrained=None, **kwargs):
        width = {"ViT-B-16-SigLIP": 768}.get(str(model_name).split("/")[-1], 1024)
        return _random_embeddings(list(names), width)

    def encode_from_config(names, cfg, **kwargs):
        return _random_embeddings(list(names), int(cfg.get("embed_dim", EMBED_DIM))), None

    monkeypatch.setattr(cprfl_zoo, "create_cprfl", create_cprfl)
    monkeypatch.setattr(cprfl_zoo.factory, "create_cprfl", create_cprfl)
    monkeypatch.setattr(timm, "create_model", timm_create_model)
    monkeypatch.setattr(CPRFL, "from_pretrained", classmethod(from_pretrained))
    monkeypatch.setattr(CPRFL, "save_pretrained", save_pretrained)
    monkeypatch.setattr(CPRFL, "push_to_hub", push_to_hub)
    monkeypatch.setattr(cprfl_zoo, "encode_class_names", encode_class_names)
    monkeypatch.setattr(cprfl_zoo.text.encode, "encode_class_names_from_config", encode_from_config)

    class SentenceTransformer:  # the sentence-transformers API the text-embeddings page uses
        def __init__(self, name: str) -> None:
            self.name = name

        def encode(self, texts: list[str], convert_to_tensor: bool = False) -> torch.Tensor:
            return _random_embeddings(texts, 384)

    fake = types.ModuleType("sentence_transformers")
    fake.SentenceTransformer = SentenceTransformer
    monkeypatch.setitem(sys.modules, "sentence_transformers", fake)


def _namespace(model: CPRFL) -> dict[str, Any]:
    """The data the docs' prose assumes, for a model with C classes."""
    g = torch.Generator().manual_seed(0)
    c, n = model.num_classes, 6  # n: the batch of `images`, and of the logits and targets
    targets = (torch.rand(n, c, generator=g) < 0.3).float()
    targets[0] = 1
    logits = torch.randn(n, c, generator=g) + 2 * targets
    # `train_set`: a long-tailed training list's (40, C) targets, what class_counts and the
    # samplers read; every class has a positive and a negative image.
    g_train = torch.Generator().manual_seed(1)
    train = (torch.rand(40, c, generator=g_train) < torch.linspace(0.6, 0.05, c)).float()
    train[0], train[1] = 1.0, 0.0
    return {
        "torch": torch,
        "timm": timm,
        "coco_names": list(COCO_LT_CLASSES),
        "names": list(model.class_names),
        "images": torch.randn(n, 3, 160, 160, generator=g),
        "logits": logits,
        "targets": targets,
        "probs": logits.sigmoid(),
        "val_logits": logits,
        "val_targets": targets,
        "train_class_counts": [150, 60, 10, 500, 3] * (c // 5) + [30] * (c % 5),
        "rank_logits": [logits[:3], logits[3:]],
        "rank_targets": [targets[:3], targets[3:]],
        "test_set": list(range(n)),
        "train_set": train,
        "MiniLMTextEncoder": lambda template: lambda ns: _random_embeddings(list(ns), 384),
    }


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CPRFL]:
    names = list(COCO_LT_CLASSES)  # the docs' examples are about COCO-LT's 80 classes
    torch.manual_seed(0)
    model = cprfl_zoo.factory.create_cprfl(
        "test_resnet",
        class_names=names,
        text_embeddings=_random_embeddings(names),
        pretrained=False,
        text_encoder_cfg={"model_name": "RN50-quickgelu", "embed_dim": EMBED_DIM},
        **TINY_HEAD,
    ).eval()
    return model.save_pretrained(tmp_path_factory.mktemp("doc_model") / "tiny"), model


@pytest.mark.parametrize("path", FILES_WITH_BLOCKS, ids=_rel)
def test_doc_python_blocks_run(path: Path, saved_tiny, tmp_path, monkeypatch) -> None:
    saved, model = saved_tiny
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for i in range(3):  # the files the predicting guide opens
        pixels = (torch.rand(40, 48, 3) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(tmp_path / ("photo.jpg" if i == 0 else f"p{i}.png"))
    (tmp_path / "photos").mkdir()
    for i in range(2):
        Image.open(tmp_path / f"p{i + 1}.png").save(tmp_path / "photos" / f"{i}.png")
    env = _Env(saved)
    _install(monkeypatch, env)
    ns = _namespace(model)
    ns["model"] = CPRFL.from_pretrained(saved).eval()
    ran, executed = 0, ""
    for line, first, code in python_blocks(path):
        if (_rel(path), first) in EXEMPT:
            continue
        try:
            exec(compile(code, f"{_rel(path)}:{line}", "exec"), ns)
        except Exception as e:
            pytest.fail(
                f"{_rel(path)}:{line} (block starting {first!r}) failed: {type(e).__name__}: "
                f"{e}\nMake it run with the stand-ins of tests/test_doc_examples.py, or list it "
                "in EXEMPT with the reason."
            )
        ran += 1
        executed += code
    if "push_to_hub(" in executed:
        assert env.pushed, "the blocks call push_to_hub but the stand-in saw no call"
    assert ran or all((_rel(path), f) in EXEMPT for _, f, _ in python_blocks(path))


def test_predicting_guide_results_are_real(saved_tiny, tmp_path, monkeypatch) -> None:
    """The guide's calibrate-then-predict story, checked beyond 'it runs'."""
    saved, _ = saved_tiny
    monkeypatch.chdir(tmp_path)
    ns = _namespace(CPRFL.from_pretrained(saved))
    model = CPRFL.from_pretrained(saved).eval()
    from cprfl_zoo.thresholds import calibrate_thresholds

    result = calibrate_thresholds(ns["val_logits"], ns["val_targets"])
    model.set_thresholds(result.as_list())
    model.save_pretrained(tmp_path / "cal")
    reloaded = CPRFL.from_pretrained(tmp_path / "cal").eval()
    assert reloaded.thresholds == pytest.approx(result.as_list())
    preds = reloaded.predict(ns["images"])
    with torch.no_grad():
        probs = reloaded(ns["images"]).sigmoid()
    expected = probs >= torch.tensor(result.as_list())
    assert [p.indices for p in preds] == [row.nonzero().flatten().tolist() for row in expected]
    assert np.isfinite(result.global_threshold)
