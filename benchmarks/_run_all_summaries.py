"""Ratio rows of ``run_all.py``: each speed benchmark's rows reduced to *other / ours* lines."""

from __future__ import annotations

from typing import Any


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
