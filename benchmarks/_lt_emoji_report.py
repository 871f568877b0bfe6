"""Results of the emoji benchmark ``lt_emoji.py``: the JSON file, the chosen runs, the tables.

Every finished (regime, method, seed, lr) run is a dict in ``doc["runs"]``; the learning rate
of a (regime, method) is the one with the best validation mAP on the first seed.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _lt_curves import convergence_table
from _lt_emoji_compare import f1_table, method_table, paired_tail_table
from _lt_emoji_data import BACKBONE, BASE_METHODS, METHODS, OPTIONS, REGIMES, epochs_of, lr_grid
from _lt_emoji_tools import anchor_base, spec_of
from _lt_train import mean_std as _mean_std


def load_results(path: Path) -> dict[str, Any]:
    """The results document at ``path`` ({"runs": []} if there is none)."""
    if path.is_file():
        return json.loads(path.read_text())
    return {"benchmark": "lt_emoji", "runs": []}


def _run_key(run: dict[str, Any]) -> tuple:
    return (run["regime"], run["method"], run["seed"], run["lr"], run.get("anchor_weight"))


GridPoint = tuple[float, float | None]  # (learning rate, anchor weight or None)


def grid_points(doc: dict[str, Any], regime: str, method: str) -> list[GridPoint] | None:
    """The (lr, anchor weight) points of a method's validation grid; None while unknown.

    An anchored method reuses its base method's chosen learning rate and searches the anchor
    weight (``config["anchor_weights"]``). In the regimes of ``config["reuse_base_lr"]`` every
    other method reuses the chosen learning rate of its head's ASL baseline
    (:data:`BASE_METHODS`); elsewhere it searches its learning-rate grid.
    """
    base = anchor_base(method)
    if base is None:
        if regime in doc["config"].get("reuse_base_lr", ()) and method not in BASE_METHODS:
            chosen = chosen_point(doc, regime, BASE_METHODS[spec_of(method).head == "cprfl"])
            return None if chosen is None else [(chosen[0], None)]
        return [(lr, None) for lr in lr_grid(doc["config"], regime, method)]
    chosen = chosen_point(doc, regime, base)
    if chosen is None:
        return None
    return [(chosen[0], float(w)) for w in doc["config"].get("anchor_weights", ())]


def chosen_point(doc: dict[str, Any], regime: str, method: str) -> GridPoint | None:
    """The grid point with the best validation mAP on the first seed (None until all are run;
    the only point of a one-point grid at once)."""
    points = grid_points(doc, regime, method)
    if points is not None and len(points) == 1:
        return points[0]  # nothing to choose
    first = doc["config"]["seeds"][0]
    runs = {
        (r["lr"], r.get("anchor_weight")): r
        for r in doc["runs"]
        if r["regime"] == regime and r["method"] == method and r["seed"] == first
    }
    if not points or any(p not in runs for p in points):
        return None
    best = max(points, key=lambda p: runs[p]["val_mAP"])
    return best


def _chosen_lr(doc: dict[str, Any], regime: str, method: str) -> float | None:
    """The learning rate of the chosen grid point (None until the grid is run)."""
    point = chosen_point(doc, regime, method)
    return None if point is None else point[0]


def selected_runs(doc: dict[str, Any], regime: str, method: str) -> list[dict[str, Any]]:
    """The runs at the grid point chosen on validation, one per seed."""
    point = chosen_point(doc, regime, method)
    if point is None:
        return []
    return sorted(
        (
            r
            for r in doc["runs"]
            if (r["regime"], r["method"], r["lr"], r.get("anchor_weight"))
            == (regime, method, *point)
        ),
        key=lambda r: r["seed"],
    )


def regime_rows(doc: dict[str, Any], regime: str) -> dict[str, list[dict[str, Any]]]:
    """Every method's runs at its chosen grid point in ``regime``, in table order."""
    methods = [m for m in (*METHODS, *OPTIONS) if any(r["method"] == m for r in doc["runs"])]
    rows = {m: selected_runs(doc, regime, m) for m in methods}
    return {m: r for m, r in rows.items() if r}


def format_tables(doc: dict[str, Any]) -> str:
    """Markdown tables: per regime mean ± std, paired tail differences, unseen AP, diagnostics."""
    cfg = doc["config"]
    lines: list[str] = []
    for regime in REGIMES:
        rows = regime_rows(doc, regime)
        if not rows:
            continue
        epochs = epochs_of(cfg, regime)
        lines += [
            f"### {regime}: {BACKBONE} ImageNet, {cfg['canvas_size']} px, {epochs} epochs, "
            f"batch {cfg['batch_size']}",
            "",
            *method_table(rows),
            "",
            *paired_tail_table(rows),
            "",
            *f1_table(rows),
        ]
        curves = convergence_table(rows)
        if curves:
            lines += ["", *curves]
        unseen = {m: runs for m, runs in rows.items() if "unseen_ap" in runs[0]}
        if unseen:
            lines += [
                "",
                "Unseen classes (held out of training, scored after `set_classes`):",
                "",
                "| method | unseen AP | chance |",
                "|---|---|---|",
            ]
            for m, runs in unseen.items():
                ap, _ = _mean_std([statistics.fmean(r["unseen_ap"]) for r in runs])
                ch = statistics.fmean(statistics.fmean(r["unseen_chance"]) for r in runs)
                sd = _mean_std([statistics.fmean(r["unseen_ap"]) for r in runs])[1]
                lines.append(f"| {m} | {ap:.2f} ± {sd:.2f} | {ch:.2f} |")
        lines += [
            "",
            "Diagnostics (mean over seeds): mean test logit on positives / negatives; share of "
            "ASL's gradient on the training set that pushes a group's logits down; correlation "
            "of the prompts' pairwise cosine similarities with the text embeddings'; relative "
            "change of the tail prompts in training:",
            "",
            "| method | head pos / neg | tail pos / neg | push-down head | push-down tail |"
            " text-prompt sim. corr. | tail prompt drift |",
            "|---|---|---|---|---|---|---|",
        ]
        for m, runs in rows.items():

            def avg(path: Callable[[dict], float], runs: list = runs) -> float:
                return statistics.fmean(path(run) for run in runs)

            def d(where: str, group: str, key: str, avg: Callable = avg) -> float:
                return avg(lambda run: run[where][group][key])

            corr = drift = "–"
            if "prompts" in runs[0]:
                corr = f"{avg(lambda run: run['prompts']['text_prompt_cos_corr']):.2f}"
                drift = f"{avg(lambda run: run['prompts']['prompt_drift']['tail']):.2f}"
            lines.append(
                f"| {m} | {d('diag_test', 'head', 'pos_logit'):.1f} / "
                f"{d('diag_test', 'head', 'neg_logit'):.1f} | "
                f"{d('diag_test', 'tail', 'pos_logit'):.1f} / "
                f"{d('diag_test', 'tail', 'neg_logit'):.1f} | "
                f"{d('diag_train', 'head', 'push_down_share'):.3f} | "
                f"{d('diag_train', 'tail', 'push_down_share'):.3f} | {corr} | {drift} |"
            )
        lines.append("")
    return "\n".join(lines)


def merge(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One document from several result files (runs concatenated, first file's metadata)."""
    out = dict(docs[0])
    runs: dict[tuple, dict[str, Any]] = {}
    for d in docs:
        for r in d["runs"]:
            runs.setdefault(_run_key(r), r)
    out["runs"] = list(runs.values())
    out["config"] = dict(docs[-1]["config"])  # the last file's grids (the widest, when extended)
    out["splits"] = {k: v for d in docs for k, v in d.get("splits", {}).items()}
    return out
