"""Tests of the long-tail tools in the emoji benchmark (issue 21): methods, training, tables.

Tiny synthetic tokens and timm's ``test_resnet``; the npm tarballs and the ImageNet backbone are
never needed. The library pieces themselves are tested in tests/test_losses_*.py and
tests/test_data_samplers.py; here, that the benchmark wires them as documented.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _lt_emoji_compare
import _lt_emoji_methods
import _lt_emoji_report
import _lt_emoji_tools
import _lt_train
from _heads import PooledCosineLinear
from _lt_emoji_data import EmojiConfig
from _lt_thresholded import thresholded_scores
from conftest import TINY_HEAD, random_problem

from cprfl_zoo.metrics import average_precision, long_tail_split


# ---------------------------------------------------------------------- method specs
def test_method_names_map_to_their_tools():
    spec = _lt_emoji_tools.spec_of
    assert spec("CPRFL-ASL-cosine-anchor") == _lt_emoji_tools.MethodSpec(
        "cprfl", "asl", cosine=True, anchor=True
    )
    assert spec("linear-ASL-RFS").sampler == "repeat-factor"
    assert spec("CPRFL-ASL-CAS").sampler == "class-aware"
    assert spec("linear-ASL-LA").loss == "asl-la" and spec("CPRFL-DB").loss == "db"
    assert spec("CPRFL-ASL-random").random_text
    assert _lt_emoji_tools.anchor_base("CPRFL-ASL-cosine-anchor") == "CPRFL-ASL-cosine"
    assert _lt_emoji_tools.anchor_base("CPRFL-ASL") is None
    # Both heads get every tool (best against best).
    tools = {m.split("-", 1)[1] for m in _lt_emoji_tools.LINEAR_METHODS}
    assert tools <= {m.split("-", 1)[1] for m in _lt_emoji_tools.CPRFL_METHODS} | {"BCE"}
    with pytest.raises(ValueError, match="unknown method 'CPRFL-XYZ'"):
        spec("CPRFL-XYZ")


def test_losses_read_counts_from_the_targets_and_match_the_formulas():
    torch.manual_seed(0)
    y = (torch.rand(50, 4) < torch.tensor([0.5, 0.3, 0.1, 0.05])).float()
    y[0] = 1.0
    z = torch.randn(50, 4, dtype=torch.float64)
    pi = y.double().mean(0)
    la = _lt_emoji_tools.make_task_loss(_lt_emoji_tools.spec_of("linear-ASL-LA"), y)
    asl = _lt_emoji_tools.make_task_loss(_lt_emoji_tools.spec_of("linear-ASL"), y)
    # Loss-time logit adjustment: ASL of z + log(pi / (1 - pi)).
    expected = asl(z + torch.log(pi / (1 - pi)), y.double())
    assert float(la(z, y.double())) == pytest.approx(float(expected), rel=1e-6)
    db = _lt_emoji_tools.make_task_loss(_lt_emoji_tools.spec_of("CPRFL-DB"), y)
    assert db.inv_counts.tolist() == pytest.approx((1 / y.sum(0)).tolist())
    assert db.num_samples == 50 and db.neg_scale == 2.0 and db.mu == 0.2  # the coco-lt preset


def test_samplers_follow_the_spec():
    y = torch.zeros(40, 3)
    y[:30, 0] = 1
    y[30:39, 1] = 1
    y[39:, 2] = 1  # in 1 of 40 images: 2.5 % < the 5 % repeat threshold
    assert _lt_emoji_tools.make_sampler(_lt_emoji_tools.spec_of("linear-ASL"), y, 0) is None
    cas = _lt_emoji_tools.make_sampler(_lt_emoji_tools.spec_of("linear-ASL-CAS"), y, 0)
    picked = y[list(cas)].sum(0)
    assert len(cas) == 40 and picked[2] > 10  # the rarest class (1 image) is visited often
    rfs = _lt_emoji_tools.make_sampler(_lt_emoji_tools.spec_of("CPRFL-ASL-RFS"), y, 0)
    assert rfs.repeat_factors[39] == pytest.approx(math.sqrt(0.05 / 0.025))
    assert rfs.repeat_factors[:39].max() == 1


def test_cosine_linear_head_is_scaled_cosine_plus_one_bias():
    head = PooledCosineLinear(6, 3)
    with torch.no_grad():
        head.logit_bias.fill_(0.25)
    tokens = torch.randn(2, 4, 6)
    f = tokens.mean(1)
    w = head.weight.detach()
    cos = (f @ w.T) / (f.norm(dim=1, keepdim=True) * w.norm(dim=1))
    assert torch.allclose(head(tokens), 10 * cos + 0.25, atol=1e-5)


def test_anchored_loss_adds_the_weighted_mean_squared_prompt_change():
    from conftest import tiny_cprfl

    model = tiny_cprfl(["a", "b", "c"]).train()
    task = _lt_emoji_tools.make_task_loss(_lt_emoji_tools.spec_of("CPRFL-ASL"), torch.eye(3))
    loss = _lt_emoji_tools.AnchoredLoss(task, model, weight=5.0)
    anchor = model.get_prompts().detach().clone()
    assert not list(loss.parameters())  # the model's parameters are not the loss's
    with torch.no_grad():
        for p in model.prompt_init.parameters():
            p.add_(0.1)
    logits, targets = torch.randn(2, 3), torch.tensor([[1.0, 0, 0], [0, 1, 0]])
    moved = model.get_prompts()
    expected = task(logits, targets) + 5.0 * (moved - anchor).square().mean()
    out = loss(logits, targets)
    assert float(out.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    out.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# ---------------------------------------------------------------------- training loop
def test_train_takes_each_epochs_batches_from_the_sampler():
    class Listed:
        def __init__(self) -> None:
            self.epochs: list[int] = []

        def set_epoch(self, epoch: int) -> None:
            self.epochs.append(epoch)

        def __iter__(self):
            return iter(lists[: 10 - self.epochs[-1]])

    seen: list[list[int]] = []
    targets = torch.zeros(4, 2)
    lists = [3, 3, 3, 1, 1, 2, 0, 0, 1, 2]
    head = torch.nn.Linear(3, 2)

    def get_batch(idx: torch.Tensor, training: bool) -> torch.Tensor:
        seen.append(idx.tolist())
        return torch.zeros(len(idx), 3)

    sampler = Listed()
    _lt_train.train(
        head, get_batch, targets, torch.nn.BCEWithLogitsLoss(), lr=1e-2, epochs=2,
        batch_size=2, weight_decay=0.0, seed=0, sampler=sampler,
    )  # fmt: skip
    assert sampler.epochs == [0, 1]
    pairs = [lists[i : i + 2] for i in range(0, 10, 2)]
    assert seen == [*pairs, *pairs[:4], [lists[8]]]  # 10 then 9 indices, batches of 2


def test_train_without_a_sampler_keeps_the_seeded_permutations():
    seen: list[int] = []

    def get_batch(idx: torch.Tensor, training: bool) -> torch.Tensor:
        seen.extend(idx.tolist())
        return torch.zeros(len(idx), 3)

    _lt_train.train(
        torch.nn.Linear(3, 2), get_batch, torch.zeros(5, 2), torch.nn.BCEWithLogitsLoss(),
        lr=1e-2, epochs=2, batch_size=2, weight_decay=0.0, seed=7,
    )  # fmt: skip
    g = torch.Generator().manual_seed(7)
    expected = torch.randperm(5, generator=g).tolist() + torch.randperm(5, generator=g).tolist()
    assert seen == expected


# ---------------------------------------------------------------------- thresholded scores
def test_post_hoc_adjustment_moves_f1_at_one_half_but_no_ap():
    from cprfl_zoo.losses import adjust_logits

    val_s, val_y = random_problem(120, 5, seed=1)
    test_s, test_y = random_problem(150, 5, seed=2)
    priors = torch.tensor([0.4, 0.2, 0.1, 0.05, 0.02], dtype=torch.float64)
    out = thresholded_scores(val_s, val_y, test_s, test_y, priors, [3, 4])
    assert out["la_max_ap_change"] < 1e-4
    adjusted = adjust_logits(test_s, priors)
    ap = average_precision(test_s, test_y)
    assert torch.allclose(average_precision(adjusted, test_y), ap, atol=1e-6)
    assert out["half"] != out["half_la"]
    # CF1 at 0.5 by hand: harmonic mean of the mean per-class precision and recall.
    pred = torch.sigmoid(test_s) >= 0.5
    tp = (pred & (test_y > 0)).sum(0).double()
    precision = (tp / pred.sum(0).clamp(min=1)).mean()
    recall = (tp / test_y.sum(0)).mean()
    cf1 = 2 * precision * recall / (precision + recall)
    assert out["half"]["CF1"] == pytest.approx(100 * float(cf1), abs=1e-3)
    # Calibrated per-class thresholds follow the adjustment: the same F1 after it.
    cal_adjusted = thresholded_scores(
        adjust_logits(val_s, priors), val_y, adjusted, test_y, priors, [3, 4]
    )["cal"]
    assert cal_adjusted == pytest.approx(out["cal"], abs=1e-6)
    assert set(out["cal"]) == {"CF1", "OF1", "tail_CF1"}


# ---------------------------------------------------------------------- one run end to end
def test_run_one_trains_and_scores_tools_on_both_heads(monkeypatch):
    from cprfl_zoo.backbone import create_backbone

    monkeypatch.setattr(_lt_emoji_methods, "BACKBONE", "test_resnet")
    backbone = create_backbone("test_resnet").eval()
    c_all, seen, unseen = 5, [0, 1, 2, 3], [4]
    g = torch.Generator().manual_seed(0)
    tokens = {
        k: torch.randn(n, 4, backbone.num_features, generator=g)
        for k, n in (("train", 24), ("val", 16), ("test", 16))
    }
    ys_all = {k: (torch.rand(len(v), c_all, generator=g) < 0.4).float() for k, v in tokens.items()}
    for y in ys_all.values():
        y[:2] = 1.0
    ys = (ys_all["train"][:, seen], ys_all["val"][:, seen], ys_all["test"], seen)
    counts = ys[0].sum(0).long().tolist()
    split = long_tail_split(counts, head_threshold=max(counts), tail_threshold=min(counts) + 1)
    cfg = replace(EmojiConfig(), batch_size=8, head=dict(TINY_HEAD))
    emb = torch.nn.functional.normalize(torch.randn(c_all, 16, generator=g), dim=-1)

    def batch_of(name: str, idx: torch.Tensor, training: bool) -> torch.Tensor:
        return tokens[name][idx]

    names = list("abcde")
    args = (1, batch_of, backbone, names, emb, ys, split, unseen, cfg)
    lin = _lt_emoji_methods.run_one("linear-ASL-CAS", "frozen", 1e-3, 0, *args)
    cp = _lt_emoji_methods.run_one("CPRFL-ASL-cosine-anchor", "frozen", 1e-3, 0, *args, 30.0)
    assert cp["anchor_weight"] == 30.0 and "anchor_weight" not in lin
    for run in (lin, cp):
        assert set(run["f1"]) == {"cal", "half", "half_la", "la_max_ap_change"}
        assert set(run["val"]) >= {"mAP", "mAP_tail"}
    assert len(cp["unseen_ap"]) == 1 and "unseen_ap" not in lin
    with pytest.raises(ValueError, match="anchor weight"):
        _lt_emoji_methods.run_one("CPRFL-ASL-anchor", "frozen", 1e-3, 0, *args)


# ---------------------------------------------------------------------- selection and tables
def _run(method, seed, lr, val, tail, weight=None, val_tail=None):
    run = {
        "regime": "frozen", "method": method, "seed": seed, "lr": lr, "val_mAP": val,
        "val": {"mAP": val, "mAP_tail": val if val_tail is None else val_tail},
        "test": {"mAP": 50.0, "mAP_head": 60.0, "mAP_medium": 50.0, "mAP_tail": tail},
        "f1": {"cal": {"CF1": 40.0, "OF1": 45.0, "tail_CF1": 20.0},
               "half": {"CF1": 30.0, "OF1": 35.0}, "half_la": {"CF1": 33.0, "OF1": 30.0},
               "la_max_ap_change": 0.0},
    }  # fmt: skip
    if weight is not None:
        run["anchor_weight"] = weight
    return run


def _doc(runs):
    config = {"seeds": [0, 1, 2], "frozen_lrs": [1e-3, 3e-3], "frozen_cprfl_lrs": [1e-3]}
    return {"config": {**config, "anchor_weights": [30.0, 300.0]}, "runs": runs}


def test_anchored_methods_search_the_weight_at_their_base_learning_rate():
    runs = [_run("CPRFL-ASL", 0, 1e-3, 40.0, 10.0)]
    doc = _doc(runs)
    assert _lt_emoji_report.grid_points(doc, "frozen", "linear-ASL") == [(1e-3, None), (3e-3, None)]
    assert _lt_emoji_report.grid_points(doc, "frozen", "CPRFL-ASL") == [(1e-3, None)]
    assert _lt_emoji_report.grid_points(doc, "frozen", "CPRFL-ASL-anchor") == [
        (1e-3, 30.0), (1e-3, 300.0)
    ]  # fmt: skip
    assert _lt_emoji_report.chosen_point(doc, "frozen", "CPRFL-ASL-anchor") is None
    runs += [_run("CPRFL-ASL-anchor", 0, 1e-3, 41.0, 9.0, 30.0)]
    runs += [_run("CPRFL-ASL-anchor", 0, 1e-3, 42.0, 9.0, 300.0)]
    runs += [_run("CPRFL-ASL-anchor", 1, 1e-3, 42.0, 9.0, 300.0)]
    assert _lt_emoji_report.chosen_point(doc, "frozen", "CPRFL-ASL-anchor") == (1e-3, 300.0)
    selected = _lt_emoji_report.selected_runs(doc, "frozen", "CPRFL-ASL-anchor")
    assert [(r["seed"], r["anchor_weight"]) for r in selected] == [(0, 300.0), (1, 300.0)]


def test_t_interval_matches_the_formula():
    values = [1.0, 2.0, 4.0, 3.0, 5.0]
    mean, lo, hi = _lt_emoji_compare.t_interval(values)
    sd = math.sqrt(sum((v - 3.0) ** 2 for v in values) / 4)
    assert mean == 3.0
    assert hi - mean == pytest.approx(2.7764451 * sd / math.sqrt(5), rel=1e-6)
    assert mean - lo == pytest.approx(hi - mean)


def test_paired_table_uses_the_best_linear_on_validation_tail_and_counts_wins():
    rows = {
        # linear-ASL has the better validation tail, linear-BCE the better test tail on seed 1.
        "linear-ASL": [_run("linear-ASL", s, 1e-3, 40.0, t, val_tail=30.0)
                       for s, t in ((0, 20.0), (1, 21.0))],
        "linear-BCE": [_run("linear-BCE", s, 1e-3, 45.0, t, val_tail=20.0)
                       for s, t in ((0, 10.0), (1, 30.0))],
        "CPRFL-ASL": [_run("CPRFL-ASL", s, 1e-3, 40.0, t) for s, t in ((0, 25.0), (1, 26.0))],
    }  # fmt: skip
    assert _lt_emoji_compare.best_linear(rows) == "linear-ASL"
    lines = _lt_emoji_compare.paired_tail_table(rows)
    row = next(line for line in lines if line.startswith("| CPRFL-ASL |"))
    assert "| +5.00 | +5.00 |" in row and row.endswith("| 1 / 2 |")
    assert "(linear-ASL)" in lines[0]
    table = "\n".join(_lt_emoji_compare.method_table(rows) + _lt_emoji_compare.f1_table(rows))
    assert "40.00 ± 0.00" in table and "33.00 ± 0.00" in table


def test_the_plot_draws_the_baselines_and_each_heads_best_when_there_are_many():
    import _lt_plot

    runs = []
    for i, m in enumerate((*_lt_emoji_tools.LINEAR_METHODS, "CPRFL-ASL", "CPRFL-ASL-CAS")):
        runs.append(_run(m, 0, 1e-3, 40.0, 10.0, val_tail=20.0 + i))
    doc = _doc(runs)
    doc["config"]["frozen_lrs"] = [1e-3]
    best_linear = _lt_emoji_tools.LINEAR_METHODS[-1]  # the highest validation tail above
    assert _lt_plot.plotted_methods(doc, "frozen") == [
        "linear-ASL", best_linear, "CPRFL-ASL", "CPRFL-ASL-CAS"
    ]  # fmt: skip
