"""Running ``run_all.py``'s benchmarks: the registry entry, the call of ``run`` and the loop.

A failing benchmark is recorded with its error and traceback, and the others still run.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _run_all_summaries import ratio_row

HERE = Path(__file__).resolve().parent


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
