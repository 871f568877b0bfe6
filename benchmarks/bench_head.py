"""CPRFL head vs the naive full self-attention form: forward+backward time and peak memory.

The head is φ + PI + VSI + classifier on precomputed backbone tokens (B, v, d0). "naive" is the
official code's computation: full self-attention (einsum + softmax) and FFN over all v + C
tokens of every image, then the last C rows. "naive-sdpa" is the same with PyTorch's fused
``scaled_dot_product_attention``, to separate the algorithmic saving from the kernel.

Each case runs in its own subprocess so its peak memory can be read from the kernel
(``VmHWM`` minus the resident size after setup on CPU; ``max_memory_allocated`` on CUDA).

Run: ``python benchmarks/bench_head.py [--quick] [--device cuda] [--dtype bfloat16]``
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from _memory import rss_kib
from _speed import TokenBackbone, bench_parser

# (batch, v, classes): the COCO shape, then 1,000 and 10,000 classes.
CASES = [(4, 196, 80), (4, 196, 1000), (1, 196, 10000)]
QUICK_CASES = [(2, 196, 80), (1, 196, 1000)]
IMPLS = ("cprfl", "naive", "naive-sdpa")
MEM_BUDGET_GIB = 18.0


def _naive_logits(model: Any, tokens: torch.Tensor, fused: bool) -> torch.Tensor:
    feats = model.visual_proj(tokens)
    prompts = model.get_prompts()
    b, n_cls = feats.shape[0], prompts.shape[0]
    x = torch.cat([feats, prompts.unsqueeze(0).expand(b, -1, -1)], dim=1)
    vsi = model.vsi
    h, hd = vsi.attn.num_heads, vsi.attn.head_dim
    q, k, v = vsi.attn.qkv(vsi.norm1(x)).chunk(3, dim=-1)
    q, k, v = (t.reshape(b, -1, h, hd).transpose(1, 2) for t in (q, k, v))
    if fused:
        out = F.scaled_dot_product_attention(q, k, v, scale=vsi.attn.scale)
    else:
        attn = torch.einsum("bhid,bhjd->bhij", q, k).mul(vsi.attn.scale).softmax(-1)
        out = torch.einsum("bhij,bhjd->bhid", attn, v)
    out = vsi.attn.proj(out.transpose(1, 2).reshape(b, -1, h * hd))
    refined = vsi.mlp(vsi.norm2(out))[:, -n_cls:]
    return (refined * prompts).sum(-1)


def _estimate_naive_gib(batch: int, v: int, classes: int, dtype_bytes: int) -> float:
    n = v + classes
    # attention scores and probabilities kept for backward, 8 heads
    return 2 * batch * 8 * n * n * dtype_bytes / 2**30


def build_head_model(
    classes: int,
    device: torch.device,
    head_kwargs: dict[str, int] | None = None,
    token_dim: int = 2048,
    text_dim: int = 1024,
) -> Any:
    """A CPRFL head on :class:`TokenBackbone` tokens, training mode, VSI dropout off.

    Args:
        classes: Number of classes C (random class embeddings, seed 0).
        device: Where the model goes.
        head_kwargs: CPRFL head arguments (default: the paper's sizes).
        token_dim: Width d0 of the tokens fed to the head.
        text_dim: Width of the random class embeddings.
    """
    from cprfl_zoo.model import CPRFL

    torch.manual_seed(0)
    backbone = TokenBackbone()
    backbone.num_features = token_dim
    names = [f"c{i}" for i in range(classes)]
    model = CPRFL(backbone, names, torch.randn(classes, text_dim), **(head_kwargs or {}))
    model.to(device).train()
    model.vsi.apply(lambda m: setattr(m, "p", 0.0) if isinstance(m, torch.nn.Dropout) else None)
    return model


def head_step(
    model: Any, impl: str, tokens: torch.Tensor, amp_dtype: torch.dtype
) -> Callable[[], None]:
    """One forward + backward of ``impl`` (one of :data:`IMPLS`) on ``tokens``, as a callable."""
    dev = tokens.device

    def step() -> None:
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
            if impl == "cprfl":
                logits = model.forward_head(tokens)
            else:
                logits = _naive_logits(model, tokens, fused=impl == "naive-sdpa")
        logits.float().sum().backward()
        model.zero_grad(set_to_none=True)

    return step


def _run_case(
    impl: str, batch: int, v: int, classes: int, device: str, dtype: str, reps: int, warmup: bool
) -> dict[str, float]:
    dev = torch.device(device)
    model = build_head_model(classes, dev)
    tokens = torch.randn(batch, v, 2048, device=dev)
    step = head_step(model, impl, tokens, getattr(torch, dtype))

    if warmup:
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_kib("VmRSS") * 1024
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (
        torch.cuda.max_memory_allocated() - base
        if dev.type == "cuda"
        else rss_kib("VmHWM") * 1024 - base
    )
    return {"time_s": min(times), "peak_mib": max(peak, 0) / 2**20}


def _slow_on_cpu(impl: str, classes: int, device: str) -> str | None:
    if device == "cpu" and classes >= 10000 and impl == "naive":
        return "one CPU step of the einsum form takes minutes here; naive-sdpa is the baseline"
    return None


def run(quick: bool = False, device: str = "cpu", dtype: str = "float32") -> list[dict]:
    """Run every case in subprocesses and return one row per (case, implementation).

    The implementations of a case alternate over rounds (the minimum time and the largest peak
    are kept), so a change in machine load affects them alike.
    """
    rows = []
    dtype_bytes = 2 if dtype in ("bfloat16", "float16") else 4
    for batch, v, classes in QUICK_CASES if quick else CASES:
        huge = classes >= 10000
        reps, rounds = (1, 1) if huge else (3, 1 if quick else 2)
        warmup = not (huge and device == "cpu")
        case_rows = {}
        for impl in IMPLS:
            row = {"bench": "head", "impl": impl, "batch": batch, "v": v, "classes": classes}
            row.update({"device": device, "dtype": dtype})
            est = _estimate_naive_gib(batch, v, classes, dtype_bytes)
            if impl == "naive" and device == "cpu" and est > MEM_BUDGET_GIB:
                row.update(skipped=f"needs ~{est:.0f} GiB for attention matrices")
            elif reason := _slow_on_cpu(impl, classes, device):
                row.update(skipped=reason)
            case_rows[impl] = row
        for _ in range(rounds):
            for impl, row in case_rows.items():
                if "skipped" in row:
                    continue
                cmd = [sys.executable, __file__, "--case", impl, str(batch), str(v), str(classes)]
                cmd += ["--device", device, "--dtype", dtype, "--reps", str(reps)]
                cmd += [] if warmup else ["--no-warmup"]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
                if proc.returncode != 0:
                    row.update(skipped=f"failed: {proc.stderr.strip().splitlines()[-1:]}")
                    continue
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                row["time_s"] = min(row.get("time_s", math.inf), res["time_s"])
                row["peak_mib"] = max(row.get("peak_mib", 0.0), res["peak_mib"])
        rows.extend(case_rows.values())
    return rows


def format_rows(rows: list[dict]) -> str:
    """Format rows as a table with ratios against CPRFL's head."""
    lines = [
        f"{'B':>2} {'v':>4} {'C':>6} {'impl':<11} {'time (s)':>9} {'peak MiB':>9} "
        f"{'time ×':>7} {'mem ×':>7}"
    ]
    ours = {(r["batch"], r["classes"]): r for r in rows if r["impl"] == "cprfl" and "time_s" in r}
    for r in rows:
        key = (r["batch"], r["classes"])
        head = f"{r['batch']:>2} {r['v']:>4} {r['classes']:>6} {r['impl']:<11}"
        if "time_s" not in r:
            lines.append(f"{head} skipped: {r.get('skipped')}")
            continue
        base = ours.get(key)
        t_ratio = r["time_s"] / base["time_s"] if base else float("nan")
        m_ratio = r["peak_mib"] / base["peak_mib"] if base and base["peak_mib"] else float("nan")
        lines.append(
            f"{head} {r['time_s']:>9.3f} {r['peak_mib']:>9.0f} {t_ratio:>6.2f}x {m_ratio:>6.2f}x"
        )
    lines.append("ratios are naive / cprfl: above 1 means the CPRFL head is faster / smaller")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    parser = bench_parser(__doc__, device=device, dtype=True)
    parser.add_argument("--case", nargs=4, metavar=("IMPL", "B", "V", "C"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-warmup", dest="warmup", action="store_false")
    args = parser.parse_args(argv)
    if args.case:
        impl, b, v, c = args.case
        res = _run_case(
            impl, int(b), int(v), int(c), args.device, args.dtype, args.reps, args.warmup
        )
        print(json.dumps(res))
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}, {args.dtype}"
    )
    print(format_rows(run(args.quick, args.device, args.dtype)))


if __name__ == "__main__":
    main()
