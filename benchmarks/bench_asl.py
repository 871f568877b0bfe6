"""AsymmetricLoss vs a straightforward reimplementation of the reference: time and peak memory.

The reference is the ``AsymmetricLoss`` of github.com/Alibaba-MIIL/ASL
(src/loss_functions/losses.py; also in the CPRFL code), reimplemented below op for op: sigmoid,
clipped ``1 - p``, ``log(clamp(·, eps))``, focusing weight ``pow(1 - pt, γ)`` built without
gradient, product, reduction. Both run forward + backward on the same logits and targets, side by
side in one process.

Peak memory on CPU is measured two ways, both printed:

* ``peak``: ``torch.profiler`` with ``profile_memory=True`` records every allocation and free of
  the CPU allocator during one forward + backward; the peak is the maximum of their running sum
  (bytes live at once above what existed before the call, the gradient of the logits included).
* ``saved``: bytes of the tensors autograd keeps for the backward pass, counted with
  ``torch.autograd.graph.saved_tensors_hooks`` (each storage once, the caller's logits and
  targets excluded since they exist anyway).

On CUDA the peak is ``torch.cuda.max_memory_allocated`` above the memory allocated before.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_asl.py [--quick] [--device cuda]``
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from functools import partial

import torch
from _memory import cpu_alloc_peak_bytes, cuda_peak_bytes, saved_tensor_bytes
from _speed import bench_parser, interleaved_times

from cprfl_zoo.losses import AsymmetricLoss

SHAPES = [(64, 80), (64, 10_000)]
# (label, gamma_neg, gamma_pos, clip, reduction)
SETTINGS = [
    ("reference defaults", 4.0, 1.0, 0.05, "sum"),
    ("CPRFL setting", 4.0, 0.0, 0.05, "mean"),
]


class ReferenceASL(torch.nn.Module):
    """The reference AsymmetricLoss computation, written out for comparison."""

    def __init__(
        self,
        gamma_neg: float = 4,
        gamma_pos: float = 1,
        clip: float = 0.05,
        eps: float = 1e-8,
        reduction: str = "sum",
    ) -> None:
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps
        self.reduction = reduction

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(x)
        p_neg = 1 - p
        if self.clip > 0:
            p_neg = (p_neg + self.clip).clamp(max=1)
        loss = y * torch.log(p.clamp(min=self.eps)) + (1 - y) * torch.log(p_neg.clamp(min=self.eps))
        if self.gamma_neg > 0 or self.gamma_pos > 0:
            # The reference toggles the global grad mode; no_grad is the same here.
            with torch.no_grad():
                pt = p * y + p_neg * (1 - y)
                gamma = self.gamma_pos * y + self.gamma_neg * (1 - y)
                weight = torch.pow(1 - pt, gamma)
            loss = loss * weight
        return -loss.sum() if self.reduction == "sum" else -loss.mean()


def _step(fn: Callable, x: torch.Tensor, y: torch.Tensor) -> None:
    x.grad = None
    fn(x, y).backward()


def _time_all(
    fns: dict[str, Callable], x: torch.Tensor, y: torch.Tensor, rounds: int, iters: int
) -> dict[str, float]:
    """Median seconds per forward + backward, the implementations interleaved round by round."""
    steps = {name: partial(_step, fn, x, y) for name, fn in fns.items()}
    samples = interleaved_times(steps, rounds, iters, x.device, warmup=3)
    return {name: statistics.median(s) for name, s in samples.items()}


def _peak_bytes(fn: Callable, x: torch.Tensor, y: torch.Tensor) -> int:
    """Peak bytes allocated above the starting point during one forward + backward."""
    x.grad = None
    if x.device.type == "cuda":
        return cuda_peak_bytes(partial(_step, fn, x, y), x.device)
    return cpu_alloc_peak_bytes(partial(_step, fn, x, y))


def _saved_bytes(fn: Callable, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes of the tensors saved for backward, each storage once, inputs excluded."""
    x.grad = None
    return saved_tensor_bytes(partial(fn, x, y), exclude=(x, y))


def run(quick: bool = False, device: str = "cpu") -> list[dict]:
    """Benchmark both implementations at every shape and setting.

    Args:
        quick: Fewer timing rounds.
        device: Torch device to run on.

    Returns:
        One row per (setting, shape) with times (ms), peak and saved bytes, and the ratios
        ours / reference.
    """
    dev = torch.device(device)
    rounds, iters = (5, 5) if quick else (15, 20)
    rows = []
    for label, gamma_neg, gamma_pos, clip, reduction in SETTINGS:
        ours = AsymmetricLoss(gamma_neg, gamma_pos, clip, reduction=reduction)
        checked = AsymmetricLoss(gamma_neg, gamma_pos, clip, reduction=reduction, validate=True)
        ref = ReferenceASL(gamma_neg, gamma_pos, clip, reduction=reduction)
        for batch, classes in SHAPES:
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(batch, classes, generator=gen).mul_(3).to(dev).requires_grad_()
            y = (torch.rand(batch, classes, generator=gen) < 0.05).float().to(dev)
            # Same value and gradient first, so the comparison is of equal work.
            g_ours, g_ref = (torch.autograd.grad(fn(x, y), x)[0].clone() for fn in (ours, ref))
            torch.testing.assert_close(g_ours, g_ref, rtol=1e-3, atol=1e-5)
            times = _time_all({"ours": ours, "checked": checked, "ref": ref}, x, y, rounds, iters)
            peak = {name: _peak_bytes(fn, x, y) for name, fn in (("ours", ours), ("ref", ref))}
            saved = {name: _saved_bytes(fn, x, y) for name, fn in (("ours", ours), ("ref", ref))}
            rows.append(
                {
                    "setting": label,
                    "batch": batch,
                    "classes": classes,
                    "device": str(dev),
                    "ours_ms": times["ours"] * 1e3,
                    "ref_ms": times["ref"] * 1e3,
                    "time_ratio": times["ours"] / times["ref"],
                    "checked_ms": times["checked"] * 1e3,
                    "checked_time_ratio": times["checked"] / times["ref"],
                    "ours_peak_bytes": peak["ours"],
                    "ref_peak_bytes": peak["ref"],
                    "peak_ratio": peak["ours"] / peak["ref"],
                    "ours_saved_bytes": saved["ours"],
                    "ref_saved_bytes": saved["ref"],
                }
            )
    return rows


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f}"


def main() -> None:
    args = bench_parser(__doc__, "fewer timing rounds").parse_args()
    rows = run(quick=args.quick, device=args.device)
    print(
        f"AsymmetricLoss (ours) vs reference reimplementation, forward + backward, "
        f"float32, device={args.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    peak_method = (
        "torch.cuda.max_memory_allocated above the memory allocated before the call"
        if args.device.startswith("cuda")
        else "max running sum of CPU allocator events (torch.profiler, profile_memory=True) "
        "above the start of the call"
    )
    print(
        f"time: median over interleaved rounds. peak: {peak_method}, logits' gradient "
        "included. saved: bytes autograd keeps for backward (saved_tensors_hooks), inputs "
        "excluded. Ratios are ours / reference (< 1 is better); 'checked' is the time ratio "
        "with validate=True (value checks: one host sync per call; off by default)."
    )
    header = (
        f"{'setting':<20}{'B x C':>12}{'ours ms':>10}{'ref ms':>10}{'time':>7}{'checked':>10}"
        f"{'ours peak KiB':>15}{'ref peak KiB':>14}{'peak':>7}{'ours saved':>12}{'ref saved':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        shape = f"{r['batch']} x {r['classes']}"
        print(
            f"{r['setting']:<20}{shape:>12}"
            f"{r['ours_ms']:>10.3f}{r['ref_ms']:>10.3f}{r['time_ratio']:>7.2f}"
            f"{r['checked_time_ratio']:>10.2f}"
            f"{_kib(r['ours_peak_bytes']):>15}{_kib(r['ref_peak_bytes']):>14}"
            f"{r['peak_ratio']:>7.2f}{_kib(r['ours_saved_bytes']):>12}"
            f"{_kib(r['ref_saved_bytes']):>11}"
        )


if __name__ == "__main__":
    main()
