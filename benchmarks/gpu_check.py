"""The GPU check: CUDA tests, train.py, torchrun, the official step and the head, on one GPU.

One prepared script for one GPU (``--device cuda``, about 7 minutes), also runnable on the CPU
with tiny sizes (``--tiny --device cpu``, which CI runs). Five sections, each guarded (an
exception or a timeout is recorded and the next section runs) and each under a deadline cut
from one global budget (``--budget-s``), so that every section keeps its share:

1. ``pytest``: ``tests/test_cuda.py`` through pytest in a subprocess, pass/fail counts.
2. ``train``: ``examples/train.py`` (unchanged, through ``_train_runner.py``) on generated
   images at 448 px on ResNet-101, in fp32, bf16, bf16 + ``--channels-last`` and bf16 +
   ``--compile``: images/s, peak memory, the loss of every step; then a resume check (two
   epochs straight vs stop after one and ``--resume``: equal weights, EMA, losses).
3. ``torchrun``: train.py under ``torchrun --nproc_per_node 1`` (NCCL on CUDA), then two
   processes on one GPU (NCCL, else gloo on CUDA tensors).
4. ``official``: one training step of ours against the official code's ``MyModel`` (imported
   from ``--official-dir``; skipped without it) at the same batch, size and precision.
5. ``head``: the CPRFL head against the naive layer (einsum and SDPA forms) at C = 80, 1,000,
   10,000 and 20,000, batch 1 and 8, time and peak memory.

Writes ``gpu_check-<UTC timestamp>.json`` and ``.md`` (one table per section, with the GPU
name, torch version and date), their ``gpu_check-latest`` copies, and the log of every
subprocess (``gpu_check-<timestamp>.log``) to ``--out-dir`` (default ``benchmarks/results/``,
not tracked by git). Sections 4 and 5 run in subprocesses of this script (``--worker``).

Run: ``python benchmarks/gpu_check.py --device cuda [--official-dir PATH] [--budget-s 420]``
or ``python benchmarks/gpu_check.py --tiny --device cpu``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from _gpu_check_core import (  # noqa: E402
    DEFAULT_BUDGET_S,
    FULL,
    TINY,
    Budget,
    Context,
    Section,
    Sizes,
    python_command,
    run_command,
    run_sections,
)
from _gpu_check_pytest import run_pytest  # noqa: E402
from _gpu_check_report import format_markdown  # noqa: E402
from _gpu_check_torchrun import run_torchrun  # noqa: E402
from _gpu_check_train import run_train  # noqa: E402

SCHEMA = "cprfl_zoo.benchmarks.gpu_check/1"
RESULTS_DIR = Path(_HERE) / "results"
WORKER_GRACE_S = 15.0
MAX_LOG_BYTES = 8 * 2**20


def _worker_section(name: str) -> Any:
    """A section run by a ``--worker`` subprocess of this script, killed at its deadline."""

    def run(ctx: Context) -> dict[str, Any]:
        if name == "official" and ctx.official_dir is None:
            return {"status": "skipped", "reason": "no --official-dir"}
        if name == "official" and not ctx.official_dir.is_dir():  # the other sections still run
            return {"status": "skipped", "reason": f"--official-dir {ctx.official_dir} not found"}
        out = ctx.work / f"worker-{name}.json"
        config = {
            "device": ctx.device,
            "dtype": ctx.dtype,
            "sizes": ctx.sizes.as_dict(),
            "official_dir": str(ctx.official_dir) if ctx.official_dir else None,
            # the worker's own deadline, leaving it time to write what it has
            "seconds": max(ctx.left() - WORKER_GRACE_S, 1.0),
            "out": str(out),
        }
        config_path = ctx.work / f"worker-{name}-config.json"
        config_path.write_text(json.dumps(config), encoding="utf-8")
        cmd = python_command(__file__, "--worker", name, "--worker-config", config_path)
        result = run_command(cmd, ctx.left(), ctx.log_path)
        entry: dict[str, Any] = {}
        if out.is_file():
            entry = json.loads(out.read_text(encoding="utf-8"))
        if result.returncode != 0:
            entry["command"] = result.as_dict()
            status = "timeout" if result.timed_out else "failed"
            entry["status"] = "partial" if entry.get("rows") else status
        return entry

    return run


SECTIONS = (
    Section("pytest", "tests/test_cuda.py through pytest", run_pytest, cap_s=100, floor_s=30),
    Section("train", "train.py: precision modes, resume", run_train, cap_s=180, floor_s=90),
    Section("torchrun", "train.py under torchrun", run_torchrun, cap_s=60, floor_s=25),
    Section("official", "our step vs the official MyModel", _worker_section("official"), 45, 25),
    Section("head", "head vs naive layer", _worker_section("head"), cap_s=60, floor_s=30),
)
SECTION_NAMES = tuple(s.name for s in SECTIONS)


def run_worker(name: str, config_path: Path) -> int:
    """Run section ``name`` (``official`` or ``head``) in this process; write its JSON."""
    from _run_all_report import write_json_atomic

    config = json.loads(config_path.read_text(encoding="utf-8"))
    sizes = Sizes(**config["sizes"])
    deadline = time.monotonic() + config["seconds"]
    out = Path(config["out"])
    if name == "head":
        from _gpu_check_head import run_head

        result = run_head(
            sizes, config["device"], config["dtype"], deadline, lambda r: write_json_atomic(out, r)
        )
    else:
        from _gpu_check_step import run_step_compare

        official = Path(config["official_dir"]) if config["official_dir"] else None
        result = run_step_compare(sizes, config["device"], config["dtype"], official)
    write_json_atomic(out, result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (CI, on the CPU)")
    parser.add_argument(
        "--dtype", choices=["bfloat16", "float32"], help="default: bfloat16 on cuda, else float32"
    )
    parser.add_argument(
        "--budget-s", type=float, default=DEFAULT_BUDGET_S, help="the whole run's seconds"
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=SECTION_NAMES,
        default=list(SECTION_NAMES),
        help="run only these sections",
    )
    parser.add_argument(
        "--official-dir", type=Path, help="checkout of github.com/jiexuanyan/CPRFL (section 4)"
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where results go")
    parser.add_argument("--train-steps", type=int, help="steps per epoch of the precision modes")
    parser.add_argument("--batch-size", type=int, help="batch of training and step timing")
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch folder")
    parser.add_argument("--worker", choices=["official", "head"], help=argparse.SUPPRESS)
    parser.add_argument("--worker-config", type=Path, help=argparse.SUPPRESS)
    return parser


def _sizes(args: argparse.Namespace) -> Sizes:
    sizes = TINY if args.tiny else FULL
    changes: dict[str, Any] = {}
    if args.train_steps is not None:
        changes["steps_per_epoch"] = args.train_steps
    if args.batch_size is not None:
        changes["batch"] = args.batch_size
    return dataclasses.replace(sizes, **changes)


def write_outputs(report: dict[str, Any], out_dir: Path, log_path: Path) -> dict[str, Path]:
    """Write the JSON, the Markdown and the log, stamped and as ``gpu_check-latest``."""
    from _run_all_report import write_json_atomic

    from cprfl_zoo.fileio import atomic_write_bytes, atomic_write_text

    stamp = dt.datetime.fromisoformat(report["created"]).strftime("%Y%m%dT%H%M%SZ")
    markdown = format_markdown(report)
    paths = {}
    for tag in (stamp, "latest"):
        paths[f"json-{tag}"] = write_json_atomic(out_dir / f"gpu_check-{tag}.json", report)
        md = out_dir / f"gpu_check-{tag}.md"
        paths[f"md-{tag}"] = atomic_write_text(md, markdown, mode=0o644)
    if log_path.is_file():
        with open(log_path, "rb") as log:  # the end of it, for a size that always comes back
            log.seek(max(0, log_path.stat().st_size - MAX_LOG_BYTES))
            paths["log"] = atomic_write_bytes(out_dir / f"gpu_check-{stamp}.log", log.read())
    return paths


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(args.worker, args.worker_config)
    import torch
    from _run_all_report import environment

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible (use --tiny --device cpu)")
    dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    sizes = _sizes(args)
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    env = environment(args.device, dtype)
    env["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    env["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env["gpu_memory_gib"] = props.total_memory / 2**30
        env["cudnn"] = torch.backends.cudnn.version()
    budget = Budget(args.budget_s)
    print(
        f"gpu_check: {args.device} ({env.get('gpu', env['cpu_model'])}), torch {env['torch']}, "
        f"{'tiny' if args.tiny else 'full'} sizes, budget {args.budget_s:.0f} s",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="cprfl-gpu-check-"))
    log_path = work / "subprocesses.log"
    log_path.touch()
    ctx = Context(
        args.device, dtype, sizes, work, log_path, args.official_dir,
        log=lambda message: print(message, flush=True),
    )  # fmt: skip
    chosen = [s for s in SECTIONS if s.name in args.sections]
    try:
        sections = run_sections(chosen, ctx, budget)
        report = {
            "schema": SCHEMA,
            "created": created,
            "args": {
                "device": args.device,
                "dtype": dtype,
                "tiny": args.tiny,
                "budget_s": args.budget_s,
                "sections": args.sections,
                "official_dir": str(args.official_dir) if args.official_dir else None,
            },
            "env": env,
            "sizes": sizes.as_dict(),
            "sections": sections,
            "elapsed_s": budget.elapsed(),
        }
        paths = write_outputs(report, args.out_dir, log_path)
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    print(format_markdown(report))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return report


if __name__ == "__main__":
    result = main()
    sys.exit(result if isinstance(result, int) else 0)
