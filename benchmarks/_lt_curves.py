"""Training curves of the emoji benchmark: has training flattened? (``lt_emoji.py --curves``).

Every run records, per epoch, its mean training loss and its validation loss and mAP
(``run["curve"]``). A run has flattened when its validation mAP moves little over the last
quarter of its epochs; the table gives that change, and the plot the mean curves over seeds.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from _lt_train import mean_std

Rows = dict[str, list[dict[str, Any]]]


def mean_curve(runs: list[dict[str, Any]], key: str) -> list[float]:
    """The per-epoch mean over ``runs`` of ``run["curve"][key]`` (runs without curves skipped)."""
    curves = [r["curve"][key] for r in runs if r.get("curve")]
    return [statistics.fmean(values) for values in zip(*curves, strict=True)] if curves else []


def last_quarter_change(values: list[float]) -> float:
    """``values[-1] - values[-1 - q]`` with ``q = max(1, len // 4)``: the change over the last
    quarter of the epochs."""
    q = max(1, len(values) // 4)
    return values[-1] - values[-1 - q]


def convergence_table(rows: Rows) -> list[str]:
    """Markdown rows: per method, the last epoch's validation mAP, its change over the last
    quarter of the epochs, the epoch of the best validation mAP, and the training loss's change
    (mean ± std over seeds); empty when no run has curves."""
    rows = {m: [r for r in runs if r.get("curve")] for m, runs in rows.items()}
    rows = {m: runs for m, runs in rows.items() if runs}
    if not rows:
        return []
    lines = [
        "Training curves (per seed, then mean ± std over seeds): validation mAP after the last "
        "epoch, its change over the last quarter of the epochs, the epoch (1-based) of the best "
        "validation mAP, and the mean training loss of the last epoch relative to the first, "
        "and its change over the last quarter:",
        "",
        "| method | epochs | val mAP, last | Δ val mAP, last quarter | best epoch | "
        "train loss last / first | Δ train loss, last quarter |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, runs in rows.items():

        def cell(get, runs: list = runs, fmt: str = "{:.2f}") -> str:
            mean, std = mean_std([get(r["curve"]) for r in runs])
            return f"{fmt.format(mean)} ± {fmt.replace('+', '').format(std)}"

        def loss_drop(c: dict[str, list[float]]) -> float:
            return last_quarter_change(c["train_loss"]) / c["train_loss"][0]

        epochs = len(runs[0]["curve"]["val_mAP"])
        lines.append(
            f"| {m} | {epochs} | {cell(lambda c: c['val_mAP'][-1])} | "
            f"{cell(lambda c: last_quarter_change(c['val_mAP']))} | "
            f"{cell(lambda c: 1 + c['val_mAP'].index(max(c['val_mAP'])), fmt='{:.1f}')} | "
            f"{cell(lambda c: c['train_loss'][-1] / c['train_loss'][0], fmt='{:.3f}')} | "
            f"{cell(loss_drop, fmt='{:+.3f}')} |"
        )
    return lines


def plot_curves(rows_by_regime: dict[str, Rows], path: Path) -> None:
    """Mean training and validation loss (each relative to epoch 1) and validation mAP per
    epoch, one row of three panels per regime; linear heads dashed, CPRFL solid (needs
    matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("the plot needs matplotlib: pip install matplotlib") from e
    regimes = {
        rg: {m: runs for m, runs in rows.items() if mean_curve(runs, "val_mAP")}
        for rg, rows in rows_by_regime.items()
    }
    regimes = {rg: rows for rg, rows in regimes.items() if rows}
    if not regimes:
        raise ValueError("no run has training curves (runs from before curves were recorded)")
    fig, axes = plt.subplots(len(regimes), 3, figsize=(17, 4 * len(regimes)), squeeze=False)
    for (regime, rows), (ax_loss, ax_val, ax_map) in zip(regimes.items(), axes, strict=True):
        for i, (method, runs) in enumerate(rows.items()):
            style = {"ls": "--" if method.startswith("linear") else "-", "color": f"C{i % 10}"}
            for ax, key in ((ax_loss, "train_loss"), (ax_val, "val_loss")):
                loss = mean_curve(runs, key)
                epochs = range(1, len(loss) + 1)
                ax.plot(epochs, [v / loss[0] for v in loss], label=method, **style)
            ax_map.plot(epochs, mean_curve(runs, "val_mAP"), label=method, **style)
        ax_loss.set_title(f"{regime}: training loss / its epoch-1 value")
        ax_val.set_title(f"{regime}: validation loss / its epoch-1 value")
        ax_map.set_title(f"{regime}: validation mAP (%)")
        for ax in (ax_loss, ax_val, ax_map):
            ax.set_xlabel("epoch (mean over seeds)")
        ax_map.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from cprfl_zoo.fileio import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."), dpi=100)
    plt.close(fig)
