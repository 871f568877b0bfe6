"""``examples/train.py`` run unchanged, with measurements around it (used by ``gpu_check.py``).

Run: ``python benchmarks/_train_runner.py --plan PLAN.json --stats STATS [--deterministic]
[--backend nccl|gloo] [--share-device]``, directly or under ``torchrun``.

``PLAN.json`` is a list of runs, ``[{"name": ..., "argv": [train.py arguments]}, ...]``; each is
``train.py``'s ``main(argv)`` in this process, one after the other (a resume check is three runs).
train.py is imported from its file and patched from outside, never edited:

* its ``AsymmetricLoss`` records every training step's loss (a detached tensor, so no step waits
  for the device);
* its ``train_one_epoch`` is timed between two device syncs (images/s of each epoch);
* its ``train`` resets the CUDA peak-memory counter first and records, at the end, the peak,
  the SHA-256 of the model's and the EMA's weights, the optimiser's step count and the process
  group's backend;
* ``--backend`` chooses the process group's backend (timm picks NCCL on CUDA, gloo on the CPU)
  and ``--share-device`` puts every rank on the first GPU (two processes on one GPU).

Each rank writes ``<STATS>.rank<r>.json``: one entry per run of the plan.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from cprfl_zoo.fileio import atomic_write_text

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_train_script() -> Any:
    """Import ``examples/train.py`` from its file as a module."""
    spec = importlib.util.spec_from_file_location("cprfl_example_train", EXAMPLES / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the sorted (name, raw bytes) pairs of a state dict."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        tensor = state[name].detach().cpu().contiguous().reshape(-1)
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Recorder:
    """What one ``main(argv)`` of train.py did: step losses, epoch times, memory, weights."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.epochs: list[dict[str, float]] = []
        self.result: dict[str, Any] = {}

    def as_dict(self) -> dict[str, Any]:
        losses = [float(v) for v in torch.stack(self.losses).float().cpu()] if self.losses else []
        return {"losses": losses, "epochs": self.epochs, **self.result}


def install_patches(script: Any, recorder_box: list[Recorder], options: argparse.Namespace) -> None:
    """Wrap train.py's loss, epoch loop, ``train`` and process-group setup (see the docstring)."""
    base_loss = script.AsymmetricLoss

    class RecordingLoss(base_loss):
        def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            loss = super().forward(logits, targets)
            if torch.is_grad_enabled():
                recorder_box[0].losses.append(loss.detach())
            return loss

    script.AsymmetricLoss = RecordingLoss

    base_epoch = script.train_one_epoch

    def timed_epoch(net: Any, loader: Any, state: Any, loss_fn: Any, **kwargs: Any) -> dict:
        device = kwargs["device"]
        _sync(device)
        start = time.perf_counter()
        stats = base_epoch(net, loader, state, loss_fn, **kwargs)
        _sync(device)
        seconds = time.perf_counter() - start
        steps = len(loader)
        images = steps * loader.batch_size
        recorder_box[0].epochs.append(
            {"seconds": seconds, "steps": steps, "images": images, "loss": stats["loss"]}
        )
        return stats

    script.train_one_epoch = timed_epoch

    base_train = script.train

    def measured_train(ctx: Any, args: argparse.Namespace) -> Any:
        if ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(ctx.device)
        state = base_train(ctx, args)
        result = recorder_box[0].result
        result.update(
            rank=ctx.rank,
            world_size=ctx.world_size,
            device=str(ctx.device),
            backend=(
                torch.distributed.get_backend()
                if torch.distributed.is_available() and torch.distributed.is_initialized()
                else None
            ),
            model_sha256=state_digest(state.model.state_dict()),
            ema_sha256=state_digest(state.ema.module.state_dict()) if state.ema else None,
            optimizer_steps=sorted(
                {int(s["step"]) for s in state.optimizer.state_dict()["state"].values()}
            ),
            final_epoch=state.epoch,
        )
        if ctx.device.type == "cuda":
            result["peak_mib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**20
            result["peak_reserved_mib"] = torch.cuda.max_memory_reserved(ctx.device) / 2**20
        return state

    script.train = measured_train

    if options.backend is not None or options.share_device:
        base_init = script.init_distributed_device

        def init_distributed_device(info: Any) -> Any:
            if options.backend is not None:
                info.dist_backend = options.backend
            if options.share_device:
                os.environ["LOCAL_RANK"] = "0"  # timm puts rank r on cuda:<LOCAL_RANK>
            return base_init(info)

        script.init_distributed_device = init_distributed_device


def set_deterministic() -> None:
    """Deterministic kernels (cuDNN, cuBLAS with CUBLAS_WORKSPACE_CONFIG set by the caller)."""
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, required=True, help="JSON list of runs")
    parser.add_argument("--stats", type=Path, required=True, help="prefix of the stats files")
    parser.add_argument("--deterministic", action="store_true")
    parser.add_argument("--backend", choices=["nccl", "gloo"], default=None)
    parser.add_argument("--share-device", action="store_true", help="every rank on cuda:0")
    options = parser.parse_args(argv)
    plan = json.loads(options.plan.read_text(encoding="utf-8"))
    if options.deterministic:
        set_deterministic()
    script = load_train_script()
    box = [Recorder()]
    install_patches(script, box, options)
    rank = int(os.environ.get("RANK", "0"))
    out: list[dict[str, Any]] = []
    code = 0
    for run in plan:
        box[0] = Recorder()
        start = time.perf_counter()
        entry: dict[str, Any] = {"name": run["name"], "error": None}
        try:
            entry["returncode"] = script.main(run["argv"])
        except BaseException as e:  # SystemExit of a refused argument included: recorded
            entry["error"] = f"{type(e).__name__}: {e}"
            entry["traceback"] = traceback.format_exc()
            code = 1
        entry.update(box[0].as_dict())
        entry["wall_s"] = time.perf_counter() - start
        entry["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out.append(entry)
        atomic_write_text(Path(f"{options.stats}.rank{rank}.json"), json.dumps(out, indent=1))
        if entry["error"] is not None:
            break
    return code


if __name__ == "__main__":
    sys.exit(main())
