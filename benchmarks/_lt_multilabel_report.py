"""Results of ``lt_multilabel.py``: rows averaged over seeds, the results document, the table."""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

import torch
from _heads import head_width
from _lt_train import mean_std

from cprfl_zoo.fileio import atomic_write_text

KEYS = ("mAP", "mAP_head", "mAP_medium", "mAP_tail")


def summary_rows(per_seed: list[dict[str, Any]], methods: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per method: mean and std over seeds of each mAP, mean training time."""
    rows = []
    for method in methods:
        mine = [r for r in per_seed if r["method"] == method]
        row: dict[str, Any] = {"method": method, "seeds": len(mine)}
        for key in KEYS:
            mean, std = mean_std([r[key] for r in mine])
            row[key], row[f"{key}_std"] = round(mean, 2), round(std, 2)
        row["train_s"] = round(statistics.fmean(r["train_s"] for r in mine), 2)
        rows.append(row)
    return rows


def environment() -> dict[str, Any]:
    """Python, torch, torch threads and CPU count."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def write_json(doc: dict[str, Any], path: Path) -> None:
    """Write the results atomically."""
    atomic_write_text(path, json.dumps(doc, indent=2))


def format_table(doc: dict[str, Any]) -> str:
    """The Markdown table of a results document, with its configuration in two lines."""
    cfg = doc["config"]
    head = cfg["head"]
    mode = "full fine-tuning" if cfg["finetune"] else "frozen backbone tokens"
    lines = [
        f"Long-tailed multi-label, 20 classes, {doc['backbone']} ImageNet backbone ({mode}), "
        f"CPRFL head dim {head_width(head)}, {head['num_heads']} heads x {head['head_dim']}, "
        f"mlp {head['mlp_hidden_dim']}",
        f"train: max {cfg['max_count']} positives/class, imbalance {cfg['imbalance']:g}; "
        f"test: {doc['num_test_canvases']} canvases, {cfg['test_per_class']} per class; "
        f"head >= {doc['thresholds']['head']}, tail < {doc['thresholds']['tail']}; "
        f"{cfg['epochs']} epochs, batch {cfg['batch_size']}, AdamW lr {cfg['lr']:g}; "
        f"mean ± std over {len(cfg['seeds'])} seed(s)",
        "",
        f"| {'method':<18} | {'mAP':>14} | {'head':>14} | {'medium':>14} | {'tail':>14} |",
        f"|{'-' * 20}|{'-' * 16}|{'-' * 16}|{'-' * 16}|{'-' * 16}|",
    ]
    for r in doc["rows"]:
        cells = [f"{r[k]:6.2f} ± {r[k + '_std']:5.2f}" for k in KEYS]
        lines.append(f"| {r['method']:<18} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"run time {doc['runtime_s']:.0f} s "
        f"(feature extraction {doc['feature_extraction_s']:.0f} s)"
    )
    return "\n".join(lines)
