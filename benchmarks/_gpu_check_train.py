"""``gpu_check.py``'s section 2: ``examples/train.py`` in every precision mode, and resume.

The data is generated once per run: long-tailed multi-label digit composites
(:func:`cprfl_zoo.synthetic.make_digit_composites`, 10 classes) at ``Sizes.image_side`` pixels,
saved as JPEG files in the image-list format train.py reads (``--train-list``, ``--test-list``,
``--image-root``, ``--classes``). train.py has no step limit, so the training list repeats the
files until it holds ``steps x batch`` lines. Every run goes through ``_train_runner.py``, which
records the loss of every step, the epoch times and the peak memory (see its docstring). The
data and the run helpers here serve section 3 (``_gpu_check_torchrun.py``) too.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _gpu_check_core import (
    HERE,
    CommandResult,
    Context,
    python_command,
    run_command,
    subprocess_env,
)

RUNNER = HERE / "_train_runner.py"

# (name, train.py flags); the --compile mode only where Sizes.compile_mode is set.
PRECISION_MODES = (
    ("fp32", ["--amp", "none"]),
    ("bf16", ["--amp", "bf16"]),
    ("bf16+channels_last", ["--amp", "bf16", "--channels-last"]),
    ("bf16+compile", ["--amp", "bf16", "--compile"]),
)
# Seconds each item needs at least (GPU); the CPU's tiny runs need a fraction of it.
MIN_MODE_S, MIN_COMPILE_S, MIN_RESUME_S = 25.0, 60.0, 30.0

# What train.py would need for these checks and does not have (reported in the JSON).
MISSING_TRAIN_FLAGS = (
    "--max-steps / --steps-per-epoch: no way to bound the steps of an epoch but the list's "
    "length (the check repeats the image files in the list)",
    "--log-interval or a per-step loss log: metrics.json holds one mean loss per epoch (the "
    "check records each step's loss by wrapping the loss function)",
    "images/s and peak GPU memory in the log (the check times train_one_epoch itself)",
    "--deterministic: bit-exact resume on CUDA needs cuDNN/cuBLAS determinism (the check's "
    "runner sets it)",
    "--dist-backend: timm picks NCCL on CUDA; gloo on CUDA tensors, or two processes on one "
    "GPU, need the runner's patch of init_distributed_device",
    "--eval-every / --no-eval: every epoch evaluates model and EMA on the test list and writes "
    "a full checkpoint",
)


@dataclass(frozen=True)
class TrainData:
    """The generated image lists (paths as train.py's flags take them)."""

    root: Path
    unique: list[str]
    test_list: Path
    classes: Path

    def train_list(self, lines: int) -> Path:
        """A training list of ``lines`` entries, cycling over the files (written once)."""
        path = self.root / f"train-{lines}.txt"
        if not path.is_file():
            path.write_text(
                "\n".join(self.unique[i % len(self.unique)] for i in range(lines)) + "\n",
                encoding="utf-8",
            )
        return path


def _save_jpegs(images: Any, targets: Any, root: Path, split: str) -> list[str]:
    from PIL import Image

    folder = root / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    pixels = (images * 255).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()

    def save(i: int) -> str:
        rel = f"images/{split}/{i:05d}.jpg"
        Image.fromarray(pixels[i]).save(root / rel, quality=90)
        ids = targets[i].nonzero().flatten().tolist()
        return " ".join([rel, *map(str, ids)])

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(save, range(len(pixels))))


def make_data(ctx: Context) -> TrainData:
    """Generate the data set once per run (reused by every training section)."""
    from cprfl_zoo.synthetic import make_digit_composites

    root = ctx.work / "data"
    sizes = ctx.sizes
    done = root / "done.json"
    if done.is_file():
        meta = json.loads(done.read_text(encoding="utf-8"))
        return TrainData(root, meta["unique"], root / "test.txt", root / "classes.txt")
    kwargs = {"img_size": sizes.image_side, "max_digits": 3}
    train = make_digit_composites(sizes.unique_images, imbalance=20, seed=0, **kwargs)
    test = make_digit_composites(sizes.test_images, pool="test", seed=1, **kwargs)
    unique = _save_jpegs(train.images, train.targets, root, "train")
    tests = _save_jpegs(test.images, test.targets, root, "test")
    (root / "test.txt").write_text("\n".join(tests) + "\n", encoding="utf-8")
    (root / "classes.txt").write_text("\n".join(train.class_names) + "\n", encoding="utf-8")
    done.write_text(json.dumps({"unique": unique}), encoding="utf-8")
    return TrainData(root, unique, root / "test.txt", root / "classes.txt")


def workers(ctx: Context) -> int:
    """DataLoader workers per process: ``Sizes.workers``, else from the CPU count."""
    import os

    if ctx.sizes.workers is not None:
        return ctx.sizes.workers
    return max(1, min(12, (os.cpu_count() or 2) - 2))


def train_argv(
    ctx: Context, data: TrainData, output: Path, steps: int, epochs: int, procs: int = 1
) -> list[str]:
    """train.py arguments for ``epochs`` epochs of ``steps`` steps (per process) on the data."""
    sizes = ctx.sizes
    argv = [
        "--train-list", data.train_list(steps * sizes.batch * procs),
        "--test-list", data.test_list,
        "--image-root", data.root,
        "--classes", data.classes,
        "--model", sizes.backbone,
        "--no-pretrained-backbone",
        "--text-encoder", "random",
        "--text-dim", sizes.text_dim,
        "--img-size", sizes.img_size,
        "--batch-size", sizes.batch,
        "--workers", workers(ctx),
        "--epochs", epochs,
        "--head-threshold", 100,
        "--tail-threshold", 20,
        "--device", ctx.device,
        "--output", output,
    ]  # fmt: skip
    for flag, value in sizes.head.items():
        argv += [flag, value]
    return [str(a) for a in argv]


def run_plan(
    ctx: Context,
    plan: list[dict[str, Any]],
    name: str,
    timeout: float,
    *,
    torchrun: int = 0,
    runner_flags: tuple[str, ...] = (),
    env_extra: dict[str, str] | None = None,
) -> tuple[CommandResult, dict[int, list[dict[str, Any]]]]:
    """Run a plan through the runner (under torchrun with ``torchrun`` processes); read stats."""
    folder = ctx.work / "plans"
    folder.mkdir(parents=True, exist_ok=True)
    plan_path = folder / f"{name}.json"
    plan_path.write_text(json.dumps(plan), encoding="utf-8")
    stats = folder / f"{name}-stats"
    args = [RUNNER, "--plan", plan_path, "--stats", stats, *runner_flags]
    if torchrun:
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", torchrun]
        cmd = python_command(*launcher, *args)
    else:
        cmd = python_command(*args)
    result = run_command(cmd, timeout, ctx.log_path, env=subprocess_env(**(env_extra or {})))
    ranks = {}
    for path in sorted(folder.glob(f"{name}-stats.rank*.json")):
        ranks[int(path.name.rsplit("rank", 1)[1].split(".")[0])] = json.loads(
            path.read_text(encoding="utf-8")
        )
    return result, ranks


def summarize_run(entry: dict[str, Any]) -> dict[str, Any]:
    """Throughput, memory and loss curve of one recorded train.py run."""
    epochs = entry.get("epochs", [])
    steady = epochs[1:] or epochs
    out: dict[str, Any] = {
        "steps": sum(e["steps"] for e in epochs),
        "epoch_seconds": [e["seconds"] for e in epochs],
        "epoch_losses": [e["loss"] for e in epochs],
        "losses": entry.get("losses", []),
        "wall_s": entry.get("wall_s"),
    }
    if steady:
        out["images_per_s"] = sum(e["images"] for e in steady) / sum(e["seconds"] for e in steady)
        out["first_epoch_images_per_s"] = epochs[0]["images"] / epochs[0]["seconds"]
    for key in ("peak_mib", "peak_reserved_mib", "max_rss_mib", "optimizer_steps", "error"):
        if entry.get(key) is not None:
            out[key] = entry[key]
    return out


def item_timeout(ctx: Context, need_later: float, need_now: float) -> float | None:
    left = ctx.left() - need_later
    return left if left >= need_now else None


def time_scale(ctx: Context) -> float:
    return 1.0 if ctx.device == "cuda" else 0.2


def _mode_row(mode: str, flags: list[str], result: CommandResult, entry: dict) -> dict[str, Any]:
    row: dict[str, Any] = {"mode": mode, "flags": flags, **summarize_run(entry)}
    ok = result.returncode == 0 and bool(entry) and not entry.get("error")
    row["status"] = "ok" if ok else ("timeout" if result.timed_out else "failed")
    if not ok:
        row["command"] = result.as_dict()
    return row


def run_precision_modes(ctx: Context, data: TrainData) -> list[dict[str, Any]]:
    """train.py in every precision mode, one process each (``Sizes.group_modes``: one for all).

    Each mode's timeout leaves the later modes and the resume check their minimum time.
    """
    sizes, scale = ctx.sizes, time_scale(ctx)
    names = [name for name, _ in PRECISION_MODES]
    runnable = [(n, f) for n, f in PRECISION_MODES if sizes.compile_mode or "--compile" not in f]

    def need(flags: list[str]) -> float:
        return (MIN_COMPILE_S if "--compile" in flags else MIN_MODE_S) * scale

    def argv(mode: str, flags: list[str]) -> list[str]:
        out = ctx.work / "train" / mode
        return train_argv(ctx, data, out, sizes.steps_per_epoch, sizes.epochs) + flags

    rows: dict[str, dict[str, Any]] = {
        mode: {"mode": mode, "flags": flags, "status": "skipped", "reason": "time budget"}
        for mode, flags in PRECISION_MODES
    }
    for mode, flags in PRECISION_MODES:
        if (mode, flags) not in runnable:
            rows[mode]["reason"] = "--compile is not run by --tiny (inductor builds)"
    groups = [runnable] if sizes.group_modes else [[m] for m in runnable]
    for group in groups:
        later = sum(need(f) for n, f in runnable if names.index(n) > names.index(group[-1][0]))
        timeout = item_timeout(ctx, later + MIN_RESUME_S * scale, sum(need(f) for _, f in group))
        tag = "+".join(n for n, _ in group) if len(group) > 1 else group[0][0]
        if timeout is None:
            continue
        ctx.log(f"[gpu_check]   train.py {tag} ({timeout:.0f} s at most)")
        plan = [{"name": mode, "argv": argv(mode, flags)} for mode, flags in group]
        result, ranks = run_plan(ctx, plan, tag.replace("+", "_"), timeout)
        entries = {e["name"]: e for e in ranks.get(0, [])}
        for mode, flags in group:
            rows[mode] = _mode_row(mode, flags, result, entries.get(mode, {}))
            shutil.rmtree(ctx.work / "train" / mode, ignore_errors=True)  # GBs of checkpoints
    return [rows[mode] for mode in names]


def _compare_checkpoints(a: Path, b: Path) -> dict[str, Any]:
    import torch

    ca = torch.load(a, map_location="cpu", weights_only=True)
    cb = torch.load(b, map_location="cpu", weights_only=True)
    out: dict[str, Any] = {}
    for part in ("model", "ema"):
        sa, sb = ca.get(part) or {}, cb.get(part) or {}
        diffs = [
            float((sa[k].double() - sb[k].double()).abs().max())
            for k in sa
            if k in sb and sa[k].is_floating_point() and sa[k].numel()
        ]
        out[f"{part}_max_abs_diff"] = max(diffs, default=0.0)
        out[f"{part}_tensors_differing"] = sum(d > 0 for d in diffs)
    out["history_equal"] = ca.get("history") == cb.get("history")
    return out


def resume_check(ctx: Context, data: TrainData, worker_count: int | None = None) -> dict[str, Any]:
    """Two epochs straight vs one epoch, stop, ``--resume``: the final weights must be equal.

    The three runs share one process with deterministic kernels; the runs use bf16 autocast
    and the precision modes' loader workers (``worker_count`` overrides them).
    """
    timeout = item_timeout(ctx, 0.0, MIN_RESUME_S * time_scale(ctx))
    if timeout is None:
        return {"status": "skipped", "reason": "time budget"}
    steps = ctx.sizes.resume_steps
    tag = "resume" if worker_count is None else f"resume-workers{worker_count}"
    root = ctx.work / tag

    def argv(out: str, *extra: str) -> list[str]:
        args = [*train_argv(ctx, data, root / out, steps, 2), "--amp", "bf16", *extra]
        if worker_count is not None:
            args[args.index("--workers") + 1] = str(worker_count)
        return args

    plan = [
        {"name": "uninterrupted", "argv": argv("a")},
        {"name": "stopped", "argv": argv("b", "--stop-after-epoch", "1")},
        {"name": "resumed", "argv": argv("b", "--resume", str(root / "b" / "checkpoint-last.pth"))},
    ]
    ctx.log(f"[gpu_check]   resume check {tag} ({timeout:.0f} s at most)")
    result, ranks = run_plan(
        ctx,
        plan,
        tag,
        timeout,
        runner_flags=("--deterministic",),
        env_extra={"CUBLAS_WORKSPACE_CONFIG": ":4096:8"},
    )
    runs = {r["name"]: r for r in ranks.get(0, [])}
    out: dict[str, Any] = {"workers": int(argv("a")[argv("a").index("--workers") + 1])}
    if result.returncode != 0 or len(runs) < 3 or any(r.get("error") for r in runs.values()):
        out.update(status="timeout" if result.timed_out else "failed", command=result.as_dict())
        out["errors"] = {n: r.get("error") for n, r in runs.items() if r.get("error")}
        return out
    full, resumed = runs["uninterrupted"], runs["resumed"]
    stopped = runs["stopped"]
    resumed_losses = stopped["losses"] + resumed["losses"]
    out.update(
        model_equal=full["model_sha256"] == resumed["model_sha256"],
        ema_equal=full["ema_sha256"] == resumed["ema_sha256"],
        optimizer_steps=[full["optimizer_steps"], resumed["optimizer_steps"]],
        steps_equal=full["optimizer_steps"] == resumed["optimizer_steps"] == [2 * steps],
        losses_equal=full["losses"] == resumed_losses,
        losses_uninterrupted=full["losses"],
        losses_resumed=resumed_losses,
    )
    equal = out["model_equal"] and out["ema_equal"] and out["steps_equal"] and out["losses_equal"]
    if not equal:
        name = "checkpoint-last.pth"
        out.update(_compare_checkpoints(root / "a" / name, root / "b" / name))
    out["status"] = "ok" if equal else "failed"
    shutil.rmtree(root, ignore_errors=True)
    return out


def run_train(ctx: Context) -> dict[str, Any]:
    """Section 2: train.py in fp32, bf16, bf16 + channels_last, bf16 + --compile; resume."""
    data = make_data(ctx)
    modes = run_precision_modes(ctx, data)
    resume = resume_check(ctx, data)
    out: dict[str, Any] = {"modes": modes, "resume": resume}
    if resume.get("status") == "failed" and workers(ctx) > 0:
        # Which part breaks it: the persistent loader workers' RNG, or the device's kernels.
        out["resume_workers0"] = resume_check(ctx, data, worker_count=0)
    out["missing_train_flags"] = list(MISSING_TRAIN_FLAGS)
    ran = [m for m in modes if m["status"] != "skipped"]
    bad = [m for m in ran if m["status"] != "ok"] + [resume] * (resume["status"] != "ok")
    out["status"] = "ok" if ran and not bad else ("failed" if ran else "skipped")
    return out
