"""Run every speed benchmark of cprfl_zoo and print one table of ratios measured side by side.

Table-driven: each entry ``NAME`` of ``_TABLE`` is the module ``bench_NAME.py`` of this folder
(with ``run(quick=...)``, whose docstring describes it) and the reducer
``_run_all_summaries.summarize_NAME``: ``head``, ``train_step``, ``asl``, ``create``,
``text_encode``, ``deploy``. ``_run_all_runner.py`` runs them (a failure is recorded, not
raised) and ``_run_all_report.py`` prints the table and writes the JSON.

Every ratio in the table is *other / ours*: above 1 means this package's way is faster (or
smaller). The raw rows, the table and the environment (torch, device, threads, CPU model, git
commit) are written as JSON to ``benchmarks/results/run_all-<UTC timestamp>.json`` and
``benchmarks/results/latest.json`` (atomically); ``--compare OLD.json`` prints the old ratios next
to the new ones.

Run: ``OMP_NUM_THREADS=2 python benchmarks/run_all.py [--quick] [--device cpu|cuda]
[--dtype float32|bfloat16] [--only NAME ...]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _run_all_summaries
import torch
from _run_all_report import (
    environment,
    format_summary,
    write_json_atomic,
    write_report,
)
from _run_all_runner import Benchmark, call_run, run_benchmarks
from _run_all_summaries import (
    ratio_row,
    summarize_asl,
    summarize_create,
    summarize_deploy,
    summarize_head,
    summarize_text_encode,
    summarize_train_step,
)

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
SCHEMA = "cprfl_zoo.benchmarks.run_all/1"


# Re-exported for the tests and callers of run_all.<name>.
__all__ = [
    "Benchmark",
    "call_run",
    "environment",
    "format_summary",
    "ratio_row",
    "run_benchmarks",
    "summarize_asl",
    "summarize_create",
    "summarize_deploy",
    "summarize_head",
    "summarize_text_encode",
    "summarize_train_step",
    "write_json_atomic",
    "write_report",
]


# name -> description; module bench_<name>.py, summary _run_all_summaries.summarize_<name>.
_TABLE = {
    "head": "CPRFL head vs full self-attention",
    "train_step": "training step: cached embeddings vs re-encoding prompts",
    "asl": "AsymmetricLoss vs reference",
    "create": "create_cprfl: cache hit vs miss",
    "text_encode": "text tower: trimmed vs full context",
    "deploy": "inference: model.deploy() vs the model in eval mode",
}
BENCHMARKS: tuple[Benchmark, ...] = tuple(
    Benchmark(name, f"bench_{name}", getattr(_run_all_summaries, f"summarize_{name}"), text)
    for name, text in _TABLE.items()
)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    names = [b.name for b in BENCHMARKS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases and repetitions")
    cuda = torch.cuda.is_available()
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if cuda else "cpu")
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16"], help="default: bfloat16 on cuda, else float32"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=names,
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(names)}",
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where the JSON goes")
    parser.add_argument("--compare", type=Path, help="an earlier run's JSON to compare with")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not cuda:
        parser.error("--device cuda: no CUDA device is visible")
    dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    previous = None
    if args.compare is not None:
        previous = json.loads(args.compare.read_text(encoding="utf-8"))["summary"]

    chosen = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    env = environment(args.device, dtype)
    print(
        f"cprfl_zoo benchmarks: {args.device} ({env.get('gpu', env['cpu_model'])}), {dtype}, "
        f"torch {env['torch']}, {env['torch_threads']} threads, "
        f"{'quick' if args.quick else 'full'}"
    )
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    out = run_benchmarks(chosen, quick=args.quick, device=args.device, dtype=dtype)
    options = {"quick": args.quick, "device": args.device, "dtype": dtype}
    report = {"schema": SCHEMA, "created": created, "args": {**options, "only": args.only or names}}
    report.update(env=env, **out)
    print()
    print(format_summary(report["summary"], previous))
    stamped, latest = write_report(report, args.out_dir)
    print(f"\nwrote {stamped} and {latest}")
    return report


if __name__ == "__main__":
    main()
