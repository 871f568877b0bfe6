"""Run every speed benchmark of cprfl_zoo and print one table of ratios measured side by side.

Benchmarks (each a module of this folder with ``run(quick=...)``):

* ``head``: the CPRFL head vs the naive full self-attention form, C = 80, 1,000, 10,000;
* ``train_step``: a ResNet-101 / 448 px / batch 2 training step with cached class embeddings vs
  re-encoding the prompts through CLIP's text tower every step (official code), and vs this
  package's trainable-text-encoder mode;
* ``asl``: AsymmetricLoss vs the reference formulation;
* ``create``: ``create_cprfl`` on a text-embedding cache hit vs a miss;
* ``text_encode``: the CLIP text tower on the trimmed vs the full 77-token context;
* ``deploy``: eval throughput of ``model.deploy()`` vs the model in eval mode (C = 80 to 10,000).

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
import importlib
import inspect
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cprfl_zoo.fileio import atomic_write_text

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
SCHEMA = "cprfl_zoo.benchmarks.run_all/1"


# ---------------------------------------------------------------------- ratio rows
def ratio_row(
    bench: str,
    case: str,
    ours: str,
    other: str,
    ours_s: float | None,
    other_s: float | None,
    mem_ratio: float | None = None,
    note: str = "",
) -> dict[str, Any]:
    """One line of the combined table: ``time_ratio = other_s / ours_s``."""
    ratio = other_s / ours_s if ours_s and other_s is not None else None
    return {
        "bench": bench,
        "case": case,
        "ours": ours,
        "other": other,
        "ours_s": ours_s,
        "other_s": other_s,
        "time_ratio": ratio,
        "mem_ratio": mem_ratio,
        "note": note,
    }


def summarize_head(rows: list[dict]) -> list[dict]:
    """CPRFL head vs naive / naive-sdpa at each (batch, classes)."""
    out = []
    ours = {(r["batch"], r["classes"]): r for r in rows if r["impl"] == "cprfl" and "time_s" in r}
    for r in rows:
        if r["impl"] == "cprfl":
            continue
        case = f"B={r['batch']} v={r['v']} C={r['classes']:,} fwd+bwd"
        base = ours.get((r["batch"], r["classes"]))
        if base is None or "time_s" not in r:
            reason = r.get("skipped") or "the CPRFL head did not run"
            out.append(ratio_row("head", case, "cprfl", r["impl"], None, None, note=reason))
            continue
        mem = r["peak_mib"] / base["peak_mib"] if base.get("peak_mib") else None
        out.append(
            ratio_row("head", case, "cprfl", r["impl"], base["time_s"], r["time_s"], mem_ratio=mem)
        )
    return out


def summarize_train_step(rows: list[dict]) -> list[dict]:
    """Cached embeddings vs re-encoding the prompts every step."""
    base = next((r for r in rows if r["mode"] == "cached"), None)
    out = []
    for r in rows:
        if r is base or base is None:
            continue
        case = f"{r['backbone']} {r['img_size']}px B={r['batch']} C={r['classes']} step"
        mem = None
        if base.get("peak_mib") and r.get("peak_mib"):
            mem = r["peak_mib"] / base["peak_mib"]
        note = f"text context {r['text_context']}" if r.get("text_context") else ""
        out.append(
            ratio_row(
                "train_step", case, "cached", r["mode"], base["time_s"], r["time_s"], mem, note
            )
        )
    return out


def summarize_asl(rows: list[dict]) -> list[dict]:
    """AsymmetricLoss vs the reference formulation, per setting and shape."""
    out = []
    for r in rows:
        case = f"{r['setting']} {r['batch']}x{r['classes']:,} fwd+bwd"
        mem = r["ref_peak_bytes"] / r["ours_peak_bytes"] if r.get("ours_peak_bytes") else None
        out.append(
            ratio_row("asl", case, "ours", "reference", r["ours_ms"] / 1e3, r["ref_ms"] / 1e3, mem)
        )
    return out


def summarize_create(rows: list[dict]) -> list[dict]:
    """``create_cprfl`` cache hit vs miss (and vs embeddings given)."""
    by_case = {r["case"]: r for r in rows}
    hit, miss = by_case.get("cache hit"), by_case.get("cache miss")
    given = by_case.get("embeddings given")
    out = []
    if hit and miss:
        case = f"create_cprfl {rows[0]['backbone']} C={rows[0]['classes']}"
        out.append(
            ratio_row("create", case, "cache hit", "cache miss", hit["time_s"], miss["time_s"])
        )
    if hit and given:
        case = f"create_cprfl {rows[0]['backbone']} C={rows[0]['classes']}"
        note = "below 1: what a hit adds to building the model"
        out.append(
            ratio_row(
                "create",
                case,
                "cache hit",
                "embeddings given",
                hit["time_s"],
                given["time_s"],
                note=note,
            )
        )
    return out


def summarize_text_encode(rows: list[dict]) -> list[dict]:
    """CLIP text tower on the trimmed vs the full context."""
    out = []
    for kind in sorted({r["pass"] for r in rows}):
        pair = sorted((r for r in rows if r["pass"] == kind), key=lambda r: r["context"])
        if len(pair) != 2:
            continue
        trimmed, full = pair
        case = f"80 prompts {kind}"
        out.append(
            ratio_row(
                "text_encode",
                case,
                f"context {trimmed['context']}",
                f"context {full['context']}",
                trimmed["time_s"],
                full["time_s"],
            )
        )
    return out


def summarize_deploy(rows: list[dict]) -> list[dict]:
    """The deploy module vs the model in eval mode, per case (inference time of one batch)."""
    out = []
    ours = {(r["kind"], r["batch"], r["classes"]): r for r in rows if r["impl"] == "deploy"}
    for r in rows:
        base = ours.get((r["kind"], r["batch"], r["classes"]))
        if r["impl"] != "eval" or base is None:
            continue
        case = f"{r['kind']} B={r['batch']} v={r['v']} C={r['classes']:,} inference"
        note = f"deploy() took {base['deploy_s']:.2f} s once" if base.get("deploy_s") else ""
        out.append(
            ratio_row("deploy", case, "deploy", "eval", base["time_s"], r["time_s"], note=note)
        )
    return out


# ---------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Benchmark:
    """A benchmark module and how to reduce its rows to ratio rows.

    Attributes:
        name: Name used by ``--only`` and in the JSON.
        module: Module name in this folder (``bench_head``).
        summarize: Maps the module's rows to :func:`ratio_row` rows.
        description: One line for ``--help``.
    """

    name: str
    module: str
    summarize: Callable[[list[dict]], list[dict]]
    description: str


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("head", "bench_head", summarize_head, "CPRFL head vs full self-attention"),
    Benchmark(
        "train_step",
        "bench_train_step",
        summarize_train_step,
        "training step: cached embeddings vs re-encoding prompts",
    ),
    Benchmark("asl", "bench_asl", summarize_asl, "AsymmetricLoss vs reference"),
    Benchmark("create", "bench_create", summarize_create, "create_cprfl: cache hit vs miss"),
    Benchmark(
        "text_encode",
        "bench_text_encode",
        summarize_text_encode,
        "text tower: trimmed vs full context",
    ),
    Benchmark(
        "deploy",
        "bench_deploy",
        summarize_deploy,
        "inference: model.deploy() vs the model in eval mode",
    ),
)


def _load_module(name: str) -> Any:
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    return importlib.import_module(name)


def call_run(run: Callable[..., list[dict]], quick: bool, device: str, dtype: str) -> list[dict]:
    """Call a benchmark's ``run`` with the options its signature accepts.

    A benchmark without a ``device`` parameter only runs on the CPU; asked for another device,
    it raises.

    Raises:
        ValueError: If ``device`` is not the CPU and ``run`` takes no ``device``.
    """
    params = inspect.signature(run).parameters
    kwargs: dict[str, Any] = {"quick": quick}
    if "device" in params:
        kwargs["device"] = device
    elif device != "cpu":
        raise ValueError(f"this benchmark runs on the CPU only, not on {device!r}")
    if "dtype" in params:
        kwargs["dtype"] = dtype
    return run(**kwargs)


def run_benchmarks(
    benchmarks: Sequence[Benchmark],
    *,
    quick: bool,
    device: str,
    dtype: str,
    load: Callable[[str], Any] | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Run benchmarks one after the other; a failure is recorded, not raised.

    Args:
        benchmarks: What to run.
        quick: Passed to every ``run``.
        device: Passed to every ``run`` that takes it.
        dtype: Passed to every ``run`` that takes it.
        load: Imports a benchmark module by name (default: from this folder).
        log: Prints progress messages (``None``: silent).

    Returns:
        ``{"results": {name: {"rows", "elapsed_s", "error"}}, "summary": [ratio rows]}``.
    """
    load = load or _load_module
    log = log or (lambda message: None)
    results: dict[str, Any] = {}
    summary: list[dict] = []
    for bench in benchmarks:
        log(f"[run_all] {bench.name}: {bench.description} ...")
        start = time.perf_counter()
        entry: dict[str, Any] = {"module": bench.module, "rows": [], "error": None}
        try:
            module = load(bench.module)
            entry["rows"] = call_run(module.run, quick, device, dtype)
            summary.extend(bench.summarize(entry["rows"]))
            if callable(getattr(module, "format_rows", None)):
                log(module.format_rows(entry["rows"]))
        except Exception as e:  # one broken benchmark must not lose the others' results
            entry["error"] = f"{type(e).__name__}: {e}"
            entry["traceback"] = traceback.format_exc()
            summary.append(
                ratio_row(bench.name, "-", "-", "-", None, None, note=f"failed: {entry['error']}")
            )
        entry["elapsed_s"] = time.perf_counter() - start
        log(f"[run_all] {bench.name}: {entry['elapsed_s']:.0f} s")
        results[bench.name] = entry
    return {"results": results, "summary": summary}


# ---------------------------------------------------------------------- environment
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=HERE, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def environment(device: str, dtype: str) -> dict[str, Any]:
    """Describe the machine and software the numbers come from."""
    import timm

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "device": device,
        "dtype": dtype,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }
    try:
        import open_clip

        import cprfl_zoo

        env["cprfl_zoo"] = cprfl_zoo.__version__
        env["open_clip"] = open_clip.__version__
    except ImportError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
    return env


# ---------------------------------------------------------------------- output
def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}x"


def _key(row: dict) -> tuple[str, str, str, str]:
    return (row["bench"], row["case"], row["ours"], row["other"])


def format_summary(summary: list[dict], previous: list[dict] | None = None) -> str:
    """The combined table; with ``previous`` summary rows, their time ratios as a last column.

    Args:
        summary: Ratio rows.
        previous: Ratio rows of an earlier run, matched by benchmark, case and implementations.

    Returns:
        The table as text.
    """
    header = ["bench", "case", "ours", "vs", "ours", "other", "time ×", "mem ×"]
    if previous is not None:
        header.append("before")
    old = {_key(r): r for r in previous or []}
    table = [header]
    notes = []
    for r in summary:
        line = [
            r["bench"],
            r["case"],
            r["ours"],
            r["other"],
            _fmt_time(r["ours_s"]),
            _fmt_time(r["other_s"]),
            _fmt_ratio(r["time_ratio"]),
            _fmt_ratio(r["mem_ratio"]),
        ]
        if previous is not None:
            line.append(_fmt_ratio(old.get(_key(r), {}).get("time_ratio")))
        table.append(line)
        if r["note"]:
            notes.append(f"  {r['bench']} / {r['case']} / {r['other']}: {r['note']}")
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    right = {4, 5, 6, 7, 8}
    lines = []
    for n, row in enumerate(table):
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("× = other / ours: above 1 means ours is faster (time) or smaller (peak memory).")
    if notes:
        lines.append("notes:")
        lines.extend(notes)
    return "\n".join(lines)


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write ``data`` as JSON through a temporary file in the same folder and ``os.replace``."""
    text = json.dumps(data, indent=2, allow_nan=True, default=str) + "\n"
    return atomic_write_text(path, text, mode=0o644)


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write the report as ``run_all-<timestamp>.json`` and ``latest.json`` in ``out_dir``.

    Returns:
        The two paths.
    """
    stamp = dt.datetime.fromisoformat(report["created"]).strftime("%Y%m%dT%H%M%SZ")
    stamped = write_json_atomic(out_dir / f"run_all-{stamp}.json", report)
    latest = write_json_atomic(out_dir / "latest.json", report)
    return stamped, latest


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
    report = {
        "schema": SCHEMA,
        "created": created,
        "args": {
            "quick": args.quick,
            "device": args.device,
            "dtype": dtype,
            "only": args.only or names,
        },
        "env": env,
        **out,
    }
    print()
    print(format_summary(report["summary"], previous))
    stamped, latest = write_report(report, args.out_dir)
    print(f"\nwrote {stamped} and {latest}")
    return report


if __name__ == "__main__":
    main()
