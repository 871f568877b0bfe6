"""Peak memory (RSS) of threshold calibration and evaluation on large validation sets.

Each measurement runs in a fresh subprocess, which builds float32 logits and float32 multi-hot
targets of N images x C classes (what ``collect_logits`` returns), resets the kernel's peak-RSS
counter (``/proc/self/clear_refs``), runs one call and reports ``VmHWM``:

* ``calibrate``: :func:`cprfl_zoo.thresholds.calibrate_thresholds` (per-class and global F1
  cuts), what ``cprfl-zoo calibrate`` runs on the collected logits;
* ``evaluate``: :func:`cprfl_zoo.cli.evaluate_logits` with training counts (mAP overall and
  head / medium / tail, OP/OR/OF1/CP/CR/CF1 at per-class thresholds), what ``cprfl-zoo
  evaluate`` runs.

``inputs`` is the logits and targets (8 bytes per element), ``rss_before`` the process with them
(Python, torch and the inputs), ``peak`` its highest RSS during the call and ``extra`` the
difference: the call's working memory; ``CPU s`` is the process's CPU time during the call
(steadier than the wall time on a loaded machine). Linux only (``/proc``).

Run: ``python benchmarks/bench_eval_memory.py [--quick] [--threads 1]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SIZES = [(2_000, 1_000), (20_000, 1_000), (20_000, 10_000)]  # (images N, classes C)
QUICK_SIZES = [(2_000, 1_000), (5_000, 2_000)]
OPS = ("calibrate", "evaluate")
_GIB = 1 << 30


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _inputs(n: int, c: int) -> tuple[Any, Any]:
    """Seeded logits and targets, built a block of rows at a time (no full-size temporary)."""
    import torch

    g = torch.Generator().manual_seed(0)
    logits = torch.empty(n, c)
    targets = torch.empty(n, c)
    rate = torch.logspace(-0.5, -3.5, c)  # head to tail: 30% to 0.03% positives
    for start in range(0, n, 1000):
        rows = slice(start, min(start + 1000, n))
        hits = torch.rand(rows.stop - start, c, generator=g) < rate
        targets[rows] = hits.float()
        logits[rows] = torch.randn(rows.stop - start, c, generator=g) + 2.5 * hits - 2.0
    return logits, targets


def child(op: str, n: int, c: int, threads: int) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    import torch

    torch.set_num_threads(threads)
    from cprfl_zoo.cli import evaluate_logits
    from cprfl_zoo.thresholds import calibrate_thresholds

    logits, targets = _inputs(n, c)
    counts = (targets[: n // 2].sum(0) * 4).long().tolist()  # "training" counts, all groups
    thresholds = torch.full((c,), 0.5)
    with open("/proc/self/clear_refs", "w") as f:  # peak RSS := current RSS
        f.write("5")
    before = _rss_kib("VmRSS")
    t0, cpu0 = time.perf_counter(), time.process_time()
    if op == "calibrate":
        calibrate_thresholds(logits, targets)
    else:
        evaluate_logits(logits, targets, thresholds, counts)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    peak = _rss_kib("VmHWM")
    return {
        "op": op,
        "images": n,
        "classes": c,
        "inputs_gib": round(8 * n * c / _GIB, 3),
        "rss_before_gib": round(before / (1 << 20), 3),
        "peak_gib": round(peak / (1 << 20), 3),
        "extra_gib": round((peak - before) / (1 << 20), 3),
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
    }


def run(quick: bool = False, threads: int = 1) -> list[dict[str, Any]]:
    """Measure every op at every size, one subprocess each; one row per measurement."""
    rows = []
    for n, c in QUICK_SIZES if quick else SIZES:
        for op in OPS:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", op, str(n), str(c)]
            out = subprocess.run(
                [*cmd, "--threads", str(threads)], capture_output=True, text=True, check=True
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(format_rows(rows[-1:], header=len(rows) == 1), flush=True)
    return rows


def format_rows(rows: list[dict[str, Any]], header: bool = True) -> str:
    """A Markdown table of the measurements (GiB, seconds)."""
    lines = []
    if header:
        lines += [
            "| op | images | classes | inputs GiB | RSS before GiB | peak GiB | extra GiB "
            "| CPU s | wall s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
    for r in rows:
        lines.append(
            f"| {r['op']} | {r['images']:,} | {r['classes']:,} | {r['inputs_gib']:.2f} | "
            f"{r['rss_before_gib']:.2f} | {r['peak_gib']:.2f} | {r['extra_gib']:.2f} | "
            f"{r['cpu_seconds']:.1f} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--child", nargs=3, metavar=("OP", "N", "C"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        op, n, c = args.child
        print(json.dumps(child(op, int(n), int(c), args.threads)))
        return
    run(quick=args.quick, threads=args.threads)


if __name__ == "__main__":
    main()
