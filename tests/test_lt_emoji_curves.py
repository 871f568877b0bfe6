"""Tests of the emoji benchmark's finetune-top regime, training curves and shared learning rates.

timm's ``test_efficientnet`` (no weights) stands in for EfficientNet-Lite0: the same
``conv_stem``, ``blocks``, ``conv_head``, ``bn2`` layout. No tarball or network is needed.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _lt_curves
import _lt_emoji_methods
import _lt_emoji_report
import _lt_train
from _heads import CPRFLOnTokens, PooledLinear, TopOnFeatures, bottom_features
from _lt_diagnostics import cprfl_model
from _lt_emoji_data import EmojiConfig, backbone_lr_ratio, epochs_of, lr_grid
from conftest import TINY_HEAD

from cprfl_zoo.backbone import backbone_tokens, create_backbone
from cprfl_zoo.metrics import long_tail_split

START = 3  # test_efficientnet has 5 block stages


@pytest.fixture(scope="module")
def backbone() -> nn.Module:
    torch.manual_seed(0)
    return create_backbone("test_efficientnet").eval()


# ---------------------------------------------------------------------- the top of a backbone
def test_top_on_bottom_features_is_the_whole_backbone(backbone):
    head = PooledLinear(backbone.num_features, 3)
    module = TopOnFeatures(copy.deepcopy(backbone), head, START).eval()
    x = torch.randn(4, 3, 64, 64)
    expected = head(backbone_tokens(backbone, backbone.forward_features(x)))
    with torch.no_grad():
        got = module(bottom_features(backbone, x, START))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_only_the_top_and_the_head_train(backbone):
    module = TopOnFeatures(copy.deepcopy(backbone), PooledLinear(backbone.num_features, 3), START)
    trained = {n for n, p in module.named_parameters() if p.requires_grad}
    assert "head.fc.weight" in trained and "backbone.conv_head.weight" in trained
    assert any(n.startswith(f"backbone.blocks.{START}.") for n in trained)
    assert not any(n.startswith(("backbone.conv_stem", "backbone.bn1.")) for n in trained)
    assert not any(n.startswith(f"backbone.blocks.{i}.") for n in trained for i in range(START))
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    feats = bottom_features(backbone, torch.randn(4, 3, 64, 64), START)
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1)
    module.train()(feats).square().mean().backward()
    opt.step()
    for name, p in module.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == (name in trained and p.grad is not None and p.grad.any()), name


def test_cprfl_on_the_top_shares_the_model_backbone(backbone, monkeypatch):
    monkeypatch.setattr(_lt_emoji_methods, "BACKBONE", "test_efficientnet")
    cfg = replace(EmojiConfig(), top_start=START, head=dict(TINY_HEAD))
    emb = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    module = _lt_emoji_methods.build_method(
        "CPRFL-ASL", "finetune-top", backbone, emb, list("abc"), cfg
    )
    model = cprfl_model(module)
    assert isinstance(module.head, CPRFLOnTokens) and module.backbone is model.backbone
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    assert "backbone.conv_head.weight" in names  # lr * backbone_lr_ratio in _lt_train.train
    assert any(n.startswith("head.model.prompt") or "pi" in n for n in names)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            module.eval()(bottom_features(backbone, x, START)),
            model.eval()(x),
            rtol=1e-5,
            atol=1e-5,
        )


def test_extract_bottom_caches_the_canvases_and_their_mirror_images(backbone):
    canvases = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8).numpy()
    out = _lt_emoji_methods.extract_bottom(backbone, canvases, START, "cpu", batch=2)
    x = _lt_train.to_input(canvases)
    torch.testing.assert_close(out["plain"], bottom_features(backbone, x, START))
    torch.testing.assert_close(out["flipped"], bottom_features(backbone, x.flip(-1), START))
    gen = torch.Generator().manual_seed(0)
    batch_of = _lt_emoji_methods.batches("finetune-top", {"train": out}, {}, gen, "cpu")
    idx = torch.arange(3)
    torch.testing.assert_close(batch_of("train", idx, False), out["plain"])
    picked = batch_of("train", idx, True)
    flips = torch.rand(3, generator=torch.Generator().manual_seed(0)) < 0.5
    for i in range(3):
        torch.testing.assert_close(picked[i], out["flipped" if flips[i] else "plain"][i])


# ---------------------------------------------------------------------- curves
def test_train_reports_each_epochs_mean_batch_loss():
    torch.manual_seed(0)
    module = nn.Linear(4, 2)
    x, y = torch.randn(10, 4), (torch.rand(10, 2) < 0.5).float()
    seen: list[float] = []
    bce = nn.BCEWithLogitsLoss()

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = bce(logits, targets)
        seen.append(float(loss.detach()))
        return loss

    reported: list[tuple[int, float]] = []
    _lt_train.train(
        module, lambda idx, training: x[idx], y, loss_fn, lr=1e-2, epochs=3, batch_size=4,
        weight_decay=0.0, seed=0, on_epoch=lambda e, loss: reported.append((e, loss)),
    )  # fmt: skip
    assert [e for e, _ in reported] == [0, 1, 2]
    per_epoch = [seen[i : i + 3] for i in range(0, 9, 3)]  # 10 samples, batch 4: 3 batches
    for (_, loss), batch_losses in zip(reported, per_epoch, strict=True):
        assert loss == pytest.approx(sum(batch_losses) / 3, rel=1e-6)


def test_run_one_records_a_curve_per_epoch_in_finetune_top(backbone, monkeypatch):
    monkeypatch.setattr(_lt_emoji_methods, "BACKBONE", "test_efficientnet")
    c_all, seen, unseen = 4, [0, 1, 2], [3]
    g = torch.Generator().manual_seed(0)
    canvases = {k: torch.randint(0, 256, (n, 64, 64, 3), generator=g, dtype=torch.uint8).numpy()
                for k, n in (("train", 12), ("val", 8), ("test", 8))}  # fmt: skip
    feats = {
        k: _lt_emoji_methods.extract_bottom(backbone, v, START, "cpu") for k, v in canvases.items()
    }
    ys_all = {
        k: (torch.rand(len(v), c_all, generator=g) < 0.5).float() for k, v in canvases.items()
    }
    for y in ys_all.values():
        y[:2] = 1.0
    ys = (ys_all["train"][:, seen], ys_all["val"][:, seen], ys_all["test"], seen)
    counts = ys[0].sum(0).long().tolist()
    split = long_tail_split(counts, head_threshold=max(counts), tail_threshold=min(counts) + 1)
    cfg = replace(EmojiConfig(), batch_size=4, top_start=START, head=dict(TINY_HEAD))
    emb = torch.nn.functional.normalize(torch.randn(c_all, 16, generator=g), dim=-1)
    batch_of = _lt_emoji_methods.batches("finetune-top", feats, canvases, g, "cpu")
    args = (2, batch_of, backbone, list("abcd"), emb, ys, split, unseen, cfg)
    for method in ("linear-ASL-RFS-cosine", "CPRFL-DB-RFS"):
        run = _lt_emoji_methods.run_one(method, "finetune-top", 1e-3, 0, *args)
        assert run["regime"] == "finetune-top" and run["epochs"] == 2
        curve = run["curve"]
        assert {k: len(v) for k, v in curve.items()} == {
            "train_loss": 2,
            "val_loss": 2,
            "val_mAP": 2,
        }
        # The last epoch's validation mAP is the run's validation mAP (the same model, scored).
        assert curve["val_mAP"][-1] == pytest.approx(run["val_mAP"], abs=1e-3)
    assert "unseen_ap" in run


def test_convergence_table_numbers():
    curve_a = {"train_loss": [1.0, 0.6, 0.5, 0.5], "val_loss": [1, 1, 1, 1],
               "val_mAP": [10.0, 30.0, 40.0, 39.0]}  # fmt: skip
    curve_b = {"train_loss": [2.0, 1.0, 0.8, 0.6], "val_loss": [1, 1, 1, 1],
               "val_mAP": [20.0, 30.0, 36.0, 41.0]}  # fmt: skip
    rows = {"m": [{"curve": curve_a}, {"curve": curve_b}], "no-curve": [{}]}
    assert _lt_curves.mean_curve(rows["m"], "val_mAP") == [15.0, 30.0, 38.0, 40.0]
    assert _lt_curves.last_quarter_change([1.0, 2.0, 4.0, 7.0]) == 3.0
    assert _lt_curves.last_quarter_change([1.0, 2.0, 4.0, 7.0, 8.0, 8.5, 9.0, 9.25]) == 0.75
    lines = _lt_curves.convergence_table(rows)
    row = next(line for line in lines if line.startswith("| m |"))
    # val mAP last 39/41; change -1/+5 -> 2 ± 3; best epoch 3/4; loss ratio 0.5/0.3; drop 0/-0.1
    assert (
        row == "| m | 4 | 40.00 ± 1.00 | 2.00 ± 3.00 | 3.5 ± 0.5 | 0.400 ± 0.100 | -0.050 ± 0.050 |"
    )
    assert not any(line.startswith("| no-curve") for line in lines)
    assert _lt_curves.convergence_table({"no-curve": [{}]}) == []


def test_plot_curves_refuses_runs_without_curves(tmp_path):
    pytest.importorskip("matplotlib", reason="the plot needs the benchmarks extra (matplotlib)")
    with pytest.raises(ValueError, match="no run has training curves"):
        _lt_curves.plot_curves({"frozen": {"m": [{}]}}, tmp_path / "c.png")


# ---------------------------------------------------------------------- learning rates
def _run(method: str, seed: int, lr: float, val: float) -> dict:
    return {"regime": "finetune-top", "method": method, "seed": seed, "lr": lr, "val_mAP": val}


def test_tools_reuse_their_heads_baseline_lr_in_finetune_top():
    config = {"seeds": [0, 1], "top_lrs": [3e-4, 1e-3], "frozen_lrs": [1e-3, 3e-3]}
    doc = {"config": {**config, "reuse_base_lr": ["finetune-top"], "anchor_weights": [1.0, 3.0]}}
    doc["runs"] = [_run("CPRFL-ASL", 0, 3e-4, 40.0)]
    grid = _lt_emoji_report.grid_points
    assert grid(doc, "finetune-top", "CPRFL-ASL") == [(3e-4, None), (1e-3, None)]
    assert grid(doc, "finetune-top", "CPRFL-DB") is None  # the baseline's grid is not done
    assert grid(doc, "frozen", "CPRFL-DB") == [(1e-3, None), (3e-3, None)]  # own grid there
    doc["runs"] += [_run("CPRFL-ASL", 0, 1e-3, 35.0), _run("linear-ASL", 0, 1e-3, 30.0)]
    doc["runs"] += [_run("linear-ASL", 0, 3e-4, 31.0)]
    assert grid(doc, "finetune-top", "CPRFL-DB") == [(3e-4, None)]
    assert grid(doc, "finetune-top", "linear-ASL-RFS-cosine") == [(3e-4, None)]
    # A one-point grid is chosen before any run; an anchored tool searches its weight there.
    assert _lt_emoji_report.chosen_point(doc, "finetune-top", "CPRFL-ASL-RFS") == (3e-4, None)
    assert grid(doc, "finetune-top", "CPRFL-ASL-RFS-anchor") == [(3e-4, 1.0), (3e-4, 3.0)]


def test_each_regime_has_its_grid_and_epochs():
    cfg = EmojiConfig()
    assert lr_grid(cfg, "finetune-top", "linear-ASL") == cfg.top_lrs
    assert lr_grid(cfg, "finetune-top", "CPRFL-ASL") == cfg.top_cprfl_lrs != cfg.top_lrs
    assert lr_grid(replace(cfg, top_cprfl_lrs=None), "finetune-top", "CPRFL-DB") == cfg.top_lrs
    assert lr_grid({"top_lrs": [1e-3]}, "finetune-top", "CPRFL-ASL") == (1e-3,)  # older files
    assert lr_grid(cfg, "finetune", "CPRFL-ASL") == cfg.finetune_lrs
    assert [epochs_of(cfg, r) for r in ("frozen", "finetune-top", "finetune")] == [
        cfg.frozen_epochs, cfg.top_epochs, cfg.finetune_epochs
    ]  # fmt: skip
    assert epochs_of({"top_epochs": 7}, "finetune-top") == 7


def test_top_backbone_lr_trains_the_top_at_one_lr_whatever_the_heads():
    # --top-backbone-lr: the optimiser's backbone group runs at that lr in finetune-top only.
    shared = replace(EmojiConfig(), top_backbone_lr=3e-3)
    assert backbone_lr_ratio(shared, "finetune-top", 1e-3) == pytest.approx(3.0)
    assert backbone_lr_ratio(shared, "finetune-top", 3e-2) == pytest.approx(0.1)
    assert backbone_lr_ratio(shared, "finetune", 1e-3) == shared.backbone_lr_ratio == 0.1
    assert backbone_lr_ratio(EmojiConfig(), "finetune-top", 1e-3) == 0.1
    module = nn.Sequential()
    module.add_module("backbone", nn.Linear(3, 3))
    module.add_module("head", nn.Linear(3, 2))
    seen = {}
    real = torch.optim.AdamW

    def adamw(groups, lr):
        seen.update({id(p): g["lr"] for g in groups for p in g["params"]})
        return real(groups, lr=lr)

    x, y = torch.randn(8, 3), (torch.rand(8, 2) > 0.5).float()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim, "AdamW", adamw)
        _lt_emoji_methods.train(
            module, lambda i, tr: x[i], y, nn.BCEWithLogitsLoss(), lr=1e-3, epochs=1,
            cfg=replace(shared, batch_size=4), seed=0, regime="finetune-top",
        )  # fmt: skip
    assert seen[id(module.backbone.weight)] == pytest.approx(3e-3)
    assert seen[id(module.head.weight)] == pytest.approx(1e-3)
