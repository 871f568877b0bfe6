"""Eval throughput of the deploy module (``model.deploy()``) against the model in eval mode.

Both run under ``torch.inference_mode``, alternating over rounds (the best round is kept), in one
process, so a change in machine load affects them alike. Cases:

* ``head``: φ, PI, VSI and the classifier on precomputed backbone tokens of ResNet-101's shape
  at 448 px (v = 14 × 14 = 196 tokens of width 2048), paper head sizes (d = 2048, 8 heads of 512,
  FFN 2048, CLIP RN50 embeddings of width 1024), at C = 80 (COCO), 1,000 and 10,000;
* ``model``: the whole model on ResNet-101 at 448 px (random weights), C = 80 and 1,000
  (full run only).

``deploy_s`` is the one-off cost of ``model.deploy()`` (the prompt-to-prompt attention of every
class, once). Throughput is images per second; ratio = deploy / eval-mode model.

Run: ``python benchmarks/bench_deploy.py [--quick] [--device cpu|cuda] [--threads 1]``
"""

from __future__ import annotations

import gc
import math
import time
from typing import Any

import torch
from _speed import TokenBackbone, bench_parser

# (kind, batch, classes); v = 196 tokens for both kinds.
CASES = [
    ("head", 4, 80),
    ("head", 4, 1000),
    ("head", 1, 10000),
    ("model", 2, 80),
    ("model", 2, 1000),
]
QUICK_CASES = [("head", 2, 80), ("head", 1, 1000)]
TOKENS = 196
IMPLS = ("deploy", "eval")


def _build(kind: str, classes: int, device: torch.device) -> Any:
    from cprfl_zoo.model import CPRFL

    torch.manual_seed(0)
    backbone: Any = TokenBackbone() if kind == "head" else "resnet101"
    names = [f"class {i}" for i in range(classes)]
    model = CPRFL(backbone, names, torch.randn(classes, 1024))
    return model.to(device).eval()


def _inputs(kind: str, batch: int, device: torch.device) -> torch.Tensor:
    if kind == "head":
        return torch.randn(batch, TOKENS, 2048, device=device)  # backbone tokens (B, v, d0)
    return torch.randn(batch, 3, 448, 448, device=device)


def _time(fn: Any, x: torch.Tensor, reps: int) -> float:
    best = math.inf
    for _ in range(reps):
        if x.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def run_case(
    kind: str, batch: int, classes: int, device: str = "cpu", quick: bool = False
) -> list[dict[str, Any]]:
    """Time one case, the two implementations alternating; one row per implementation."""
    dev = torch.device(device)
    model = _build(kind, classes, dev)
    x = _inputs(kind, batch, dev)
    huge = classes >= 10000 and dev.type == "cpu"
    rounds, reps = (2, 1) if huge else ((2, 2) if quick else (3, 2))
    with torch.inference_mode():
        t0 = time.perf_counter()
        deployed = model.deploy()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        deploy_s = time.perf_counter() - t0
        if kind == "head":
            fns = {"deploy": deployed.forward_head, "eval": model.forward_head}
        else:
            fns = {"deploy": deployed, "eval": model}
        rel_err = None
        if not huge:
            expected = fns["eval"](x)
            rel_err = ((fns["deploy"](x) - expected).norm() / expected.norm()).item()
        if not huge:  # warm-up; at 10,000 classes on the CPU one eval call takes a minute
            for fn in fns.values():
                fn(x)
        times = dict.fromkeys(IMPLS, math.inf)
        for _ in range(rounds):
            for impl in IMPLS:
                times[impl] = min(times[impl], _time(fns[impl], x, reps))
    rows = []
    for impl in IMPLS:
        row = {"bench": "deploy", "kind": kind, "impl": impl, "batch": batch, "v": TOKENS}
        row.update(classes=classes, device=device, time_s=times[impl])
        row["images_per_s"] = batch / times[impl]
        if impl == "deploy":
            row.update(deploy_s=deploy_s, rel_err=rel_err)
        rows.append(row)
    del model, deployed, fns
    gc.collect()
    return rows


def run(quick: bool = False, device: str = "cpu") -> list[dict[str, Any]]:
    """Run every case; two rows (deploy, eval) per case."""
    rows: list[dict[str, Any]] = []
    for kind, batch, classes in QUICK_CASES if quick else CASES:
        rows.extend(run_case(kind, batch, classes, device, quick))
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """Side-by-side table: images/s of both implementations and their ratio."""
    lines = [
        f"{'case':<6} {'B':>2} {'C':>6} {'deploy img/s':>13} {'eval img/s':>11} {'×':>7} "
        f"{'deploy() s':>10} {'rel err':>8}"
    ]
    by_case: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by_case.setdefault((r["kind"], r["batch"], r["classes"]), {})[r["impl"]] = r
    for (kind, batch, classes), pair in by_case.items():
        ours, other = pair["deploy"], pair["eval"]
        err = "-" if ours.get("rel_err") is None else f"{ours['rel_err']:.1e}"
        lines.append(
            f"{kind:<6} {batch:>2} {classes:>6} {ours['images_per_s']:>13.3f} "
            f"{other['images_per_s']:>11.3f} {other['time_s'] / ours['time_s']:>6.2f}x "
            f"{ours['deploy_s']:>10.2f} {err:>8}"
        )
    lines.append("× = deploy / eval-mode model throughput: above 1 means the deploy path is faster")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    parser = bench_parser(__doc__, "two small head cases", device=device)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}, float32")
    print(format_rows(run(args.quick, args.device)))


if __name__ == "__main__":
    main()
