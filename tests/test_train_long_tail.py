"""examples/train.py's long-tail options: --loss, --sampler, prompt anchoring and --recipe.

Tiny synthetic runs (48 digit composites: every class has positive and negative images, which
the Distribution-Balanced loss and logit adjustment need), in-process; one 2-process gloo run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from conftest import tiny_cprfl
from test_examples import ROOT, TINY_TRAIN, load_example, read_digest, state_dict_digest

from cprfl_zoo import CPRFL
from cprfl_zoo.losses import (
    AsymmetricLoss,
    DistributionBalancedLoss,
    LogitAdjustedLoss,
    PromptAnchorLoss,
    TwoWayLoss,
)
from cprfl_zoo.synthetic import DIGIT_NAMES

# 48 images, batch 16: 3 steps per epoch.
LT_TRAIN = [*TINY_TRAIN, "--synthetic-images", "48", "--batch-size", "16"]


@pytest.fixture(scope="module")
def train_script() -> ModuleType:
    return load_example("train")


def run(train_script: ModuleType, out: Path, *extra: str, epochs: int = 1) -> dict:
    """Train, return the checkpoint (and check the run's files)."""
    argv = [*LT_TRAIN, "--epochs", str(epochs), "--output", str(out), *extra]
    assert train_script.main(argv) == 0
    return torch.load(out / "checkpoint-last.pth", map_location="cpu", weights_only=True)


def list_counts(train_txt: Path, num_classes: int) -> tuple[list[int], int]:
    """Images per class and images, read from 'path id id ...' lines here by hand."""
    counts, lines = [0] * num_classes, train_txt.read_text().splitlines()
    for line in lines:
        for cid in set(line.split()[1:]):
            counts[int(cid)] += 1
    return counts, len(lines)


def num_steps(ckpt: dict) -> int:
    return {int(s["step"]) for s in ckpt["optimizer"]["state"].values()}.pop()


# ------------------------------------------------------------ recommended head
def test_cosine_classifier_flag_trains_the_recommended_configuration(
    train_script, tmp_path, capsys
):
    # The accuracy page's default for long-tailed lists: the cosine classifier with ASL and
    # repeat-factor sampling; the saved model scores with it, a plain run does not.
    flags = ("--cosine-classifier", "--sampler", "repeat-factor", "--repeat-threshold", "0.5")
    ckpt = run(train_script, tmp_path / "cos", *flags)
    assert any(k.endswith("logit_scale") for k in ckpt["model"]), sorted(ckpt["model"])[:5]
    assert CPRFL.from_pretrained(tmp_path / "cos" / "model").cosine_classifier
    args = train_script.parse_args([*LT_TRAIN, "--output", str(tmp_path / "plain")])
    assert "cosine_classifier" not in train_script.model_kwargs(args, None, None)
    # a resumed run keeps it; a saved --model keeps its own classifier
    cos_argv = [*LT_TRAIN, "--epochs", "1", "--output", str(tmp_path / "cos"), *flags[1:]]
    resume = ["--resume", str(tmp_path / "cos" / "checkpoint-last.pth")]
    with pytest.raises(SystemExit, match=r"--cosine-classifier is False but .* trained with True"):
        train_script.main([*cos_argv, *resume])
    saved = ["--model", f"local-dir:{tmp_path / 'cos' / 'model'}", "--cosine-classifier"]
    with pytest.raises(SystemExit):
        train_script.parse_args([*LT_TRAIN, "--output", str(tmp_path / "re"), *saved])
    assert "--cosine-classifier: the saved --model" in capsys.readouterr().err


# ---------------------------------------------------------------------- losses
@pytest.mark.parametrize(
    ("flags", "cls"),
    [
        ([], AsymmetricLoss),
        (["--loss", "bce"], AsymmetricLoss),
        (["--loss", "db"], DistributionBalancedLoss),
        (["--loss", "db", "--db-preset", "voc-lt", "--db-fix-init-bias"], DistributionBalancedLoss),
        (["--loss", "two-way"], TwoWayLoss),
        (["--loss", "logit-adjusted", "--la-tau", "0.5"], LogitAdjustedLoss),
    ],
)
def test_each_loss_trains_one_epoch_with_counts_from_the_list(train_script, tmp_path, flags, cls):
    ckpt = run(train_script, tmp_path, *flags)
    assert num_steps(ckpt) == 3
    history = json.loads((tmp_path / "metrics.json").read_text())
    assert math.isfinite(history[0]["train_loss"]) and history[0]["train_loss"] > 0
    assert f"loss: {cls.__name__}(" in (tmp_path / "log.txt").read_text()

    # the criterion the run used, rebuilt from its arguments and data, against the list's counts
    args = train_script.parse_args([*LT_TRAIN, "--output", str(tmp_path), *flags])
    from cprfl_zoo.data import MultiLabelImageList

    data = tmp_path / "synthetic_data"
    train_set = MultiLabelImageList(data / "train.txt", data, class_names=list(DIGIT_NAMES))
    loss = train_script.build_loss(args, train_set)
    assert type(loss) is cls
    counts, n = list_counts(data / "train.txt", 10)
    if cls is DistributionBalancedLoss:
        preset = "voc-lt" if "voc-lt" in flags else "coco-lt"
        lam = {"coco-lt": 2.0, "voc-lt": 5.0}[preset]
        assert loss.mu == {"coco-lt": 0.2, "voc-lt": 0.3}[preset] and loss.neg_scale == lam
        assert loss.fix_init_bias == ("--db-fix-init-bias" in flags)
        assert loss.inv_counts.tolist() == pytest.approx([1 / c for c in counts])
        bias = [-0.05 * math.log(n / c - 1) / (1 if loss.fix_init_bias else lam) for c in counts]
        assert loss.bias.tolist() == pytest.approx(bias, rel=1e-6)
    elif cls is LogitAdjustedLoss:
        offset = [0.5 * math.log((c / n) / (1 - c / n)) for c in counts]
        assert loss.tau == 0.5 and loss.offset.tolist() == pytest.approx(offset, rel=1e-6)
    elif cls is AsymmetricLoss:
        expected = (0, 0, 0.0) if "bce" in flags else (4, 0, 0.05)
        assert (loss.gamma_neg, loss.gamma_pos, loss.clip) == expected
        assert loss.reduction == "mean"


def test_db_loss_names_classes_without_images(train_script, tmp_path):
    # 16 images: classes 8 and 9 have none, so DB's 1/n and log(N/n - 1) do not exist
    argv = [*TINY_TRAIN, "--epochs", "1", "--output", str(tmp_path), "--loss", "db"]
    with pytest.raises(SystemExit, match=r"--loss db on the training list: .*classes \[8, 9\]"):
        train_script.main(argv)


# ---------------------------------------------------------------------- samplers
def test_class_aware_sampler_trains_and_favours_rare_classes(train_script, tmp_path):
    ckpt = run(train_script, tmp_path, "--sampler", "class-aware", "--samples-per-class", "2")
    assert num_steps(ckpt) == 3 and ckpt["args"]["samples_per_class"] == 2
    assert "sampler: class-aware; epoch 1 draws 48 images" in (tmp_path / "log.txt").read_text()
    # the loader's sampler: per class visit 2 images of that class, every class equally often
    args = train_script.parse_args(
        [*LT_TRAIN, "--output", str(tmp_path), "--sampler", "class-aware"]
    )
    from cprfl_zoo.data import ClassAwareSampler, MultiLabelImageList

    data = tmp_path / "synthetic_data"
    train_set = MultiLabelImageList(data / "train.txt", data, class_names=list(DIGIT_NAMES))
    ctx = train_script.setup_distributed("cpu")
    sampler = train_script.build_train_sampler(ctx, args, train_set)
    assert isinstance(sampler, ClassAwareSampler) and sampler.samples_per_class == 3


def test_repeat_factor_schedule_covers_every_epochs_own_length(train_script, tmp_path):
    # threshold 0.2 repeats images of rare classes; each epoch's list has its own length
    flags = ["--sampler", "repeat-factor", "--repeat-threshold", "0.2", "--batch-size", "4"]
    ckpt = run(train_script, tmp_path, *flags, epochs=3)
    from cprfl_zoo.data import MultiLabelImageList, RepeatFactorSampler

    data = tmp_path / "synthetic_data"
    train_set = MultiLabelImageList(data / "train.txt", data, class_names=list(DIGIT_NAMES))
    sampler = RepeatFactorSampler(train_set, threshold=0.2, seed=0, drop_last=True)
    lengths = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        lengths.append(len(sampler) // 4)
    assert min(lengths) > 12  # plain epochs: 12 steps of 4 images
    assert num_steps(ckpt) == sum(lengths)
    assert ckpt["scheduler"]["total_steps"] == sum(lengths)  # OneCycle ends at the last step
    assert ckpt["scheduler"]["last_epoch"] == sum(lengths)


# ---------------------------------------------------------------------- prompt anchoring
def prompt_drift(train_script, out: Path, ckpt: dict) -> float:
    model = CPRFL.from_pretrained(out / "model")
    model.load_state_dict(ckpt["model"])
    with torch.no_grad():
        return (model.get_prompts() - initial_prompts(train_script, out)).square().mean().item()


def initial_prompts(train_script, out: Path) -> torch.Tensor:
    """The prompts of the run's model before its first step (the same seed builds it again)."""
    args = train_script.parse_args([*LT_TRAIN, "--output", str(out)])
    model = train_script.build_model(train_script.setup_distributed("cpu"), args, list(DIGIT_NAMES))
    with torch.no_grad():
        return model.get_prompts()


def test_anchor_starts_at_the_initial_prompts_and_limits_their_drift(train_script, tmp_path):
    lr = ["--lr", "3e-2", "--ema", "0"]
    free = run(train_script, tmp_path / "free", *lr, epochs=2)
    held = run(train_script, tmp_path / "held", *lr, "--anchor-weight", "100", epochs=2)
    assert free["prompt_anchor"] is None
    assert torch.equal(held["prompt_anchor"], initial_prompts(train_script, tmp_path / "held"))
    history = json.loads((tmp_path / "held" / "metrics.json").read_text())
    assert all(h["train_anchor_penalty"] > 0 for h in history)
    assert (
        "PromptAnchorLoss(num_classes=10, kind='l2')" in (tmp_path / "held" / "log.txt").read_text()
    )
    drift_free = prompt_drift(train_script, tmp_path / "free", free)
    drift_held = prompt_drift(train_script, tmp_path / "held", held)
    assert drift_held < 0.5 * drift_free, (drift_held, drift_free)


def test_anchor_penalty_is_the_weighted_formula(train_script, tmp_path):
    args = train_script.parse_args(
        [*LT_TRAIN, "--output", str(tmp_path), "--anchor-weight", "0.25", "--anchor-kind", "cosine"]
    )
    model = tiny_cprfl(list(DIGIT_NAMES)).train()
    state = train_script.build_state(train_script.setup_distributed("cpu"), args, model, 1)
    assert isinstance(state.anchor, PromptAnchorLoss) and state.anchor.kind == "cosine"
    start = model.get_prompts().detach()
    with torch.no_grad():
        for p in model.prompt_init.parameters():
            p.mul_(-0.5).add_(0.01)
    now = model.get_prompts().detach()
    cos = (now * start).sum(1) / (now.norm(dim=1) * start.norm(dim=1))
    penalty = train_script.anchor_penalty(state, args.anchor_weight)
    assert penalty().item() == pytest.approx(0.25 * (1 - cos).mean().item(), rel=1e-5)


def test_resume_keeps_the_first_starts_anchor(train_script, tmp_path):
    anchor = ["--anchor-weight", "10", "--lr", "3e-2"]
    whole = run(train_script, tmp_path / "whole", *anchor, epochs=2)
    out = tmp_path / "split"
    argv = [*LT_TRAIN, "--epochs", "2", "--output", str(out), *anchor]
    assert train_script.main([*argv, "--stop-after-epoch", "1"]) == 0
    ckpt = out / "checkpoint-last.pth"
    assert train_script.main([*argv, "--resume", str(ckpt)]) == 0
    split = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert torch.equal(split["prompt_anchor"], whole["prompt_anchor"])
    assert state_dict_digest(split["model"]) == state_dict_digest(whole["model"])
    # restore takes the checkpoint's anchor, not the prompts of the model it restores into
    # (which equal it here only because the seeded initialisation is rebuilt exactly)
    args = train_script.parse_args([*argv, "--resume", str(ckpt)])
    state = train_script.build_state(
        train_script.setup_distributed("cpu"), args, tiny_cprfl(list(DIGIT_NAMES)), 3
    )
    saved = train_script.load_checkpoint(args, list(DIGIT_NAMES))
    saved["model"] = state.model.state_dict()  # tiny_cprfl's own shapes differ from the run's
    saved["ema"] = state.ema.module.state_dict()
    saved["optimizer"], saved["scheduler"] = (
        state.optimizer.state_dict(),
        state.scheduler.state_dict(),
    )
    saved["prompt_anchor"] = torch.full_like(state.anchor.anchor, 0.5)
    train_script.restore(state, saved)
    assert torch.equal(state.anchor.anchor, torch.full_like(state.anchor.anchor, 0.5))
    with pytest.raises(SystemExit, match=r"--anchor-weight is 1\.0 but .* trained with 10\.0"):
        train_script.main([*argv, "--anchor-weight", "1", "--resume", str(ckpt)])
    with pytest.raises(SystemExit, match=r"--loss is 'bce' but .* trained with 'asl'"):
        train_script.main([*argv, "--loss", "bce", "--resume", str(ckpt)])
    # a checkpoint written before these options existed: read as ASL, uniform, no anchor
    old = torch.load(ckpt, map_location="cpu", weights_only=True)
    for key in ("loss", "sampler", "anchor_weight", "anchor_kind", "opt", "sched"):
        del old["args"][key]
    torch.save(old, tmp_path / "old.pth")
    with pytest.raises(SystemExit, match=r"--anchor-weight is 10\.0 but .* trained with 0\.0"):
        train_script.main([*argv, "--resume", str(tmp_path / "old.pth")])


# ---------------------------------------------------------------------- recipes
RECIPE_KEYS = ("opt", "sched", "weight_decay", "epochs", "batch_size", "lr", "backbone_lr_scale",
               "trainable_text_encoder", "img_size")  # fmt: skip


def parsed(train_script, tmp_path, *argv: str) -> argparse.Namespace:
    return train_script.parse_args([*argv, "--output", str(tmp_path / "out")])


@pytest.mark.parametrize(
    ("dataset", "lr"), [("coco-lt", 1e-5), ("voc-lt", 5e-5), (None, 1e-5)]
)  # fmt: skip
def test_paper_recipe_sets_the_papers_values(train_script, tmp_path, dataset, lr):
    data = ["--dataset", dataset, "--data-root", str(tmp_path)] if dataset else ["--synthetic"]
    args = parsed(train_script, tmp_path, *data, "--recipe", "paper")
    assert {k: getattr(args, k) for k in RECIPE_KEYS} == {
        "opt": "adam", "sched": "constant", "weight_decay": 1e-4, "epochs": 30,
        "batch_size": 32, "lr": lr, "backbone_lr_scale": 1.0, "trainable_text_encoder": False,
        "img_size": 448,
    }  # fmt: skip
    assert args.ema == 0.998 and args.loss == "asl"  # not part of the recipe: train.py's own


def test_official_code_recipe_sets_the_codes_values(train_script, tmp_path):
    args = parsed(train_script, tmp_path, "--synthetic", "--recipe", "official-code")
    assert {k: getattr(args, k) for k in (*RECIPE_KEYS, "pct_start", "ema")} == {
        "opt": "adamw", "sched": "onecycle", "weight_decay": 1e-4, "epochs": 80,
        "batch_size": 16, "lr": 1e-5, "backbone_lr_scale": 1.0, "trainable_text_encoder": True,
        "img_size": 448, "pct_start": 0.1, "ema": 0.998,
    }  # fmt: skip


def test_flags_override_a_recipe(train_script, tmp_path):
    args = parsed(
        train_script, tmp_path, "--dataset", "voc-lt", "--data-root", str(tmp_path),
        "--recipe", "paper", "--lr", "3e-4", "--epochs", "5", "--sched", "onecycle",
        "--img-size", "224",
    )  # fmt: skip
    assert (args.lr, args.epochs, args.sched, args.img_size) == (3e-4, 5, "onecycle", 224)
    assert (args.opt, args.batch_size) == ("adam", 32)  # the rest stays the recipe's
    assert train_script.recipe_values_kept(args) == {
        "opt": "adam", "weight_decay": 1e-4, "batch_size": 32, "backbone_lr_scale": 1.0,
        "trainable_text_encoder": False,
    }  # fmt: skip
    args = parsed(
        train_script, tmp_path, *TINY_TRAIN, "--recipe", "official-code",
        "--no-trainable-text-encoder", "--batch-size", "8",
    )  # fmt: skip
    assert not args.trainable_text_encoder and args.batch_size == 8 and args.lr == 1e-3


def test_recipe_optimisers_and_schedules(train_script, tmp_path):
    ctx = train_script.setup_distributed("cpu")
    paper = parsed(train_script, tmp_path, *TINY_TRAIN, "--recipe", "paper", "--lr", "2e-5")
    state = train_script.build_state(ctx, paper, tiny_cprfl(list(DIGIT_NAMES)), 4)
    assert type(state.optimizer) is torch.optim.Adam
    assert isinstance(state.scheduler, torch.optim.lr_scheduler.ConstantLR)
    for _ in range(3):
        state.optimizer.step()
        state.scheduler.step()
    groups = state.optimizer.param_groups
    assert {g["lr"] for g in groups} == {2e-5}  # backbone and head, constant
    assert {g["name"]: g["weight_decay"] for g in groups}["head"] == 1e-4

    official = parsed(
        train_script, tmp_path, *TINY_TRAIN, "--recipe", "official-code",
        "--no-trainable-text-encoder", "--lr", "1e-5",
    )  # fmt: skip
    state = train_script.build_state(ctx, official, tiny_cprfl(list(DIGIT_NAMES)), 10)
    assert type(state.optimizer) is torch.optim.AdamW
    assert isinstance(state.scheduler, torch.optim.lr_scheduler.OneCycleLR)
    assert {g["max_lr"] for g in state.optimizer.param_groups} == {1e-5}
    assert state.scheduler.total_steps == 80 * 10


def test_recipe_conflicts_say_where_the_value_came_from(train_script, tmp_path, capsys):
    with pytest.raises(SystemExit):
        parsed(train_script, tmp_path, *TINY_TRAIN, "--recipe", "official-code")
    err = capsys.readouterr().err
    assert "--trainable-text-encoder (set by --recipe official-code) needs a CLIP" in err
    assert "--no-trainable-text-encoder" in err


# ---------------------------------------------------------------------- arguments
def test_every_option_has_help(train_script, capsys):
    parser = train_script.build_parser()
    missing = [a.option_strings for a in parser._actions if not a.help or a.help == "==SUPPRESS=="]
    assert missing == []
    with pytest.raises(SystemExit):
        train_script.main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--recipe", "--loss", "--db-preset", "--la-tau", "--sampler", "--anchor-weight",
                 "--anchor-kind", "--opt", "--sched"):  # fmt: skip
        assert flag in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--db-preset", "voc-lt"], "--db-preset only applies to --loss db"),
        (["--db-fix-init-bias"], "--db-fix-init-bias only applies to --loss db"),
        (["--la-tau", "2"], "--la-tau only applies to --loss logit-adjusted"),
        (["--loss", "focal"], "--loss: invalid choice"),
        (["--samples-per-class", "2"], "--samples-per-class only applies to --sampler class-aware"),
        (["--repeat-threshold", "0.1"], "--repeat-threshold only applies to --sampler repeat-f"),
        (
            ["--sampler", "repeat-factor", "--repeat-threshold", "0"],
            r"expected a number in \(0, 1\]",
        ),
        (["--anchor-kind", "cosine"], r"--anchor-kind only applies to --anchor-weight > 0"),
        (["--anchor-weight", "-1"], "--anchor-weight: expected a number >= 0"),
        (["--recipe", "fast"], "--recipe: invalid choice"),
    ],
)
def test_long_tail_bad_arguments_name_the_argument(train_script, tmp_path, argv, message, capsys):
    with pytest.raises(SystemExit) as err:
        parsed(train_script, tmp_path, "--synthetic", *argv)
    assert err.value.code == 2
    assert re.search(message, capsys.readouterr().err)


# ---------------------------------------------------------------------- under torchrun
def test_ddp_long_tail_tools_end_with_identical_weights(tmp_path):
    out = tmp_path / "ddp"
    argv = [*TINY_TRAIN, "--synthetic-images", "48", "--batch-size", "8", "--epochs", "1"]
    argv += [
        "--loss",
        "db",
        "--sampler",
        "class-aware",
        "--anchor-weight",
        "1",
        "--posthoc-la-tau",
        "1",
        "--output",
        str(out),
    ]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(ROOT / "tests" / "ddp_train_with_digests.py"), *argv,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0, rank1 = read_digest(out, 0), read_digest(out, 1)
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["model"] == rank1["model"] and rank0["ema"] == rank1["ema"]
    ckpt = torch.load(out / "checkpoint-last.pth", map_location="cpu", weights_only=True)
    assert state_dict_digest(ckpt["model"]) == rank0["model"]
    assert num_steps(ckpt) == 3  # 48 class-aware draws / (2 ranks x 8)
    assert "loss: DistributionBalancedLoss(" in proc.stdout
    assert "sampler: class-aware; epoch 1 draws 24 images per process" in proc.stdout
    assert ckpt["prompt_anchor"] is not None
    from cprfl_zoo import CPRFL

    assert CPRFL.from_pretrained(out / "model").logit_adjustment is not None


def test_posthoc_logit_adjustment_is_saved_with_the_model(train_script, tmp_path):
    from cprfl_zoo import CPRFL
    from cprfl_zoo.losses import logit_adjustment_offset

    out = tmp_path / "run"
    argv = [*TINY_TRAIN, "--epochs", "1", "--output", str(out), "--posthoc-la-tau", "0.5"]
    assert train_script.main(argv) == 0
    model = CPRFL.from_pretrained(out / "model").eval()
    lines = (out / "synthetic_data" / "train.txt").read_text().splitlines()
    counts = torch.zeros(model.num_classes)
    for line in lines:
        for c in {int(t) for t in line.split()[1:]}:
            counts[c] += 1
    priors = (counts + 1) / (len(lines) + 2)  # the training priors, Laplace-smoothed
    expected = logit_adjustment_offset(priors, tau=0.5)
    torch.testing.assert_close(torch.tensor(model.logit_adjustment), expected.float())
    x = torch.rand(2, 3, 32, 32)
    raw = CPRFL.from_pretrained(out / "model")
    raw.set_logit_adjustment(None)
    raw.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(x), raw.eval()(x) - expected.float())
