"""Best-against-best tables of the emoji benchmark: per-method scores, paired tail differences.

``rows`` maps each method to its runs at the grid point chosen on validation, one per seed
(``_lt_emoji_report.selected_runs``). The reference linear configuration is the linear method
with the best mean *validation* tail mAP (the validation set is balanced, so it has a tail); the
test set never chooses anything. Each CPRFL configuration's tail AP minus the reference's is
paired by seed, with a two-sided 95 % Student-t interval over the seeds.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from _lt_train import mean_std

Rows = dict[str, list[dict[str, Any]]]


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t interval of the mean (sample std, n - 1 degrees of freedom).

    Returns:
        ``(mean, low, high)``; the interval is NaN for fewer than two values.
    """
    from scipy.stats import t

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def _cell(runs: list[dict[str, Any]], get) -> str:
    values = [get(r) for r in runs if get(r) is not None]
    if not values:
        return "–"
    mean, std = mean_std(values)
    return f"{mean:.2f} ± {std:.2f}"


def _val_tail(run: dict[str, Any]) -> float:
    return run["val"]["mAP_tail"] if "val" in run else math.nan


def _point(run: dict[str, Any]) -> str:
    weight, top = run.get("anchor_weight"), run.get("backbone_lr")
    text = f"{run['lr']:g}" + (f", w {weight:g}" if weight is not None else "")
    return text + (f", backbone {top:g}" if top is not None else "")


def method_table(rows: Rows) -> list[str]:
    """Mean ± std over seeds: validation and test mAP by group, and F1 at calibrated thresholds."""

    def f1(key: str):
        return lambda r: r.get("f1", {}).get("cal", {}).get(key)

    lines = [
        "| method | lr (val) | seeds | val mAP | val tail | mAP | head | medium | tail |"
        " CF1 (cal.) | OF1 (cal.) | tail CF1 (cal.) |",
        "|---" * 12 + "|",
    ]
    for m, runs in rows.items():
        tests = [
            _cell(runs, lambda r, k=k: r["test"][k])
            for k in ("mAP", "mAP_head", "mAP_medium", "mAP_tail")
        ]
        f1s = [_cell(runs, f1(k)) for k in ("CF1", "OF1", "tail_CF1")]
        val = statistics.fmean(r["val_mAP"] for r in runs)
        val_tail = statistics.fmean(_val_tail(r) for r in runs)
        lines.append(
            f"| {m} | {_point(runs[0])} | {len(runs)} | {val:.2f} | {val_tail:.2f} | "
            + " | ".join(tests + f1s)
            + " |"
        )
    return lines


def best_linear(rows: Rows, prefix: str = "linear") -> str | None:
    """The ``prefix`` method with the best mean validation tail mAP (then validation mAP)."""
    linear = [m for m in rows if m.startswith(prefix)]
    if not linear:
        return None

    def key(m: str) -> tuple[float, float]:
        tail = statistics.fmean(_val_tail(r) for r in rows[m])
        return (
            -math.inf if math.isnan(tail) else tail,
            statistics.fmean(r["val_mAP"] for r in rows[m]),
        )

    return max(linear, key=key)


def paired_tail_table(rows: Rows) -> list[str]:
    """Each CPRFL configuration's test tail AP minus the reference linear one's, per seed.

    Also counts the seeds on which the configuration beats *every* linear configuration's tail
    AP on that seed (a stricter, test-set reference).
    """
    ref = best_linear(rows)
    if ref is None:
        return []
    base = {r["seed"]: r["test"]["mAP_tail"] for r in rows[ref]}
    top = {
        s: max(
            r["test"]["mAP_tail"]
            for m, runs in rows.items()
            if m.startswith("linear")
            for r in runs
            if r["seed"] == s
        )
        for s in base
    }
    seeds = sorted(base)
    lines = [
        f"Paired test tail AP difference against the best linear configuration on validation "
        f"tail mAP ({ref}), per seed, with the mean and its 95 % t-interval; the last column "
        "counts the seeds on which the configuration's tail AP is above that of every linear "
        "configuration on the seed:",
        "",
        "| method | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | mean [95 % CI] | above every linear |",
        "|---" * (len(seeds) + 3) + "|",
    ]
    for m, runs in rows.items():
        if not m.startswith("CPRFL"):
            continue
        tails = {r["seed"]: r["test"]["mAP_tail"] for r in runs if r["seed"] in base}
        diffs = {seed: tail - base[seed] for seed, tail in tails.items()}
        if not diffs:
            continue
        cells = [f"{diffs[s]:+.2f}" if s in diffs else "–" for s in seeds]
        mean, lo, hi = t_interval(list(diffs.values()))
        wins = sum(r["test"]["mAP_tail"] > top[r["seed"]] for r in runs if r["seed"] in top)
        ci = f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]" if not math.isnan(lo) else f"{mean:+.2f}"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {ci} | {wins} / {len(diffs)} |")
    return lines


def f1_table(rows: Rows) -> list[str]:
    """F1 at 0.5 before and after post-hoc logit adjustment (τ = 1); AP does not move."""
    have = {m: runs for m, runs in rows.items() if "f1" in runs[0]}
    if not have:
        return []
    lines = [
        "Post-hoc logit adjustment (τ = 1, training priors) at the fixed threshold 0.5: it moves "
        "F1 but no AP (largest change of a class's AP over all runs: "
        f"{max(r['f1']['la_max_ap_change'] for runs in have.values() for r in runs):.1e} "
        "points); at calibrated per-class thresholds F1 is unchanged as well.",
        "",
        "| method | CF1 @0.5 | CF1 @0.5, adjusted | OF1 @0.5 | OF1 @0.5, adjusted |",
        "|---|---|---|---|---|",
    ]
    for m, runs in have.items():
        cells = [
            _cell(runs, lambda r, w=w, k=k: r["f1"][w][k])
            for k in ("CF1",)
            for w in ("half", "half_la")
        ] + [_cell(runs, lambda r, w=w: r["f1"][w]["OF1"]) for w in ("half", "half_la")]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines
