"""``gpu_check.py``'s Markdown report: one table per section, from the JSON report."""

from __future__ import annotations

from typing import Any


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _num(value: float | None, fmt: str = ".0f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{suffix}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _status(entry: dict[str, Any]) -> str:
    status = entry.get("status", "?")
    reason = entry.get("reason") or entry.get("error")
    return f"{status} ({reason})" if reason and status != "ok" else status


def _loss_points(losses: list[float], points: int = 5) -> str:
    if not losses:
        return "-"
    idx = sorted({round(i * (len(losses) - 1) / (points - 1)) for i in range(points)})
    return " → ".join(f"{losses[i]:.3f}" for i in idx)


def _pytest(entry: dict[str, Any]) -> list[str]:
    counts = entry.get("counts", {})
    lines = [f"Files: {', '.join(entry.get('files', []))}. Status: {_status(entry)}.", ""]
    lines += _table(
        ["passed", "failed", "error", "skipped"],
        [[str(counts.get(k, "-")) for k in ("passed", "failed", "error", "skipped")]],
    )
    for failure in entry.get("failures", []):
        message = " ".join(failure["message"].split())[:200]
        lines.append(f"- **{failure['outcome']}** `{failure['test']}`: {message}")
    return lines


def _train(entry: dict[str, Any]) -> list[str]:
    rows = []
    for m in entry.get("modes", []):
        peak = m.get("peak_mib")
        rows.append(
            [
                m["mode"],
                _status(m),
                _num(m.get("images_per_s"), ".1f"),
                _num(m.get("first_epoch_images_per_s"), ".1f"),
                _num(peak / 1024 if peak is not None else None, ".2f", " GiB"),
                str(m.get("steps", "-")),
                _loss_points(m.get("losses", [])),
            ]
        )
    header = ["mode", "status", "images/s", "first epoch images/s", "peak memory", "steps"]
    lines = _table([*header, "loss (step 1 → last)"], rows)
    for key, title in (("resume", "Resume"), ("resume_workers0", "Resume with --workers 0")):
        if key not in entry:
            continue
        r = entry[key]
        lines.append("")
        text = f"**{title}** ({r.get('workers', '?')} loader workers): {_status(r)}"
        if "model_equal" in r:
            text += (
                f"; weights equal: {r['model_equal']}, EMA equal: {r['ema_equal']}, "
                f"step losses equal: {r['losses_equal']}, optimiser steps {r['optimizer_steps']}"
            )
        if "model_max_abs_diff" in r:
            text += f"; max |Δweight| {r['model_max_abs_diff']:.3g}"
        lines.append(text)
    if entry.get("missing_train_flags"):
        lines += ["", "What train.py lacks for these checks (worked around by the runner):"]
        lines += [f"- {flag}" for flag in entry["missing_train_flags"]]
    return lines


def _torchrun(entry: dict[str, Any]) -> list[str]:
    rows = []
    for r in entry.get("runs", []):
        backends = sorted({str(v.get("backend")) for v in r.get("ranks", {}).values()})
        checks = r.get("checks", {})
        rows.append(
            [
                r["name"],
                str(r["procs"]),
                ", ".join(backends) or "-",
                _status(r),
                str(checks.get("same_weights", "-")),
                _num(r.get("images_per_s"), ".1f"),
                r.get("note", ""),
            ]
        )
    header = ["run", "processes", "backend", "status", "same weights", "images/s", "note"]
    return _table(header, rows)


def _step(entry: dict[str, Any]) -> list[str]:
    if "rows" not in entry:
        return [f"Status: {_status(entry)}."]
    rows = []
    for r in entry["rows"]:
        peak = r.get("peak_mib")
        rows.append(
            [
                r["impl"],
                f"B={r['batch']} {r['img_size']}px C={r['classes']} {r['dtype']}",
                _ms(r.get("time_s")),
                _num(r.get("images_per_s"), ".1f"),
                _num(peak / 1024 if peak is not None else None, ".2f", " GiB"),
                _ratio(r.get("official_over_this")),
            ]
        )
    header = ["model", "case", "step", "images/s", "step memory", "official / this"]
    return _table(header, rows)


def _head(entry: dict[str, Any]) -> list[str]:
    if "rows" not in entry:
        return [f"Status: {_status(entry)}."]
    by_case: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
    for r in entry["rows"]:
        by_case.setdefault((r["batch"], r["classes"]), {})[r.get("impl", "-")] = r
    summaries = {(s["batch"], s["classes"]): s for s in entry.get("summary", [])}
    rows = []
    for (batch, classes), impls in by_case.items():
        cells = [f"{classes:,}", str(batch)]
        for impl in ("cprfl", "naive", "naive-sdpa"):
            r = impls.get(impl, {})
            text = _ms(r.get("time_s")) if "time_s" in r else (r.get("skipped") or r.get("error"))
            peak = r.get("peak_mib")
            cells.append(f"{text or '-'}" + (f" / {peak:,.0f} MiB" if peak is not None else ""))
        s = summaries.get((batch, classes), {})
        cells += [_ratio(s.get("vs_fastest_naive")), _ratio(s.get("mem_vs_einsum"))]
        cells.append(_num(impls.get("cprfl", {}).get("tflop_per_s"), ".1f"))
        rows.append(cells)
    header = ["C", "B", "ours (time / peak)", "naive einsum", "naive SDPA"]
    header += ["fastest naive / ours", "memory ours / einsum", "ours attn TFLOP/s"]
    return [f"Head: {entry.get('head')}, {entry.get('dtype')}.", "", *_table(header, rows)]


SECTION_FORMATTERS = {
    "pytest": ("1. CUDA tests (pytest)", _pytest),
    "train": ("2. examples/train.py: precision modes and resume", _train),
    "torchrun": ("3. train.py under torchrun", _torchrun),
    "official": ("4. Training step: ours vs the official MyModel", _step),
    "head": ("5. The head vs the naive layer (forward + backward)", _head),
}


def format_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the environment line, then one table per section."""
    env = report["env"]
    device = env.get("gpu") or env.get("cpu_model")
    lines = [
        f"# gpu_check: {device}",
        "",
        f"{report['created']}; torch {env.get('torch')} (CUDA {env.get('cuda', '-')}), timm "
        f"{env.get('timm')}, cprfl_zoo {env.get('cprfl_zoo', '?')}, git "
        f"{(env.get('git_commit') or 'unknown')[:12]}; device {report['args']['device']}, "
        f"{'--tiny, ' if report['args']['tiny'] else ''}budget {report['args']['budget_s']:.0f} s, "
        f"took {report['elapsed_s']:.0f} s.",
    ]
    for name, entry in report["sections"].items():
        title, formatter = SECTION_FORMATTERS[name]
        lines += ["", f"## {title}", ""]
        lines += [f"Status: {_status(entry)}; {entry['elapsed_s']:.0f} s.", ""]
        if entry.get("status") in ("error",) or "traceback" in entry:
            lines.append(f"```text\n{entry.get('traceback', '')[-1500:]}\n```")
            continue
        lines += formatter(entry)
    return "\n".join(lines) + "\n"
