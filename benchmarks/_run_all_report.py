"""Output of ``run_all.py``: the environment, the combined ratio table and the JSON report."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from cprfl_zoo.fileio import atomic_write_text

HERE = Path(__file__).resolve().parent


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
