"""``gpu_check.py``'s section 3: ``examples/train.py`` under torchrun, one and two processes."""

from __future__ import annotations

import shutil
from typing import Any

from _gpu_check_core import Context
from _gpu_check_train import (
    item_timeout,
    make_data,
    run_plan,
    summarize_run,
    time_scale,
    train_argv,
)


def run_torchrun(ctx: Context) -> dict[str, Any]:
    """Section 3: train.py under torchrun: 1 process (NCCL on CUDA), then 2 on one device.

    Two NCCL ranks on one GPU are tried first; where NCCL refuses them, gloo on the CUDA
    tensors. On the CPU the backend is gloo. Each run checks the world size, the backend and
    that every rank ends with the same weights.
    """
    data = make_data(ctx)
    cuda = ctx.device == "cuda"
    plans: list[tuple[str, int, str | None, bool]] = [
        ("nccl-1proc" if cuda else "gloo-1proc", 1, None, False),
        ("nccl-2proc-1gpu" if cuda else "gloo-2proc", 2, "nccl" if cuda else None, cuda),
    ]
    runs: list[dict[str, Any]] = []
    while plans:
        name, procs, backend, share = plans.pop(0)
        row: dict[str, Any] = {"name": name, "procs": procs, "backend_asked": backend or "default"}
        runs.append(row)
        # The NCCL attempt on one GPU leaves the gloo fallback its time.
        reserve = 25.0 * time_scale(ctx) if name == "nccl-2proc-1gpu" else 0.0
        timeout = item_timeout(ctx, reserve, 15.0 * time_scale(ctx))
        if timeout is None:
            row.update(status="skipped", reason="time budget")
            continue
        steps = ctx.sizes.ddp_steps
        out = ctx.work / "ddp" / name
        argv = [*train_argv(ctx, data, out, steps, 1, procs=procs), "--amp", "bf16"]
        flags = (("--backend", backend) if backend else ()) + (("--share-device",) * share)
        ctx.log(f"[gpu_check]   torchrun {name} ({timeout:.0f} s at most)")
        result, ranks = run_plan(
            ctx, [{"name": name, "argv": argv}], name, timeout,
            torchrun=procs, runner_flags=flags,
        )  # fmt: skip
        entries = {r: (v or [{}])[0] for r, v in ranks.items()}
        row["ranks"] = {
            r: {k: e.get(k) for k in ("world_size", "backend", "device", "model_sha256", "error")}
            for r, e in entries.items()
        }
        if 0 in entries:
            row.update(summarize_run(entries[0]))
        checks = {
            "all_ranks_reported": sorted(entries) == list(range(procs)),
            "world_size": all(e.get("world_size") == procs for e in entries.values()),
            "same_weights": len({e.get("model_sha256") for e in entries.values()}) == 1,
            "steps": all(e.get("optimizer_steps") == [steps] for e in entries.values()),
        }
        row["checks"] = checks
        if procs == 1 and entries.get(0, {}).get("backend") is None:
            row["note"] = (
                "no process group: timm's init_distributed_device starts one only when "
                "WORLD_SIZE > 1, so train.py ran as one plain process (NCCL unused)"
            )
        ok = result.returncode == 0 and all(checks.values())
        row["status"] = "ok" if ok else ("timeout" if result.timed_out else "failed")
        if not ok:
            row["command"] = result.as_dict()
        if not ok and name == "nccl-2proc-1gpu":
            plans.append(("gloo-2proc-1gpu", 2, "gloo", True))
        shutil.rmtree(out, ignore_errors=True)
    # NCCL refusing two ranks on one GPU is expected; the gloo fallback then answers.
    needed = [r for r in runs if r["name"] != "nccl-2proc-1gpu" or len(runs) == 2]
    ok = all(r["status"] == "ok" for r in needed)
    return {"status": "ok" if ok else "failed", "runs": runs}
