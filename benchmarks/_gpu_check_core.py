"""The frame of ``gpu_check.py``: sizes, the time budget, guarded sections, subprocess calls.

* :class:`Sizes`: every size the checks use, :data:`FULL` on a GPU, :data:`TINY` for CI.
* :class:`Section` and :func:`run_sections`: each section runs under its own deadline, cut from
  one global budget so that the later sections keep their share; an exception or a timeout is
  recorded in the section's entry and the next section runs.
* :func:`run_command`: a subprocess with a timeout, its output appended to the run's log file.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TAIL_CHARS = 3000


@dataclass(frozen=True)
class Sizes:
    """Everything ``gpu_check.py`` sizes: the GPU run (:data:`FULL`) or the CI run (:data:`TINY`).

    Attributes:
        backbone: timm backbone of the training runs.
        img_size: Image side of the training runs and of the official-vs-ours step.
        batch: Images per step (per process) of the training runs and of the step timing.
        unique_images: Generated image files; the training list repeats them to fill the steps.
        image_side: Side of the generated files (resized to ``img_size`` by the loader).
        test_images: Images of the test list (evaluated after every epoch, model and EMA).
        steps_per_epoch: Training steps per epoch (train.py has no step limit: the list's length
            sets it).
        epochs: Epochs of each precision mode (the first one's images/s includes the warm-up).
        resume_steps: Steps per epoch of the resume check (two epochs, stopped after the first).
        ddp_steps: Steps of the torchrun runs (one epoch).
        workers: DataLoader workers (``None``: from the CPU count).
        head: train.py head flags (``--embed-dim`` ...); empty: the paper's sizes.
        text_dim: Width of the random class embeddings.
        compile_mode: Whether the ``--compile`` mode runs.
        group_modes: Run the precision modes in one process (saves the start-ups on the CPU).
        step_classes: Classes of the official-vs-ours step (the COCO names, cut to this many).
        step_rounds: Timed rounds of the official-vs-ours step (3 steps each, interleaved).
        official_trainable: Also time this package's trainable-text-encoder mode (the official
            code re-encodes the prompts every step).
        official_overrides: Values set in the official model module (its ``config.py`` sizes)
            and the CLIP text tower's size, for a CPU-sized official model.
        head_cases: (batch, classes) of the head benchmark, cheapest first.
        head_tokens: Backbone tokens per image v of the head benchmark.
        head_kwargs: CPRFL head arguments of the head benchmark (empty: paper sizes).
        head_token_dim: Width d0 of the backbone tokens of the head benchmark.
        head_target_s: Seconds of timed calls aimed at per case and implementation.
    """

    backbone: str
    img_size: int
    batch: int
    unique_images: int
    image_side: int
    test_images: int
    steps_per_epoch: int
    epochs: int
    resume_steps: int
    ddp_steps: int
    workers: int | None
    head: dict[str, int]
    text_dim: int
    compile_mode: bool
    group_modes: bool
    step_classes: int
    step_rounds: int
    official_trainable: bool
    official_overrides: dict[str, Any]
    head_cases: tuple[tuple[int, int], ...]
    head_tokens: int
    head_kwargs: dict[str, int]
    head_token_dim: int
    head_target_s: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FULL = Sizes(
    backbone="resnet101",
    img_size=448,
    batch=16,
    unique_images=256,
    image_side=512,
    test_images=16,
    steps_per_epoch=50,
    epochs=2,
    resume_steps=6,
    ddp_steps=6,
    workers=None,
    head={},
    text_dim=1024,
    compile_mode=True,
    group_modes=False,
    step_classes=80,
    step_rounds=4,
    official_trainable=True,
    official_overrides={},
    head_cases=tuple((b, c) for c in (80, 1000, 10000, 20000) for b in (1, 8)),
    head_tokens=196,
    head_kwargs={},
    head_token_dim=2048,
    head_target_s=0.3,
)

TINY_HEAD = {"embed_dim": 32, "num_heads": 2, "head_dim": 8, "mlp_hidden_dim": 24}

TINY = Sizes(
    backbone="test_resnet",
    img_size=32,
    batch=4,
    unique_images=6,
    image_side=48,
    test_images=4,
    steps_per_epoch=2,
    epochs=2,
    resume_steps=1,
    ddp_steps=1,
    workers=0,
    head={"--embed-dim": 32, "--num-heads": 2, "--head-dim": 8, "--mlp-dim": 24},
    text_dim=16,
    compile_mode=False,
    group_modes=True,
    step_classes=8,
    step_rounds=1,
    official_trainable=False,
    official_overrides={
        "model": {"feature_d": 32, "head_num": 2, "dim_head": 8, "mlp_dim": 24},
        "clip": {
            "transformer_width": 32,
            "transformer_heads": 2,
            "transformer_layers": 1,
            "vision_layers": (1, 1, 1, 1),
            "vision_width": 8,
        },
    },
    head_cases=((1, 8), (2, 16)),
    head_tokens=16,
    head_kwargs=TINY_HEAD,
    head_token_dim=64,
    head_target_s=0.02,
)


@dataclass
class Budget:
    """A global time budget in seconds, counted from its creation."""

    total_s: float
    start: float = field(default_factory=time.monotonic)

    @property
    def end(self) -> float:
        return self.start + self.total_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start


@dataclass
class Context:
    """What a section gets: the options, the sizes, its deadline and where to write.

    Attributes:
        device: ``"cuda"`` or ``"cpu"``.
        dtype: Autocast dtype of the step and head timings (``float32``: none).
        sizes: The sizes of this run.
        work: A scratch folder (deleted at the end unless ``--keep-work``).
        log_path: The run's log file (every subprocess's output is appended).
        official_dir: The official CPRFL checkout, if given.
        deadline: ``time.monotonic()`` by which the section must end.
        log: Prints a progress line.
    """

    device: str
    dtype: str
    sizes: Sizes
    work: Path
    log_path: Path
    official_dir: Path | None
    deadline: float = 0.0
    log: Callable[[str], None] = print

    def left(self) -> float:
        """Seconds left before the section's deadline."""
        return self.deadline - time.monotonic()


@dataclass(frozen=True)
class Section:
    """One guarded part of the check.

    Attributes:
        name: Key in the JSON and name for ``--sections``.
        title: One line for the log and the table.
        run: Returns the section's entry; its ``status`` is ``ok``, ``failed`` (ran, a check
            failed), ``skipped`` (with ``reason``) or ``partial``.
        cap_s: Most seconds of a 420-second budget it may use (scaled with the budget).
        floor_s: Seconds the sections before it leave for it.
    """

    name: str
    title: str
    run: Callable[[Context], dict[str, Any]]
    cap_s: float
    floor_s: float


DEFAULT_BUDGET_S = 420.0
MIN_START_S = 5.0


def run_sections(
    sections: Sequence[Section], ctx: Context, budget: Budget
) -> dict[str, dict[str, Any]]:
    """Run the sections in order, each under its deadline; a failure is recorded, not raised.

    A section's deadline is the earliest of its cap (scaled by the budget) from now and the
    budget's end less the floors of the sections after it. A section with under
    ``MIN_START_S`` seconds left is skipped.

    Returns:
        ``{name: entry}``, each entry with ``status``, ``elapsed_s`` and the section's fields
        (``error`` and ``traceback`` when it raised).
    """
    scale = budget.total_s / DEFAULT_BUDGET_S
    results: dict[str, dict[str, Any]] = {}
    for i, section in enumerate(sections):
        reserve = sum(s.floor_s * scale for s in sections[i + 1 :])
        now = time.monotonic()
        ctx.deadline = min(now + section.cap_s * scale, budget.end - reserve)
        ctx.log(f"[gpu_check] {section.name}: {section.title} ({ctx.left():.0f} s) ...")
        entry: dict[str, Any]
        if ctx.left() < MIN_START_S:
            entry = {"status": "skipped", "reason": "time budget spent"}
        else:
            try:
                entry = section.run(ctx)
            except Exception as e:  # one broken section must not lose the others' results
                entry = {
                    "status": "error",
                    "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc(),
                }
        entry["elapsed_s"] = time.monotonic() - now
        ctx.log(f"[gpu_check] {section.name}: {entry['status']} in {entry['elapsed_s']:.0f} s")
        results[section.name] = entry
    return results


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of the checks' subprocesses: this repository first on ``PYTHONPATH``.

    The repository's ``cprfl_zoo`` is imported even where the package is not installed (the GPU
    machine runs the working tree as it is).
    """
    env = dict(os.environ)
    paths = [str(REPO), str(HERE)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.update(extra)
    return env


@dataclass
class CommandResult:
    """How a subprocess ended.

    Attributes:
        returncode: Its exit status (``None`` when it was killed at its timeout).
        seconds: Wall time.
        tail: The last characters of its output (stdout and stderr together).
    """

    returncode: int | None
    seconds: float
    tail: str

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "returncode": self.returncode,
            "timed_out": self.timed_out,
            "seconds": self.seconds,
            "tail": self.tail,
        }


def run_command(
    cmd: Sequence[str],
    timeout: float,
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> CommandResult:
    """Run ``cmd`` with a timeout, appending its output to ``log_path``.

    Args:
        cmd: The command.
        timeout: Seconds before it is killed (its whole process group).
        log_path: The log file; the command line and its output are appended.
        env: Environment (default: :func:`subprocess_env`).
        cwd: Working folder (default: the repository).

    Returns:
        Its :class:`CommandResult`.
    """
    start = time.monotonic()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(map(str, cmd))}\n")
        log.flush()
        offset = log.tell()
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env or subprocess_env(),
            cwd=cwd or REPO,
            start_new_session=True,
        )
        try:
            returncode: int | None = proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            returncode = None
            log.write(f"\n[gpu_check] killed after {timeout:.0f} s\n")
    with open(log_path, encoding="utf-8", errors="replace") as log:
        log.seek(offset)
        tail = log.read()[-TAIL_CHARS:]
    return CommandResult(returncode, time.monotonic() - start, tail)


def python_command(*args: str | Path) -> list[str]:
    """``python <args>`` with this interpreter."""
    return [sys.executable, *map(str, args)]
