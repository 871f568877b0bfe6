"""The AP-vs-training-count plot of the emoji benchmark (``lt_emoji.py --plot``; matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from _lt_emoji_compare import best_linear
from _lt_emoji_data import METHODS, OPTIONS, REGIMES
from _lt_emoji_report import selected_runs


def plotted_methods(doc: dict[str, Any], regime: str, most: int = 6) -> list[str]:
    """The methods drawn: all that have runs, or, beyond ``most``, the baselines (linear-ASL,
    CPRFL-ASL) and each head's best configuration on validation tail mAP."""
    rows = {m: selected_runs(doc, regime, m) for m in (*METHODS, *OPTIONS)}
    rows = {m: r for m, r in rows.items() if r}
    if len(rows) <= most:
        return list(rows)
    cprfl = {m: r for m, r in rows.items() if m.startswith("CPRFL")}
    picks = ["linear-ASL", best_linear(rows), "CPRFL-ASL", best_linear(cprfl, prefix="CPRFL")]
    return [m for m in dict.fromkeys(picks) if m in rows]


def plot_ap_vs_count(doc: dict[str, Any], path: Path) -> None:
    """Per-class test AP against training count, one panel per regime (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("the plot needs matplotlib: pip install matplotlib") from e
    regimes = [rg for rg in REGIMES if any(r["regime"] == rg for r in doc["runs"])]
    fig, axes = plt.subplots(1, len(regimes), figsize=(6 * len(regimes), 4), squeeze=False)
    markers = "s^oxDv<>p*h"
    for ax, regime in zip(axes[0], regimes, strict=True):
        for method, marker in zip(plotted_methods(doc, regime), markers, strict=False):
            runs = selected_runs(doc, regime, method)
            xs, ys = [], []
            for r in runs:
                split = doc["splits"][str(r["seed"])]
                counts = [split["counts"][c] for c in split["seen"]]
                xs += counts
                ys += r["test_ap"]
            xs_a, ys_a = np.asarray(xs, float), np.asarray(ys, float)
            bins = np.geomspace(xs_a.min(), xs_a.max() + 1, 9)
            which = np.digitize(xs_a, bins)
            mx = [np.exp(np.log(xs_a[which == b]).mean()) for b in np.unique(which)]
            my = [ys_a[which == b].mean() for b in np.unique(which)]
            ax.scatter(xs_a, ys_a, s=6, alpha=0.25, marker=marker)
            ax.plot(mx, my, marker=marker, label=method)
        ax.set_xscale("log")
        ax.set_xlabel("training positives of the class")
        ax.set_ylabel("test AP (%)")
        ax.set_title(f"{regime}: per-class AP (dots), binned mean (lines)")
        ax.axvline(20, color="grey", lw=0.5, ls="--")
        ax.axvline(100, color="grey", lw=0.5, ls="--")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from cprfl_zoo.fileio import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."), dpi=110)
    plt.close(fig)
