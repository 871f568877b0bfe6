"""``gpu_check.py``'s section 5: the CPRFL head vs the naive layer (einsum and SDPA forms).

Forward + backward of φ, PI, VSI and the classifier on random backbone tokens (B, v, d0), with
``bench_head.py``'s model and step, for every (B, C) of ``Sizes.head_cases``, cheapest first. The
three forms of a case run in one process and alternate round by round
(:func:`_speed.interleaved_times`); the first call of each (untimed) measures its peak memory
above the model (``torch.cuda.max_memory_allocated`` on CUDA, the CPU allocator's events on the
CPU). The einsum form is skipped where its attention matrices alone would not fit in the free
GPU memory, and an out-of-memory error is recorded as such. The cases stop at the deadline;
each finished case is written at once, so a run cut short keeps them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from _gpu_check_core import Sizes
from _memory import cpu_alloc_peak_bytes, cuda_peak_bytes
from _speed import interleaved_times, sync
from bench_head import IMPLS, _estimate_naive_gib, build_head_model, head_step

MAX_ITERS = 20


def attention_tflop(impl: str, batch: int, v: int, classes: int, heads: int, hd: int) -> float:
    """TFLOP of the attention products (QKᵀ and PV), forward + backward (3x forward).

    The CPRFL head computes the C prompt rows against v + C keys; the naive forms all v + C rows.
    """
    rows = classes if impl == "cprfl" else v + classes
    return 3 * 4 * batch * heads * rows * (v + classes) * hd / 1e12


def _too_big(impl: str, batch: int, v: int, classes: int, dtype_bytes: int, dev: Any) -> str | None:
    if impl != "naive":
        return None
    need = 1.5 * _estimate_naive_gib(batch, v, classes, dtype_bytes)
    if dev.type == "cuda":
        free = torch.cuda.mem_get_info(dev)[0] / 2**30
        if need > 0.9 * free:
            return f"needs ~{need:.0f} GiB for the attention matrices, {free:.0f} GiB free"
    elif need > 4:
        return f"needs ~{need:.0f} GiB for the attention matrices on the CPU"
    return None


def _peak_and_first(step: Callable[[], None], dev: Any) -> tuple[float, float]:
    start = time.perf_counter()
    peak = cuda_peak_bytes(step, dev) if dev.type == "cuda" else cpu_alloc_peak_bytes(step)
    return peak / 2**20, time.perf_counter() - start


def run_case(
    model: Any, batch: int, sizes: Sizes, dtype: str, dev: Any, deadline: float
) -> list[dict[str, Any]]:
    """Time the three forms on one (B, C); rows with ``time_s`` or ``skipped``/``error``."""
    classes, v = model.num_classes, sizes.head_tokens
    amp = getattr(torch, dtype)
    dtype_bytes = 2 if dtype in ("bfloat16", "float16") else 4
    heads, hd = model.vsi.attn.num_heads, model.vsi.attn.head_dim
    tokens = torch.randn(batch, v, sizes.head_token_dim, device=dev)
    rows: dict[str, dict[str, Any]] = {}
    steps: dict[str, Callable[[], None]] = {}
    firsts: dict[str, float] = {}
    for impl in IMPLS:
        row = {"impl": impl, "batch": batch, "classes": classes, "v": v}
        row["attn_tflop"] = attention_tflop(impl, batch, v, classes, heads, hd)
        rows[impl] = row
        if reason := _too_big(impl, batch, v, classes, dtype_bytes, dev):
            row["skipped"] = reason
            continue
        if time.monotonic() > deadline:
            row["skipped"] = "time budget"
            continue
        step = head_step(model, impl, tokens, amp)
        try:
            row["peak_mib"], firsts[impl] = _peak_and_first(step, dev)
        except torch.OutOfMemoryError as e:
            row["error"] = f"out of memory: {str(e).splitlines()[0]}"
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            continue
        steps[impl] = step
    if steps:
        slowest = max(firsts.values())
        iters = max(1, min(MAX_ITERS, int(sizes.head_target_s / max(slowest, 1e-6))))
        rounds = 3
        while rounds > 1 and rounds * iters * sum(firsts.values()) > deadline - time.monotonic():
            rounds -= 1
        if rounds * iters * sum(firsts.values()) > deadline - time.monotonic():
            for impl in steps:
                rows[impl]["skipped"] = "time budget"
        else:
            samples = interleaved_times(steps, rounds, iters, dev, warmup=1)
            for impl, values in samples.items():
                rows[impl].update(time_s=statistics.median(values), times_s=values, iters=iters)
                rows[impl]["tflop_per_s"] = rows[impl]["attn_tflop"] / rows[impl]["time_s"]
    del tokens
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return list(rows.values())


def summarize_case(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Ratios of one case: naive / ours for time (above 1: ours faster) and ours / einsum memory."""
    by = {r["impl"]: r for r in rows}
    ours = by.get("cprfl", {})
    out: dict[str, Any] = {"batch": rows[0]["batch"], "classes": rows[0]["classes"]}
    if "time_s" not in ours:
        return out
    naive_times = [by[i]["time_s"] for i in ("naive", "naive-sdpa") if "time_s" in by.get(i, {})]
    for impl, key in (("naive", "vs_einsum"), ("naive-sdpa", "vs_sdpa")):
        if "time_s" in by.get(impl, {}):
            out[key] = by[impl]["time_s"] / ours["time_s"]
    if naive_times:
        out["vs_fastest_naive"] = min(naive_times) / ours["time_s"]
    einsum = by.get("naive", {})
    if einsum.get("peak_mib") and ours.get("peak_mib") is not None:
        out["mem_vs_einsum"] = ours["peak_mib"] / einsum["peak_mib"]
    return out


def run_head(
    sizes: Sizes,
    device: str,
    dtype: str,
    deadline: float,
    write: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """All cases (cheapest first) until the deadline; ``write`` gets the result after each."""
    dev = torch.device(device)
    out: dict[str, Any] = {"dtype": dtype, "rows": [], "summary": [], "status": "ok"}
    out["head"] = sizes.head_kwargs or "paper sizes (d 2048, 8 heads of 512, FFN 2048)"
    model = None
    for batch, classes in sizes.head_cases:
        if time.monotonic() > deadline:
            out["rows"].append({"batch": batch, "classes": classes, "skipped": "time budget"})
            out["status"] = "partial"
            continue
        if model is None or model.num_classes != classes:
            model = None
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            model = build_head_model(
                classes, dev, sizes.head_kwargs, sizes.head_token_dim, sizes.text_dim
            )
        sync(dev)
        rows = run_case(model, batch, sizes, dtype, dev, deadline)
        out["rows"].extend(rows)
        out["summary"].append(summarize_case(rows))
        write(out)
    return out
