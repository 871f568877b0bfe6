"""Small helpers shared by the speed benchmarks (``bench_*.py``)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

DTYPES = ("float32", "bfloat16", "float16")


class TokenBackbone(torch.nn.Module):
    """Stands in for the backbone: the head cases feed (B, v, 2048) tokens straight to the head."""

    num_features = 2048

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(
    fns: dict[str, Callable[[], object]],
    rounds: int,
    iters: int,
    device: torch.device,
    warmup: int = 0,
) -> dict[str, list[float]]:
    """Seconds per call of every function, the functions alternating round by round.

    Each function is first called ``warmup`` times untimed. Then, in every one of ``rounds``
    rounds, each function in turn is called ``iters`` times between two device syncs, and the
    mean of those calls is one sample; interleaving lets a change in machine load affect all
    functions alike.

    Returns:
        The samples of each function (``rounds`` of them), by name.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            sync(device)
            samples[name].append((time.perf_counter() - start) / iters)
    return samples


def bench_parser(
    doc: str, quick_help: str | None = None, device: str | None = "cpu", dtype: bool = False
) -> argparse.ArgumentParser:
    """The command line the ``bench_*.py`` scripts share: ``--quick``, ``--device``, ``--dtype``.

    Args:
        doc: The module docstring; its first line is the description.
        quick_help: Help text of ``--quick``.
        device: Default of ``--device``; ``None`` leaves the option out (CPU-only benchmarks).
        dtype: Add ``--dtype`` (``float32`` by default, or an autocast dtype).
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    if device is not None:
        parser.add_argument("--device", default=device)
    if dtype:
        parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    return parser
