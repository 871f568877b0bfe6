"""Memory measurements shared by the speed benchmarks (``bench_*.py``).

* :func:`cuda_peak_bytes`: ``torch.cuda.max_memory_allocated`` during a call, above the memory
  allocated before it.
* :func:`cpu_alloc_peak_bytes`: the maximum running sum of the CPU allocator's allocation and
  free events that ``torch.profiler`` (``profile_memory=True``) records during a call.
* :func:`saved_tensor_bytes`: bytes of the tensors autograd keeps for the backward pass.
* :func:`rss_kib`: a field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), for a whole process.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from _speed import sync
from torch.profiler import ProfilerActivity, profile


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated on a CUDA device during ``fn()``, above what was allocated before."""
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def cpu_alloc_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes live at once, above the start, of the CPU allocator's events during ``fn()``."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def saved_tensor_bytes(
    loss_fn: Callable[[], torch.Tensor], exclude: tuple[torch.Tensor, ...] = ()
) -> int:
    """Bytes of the tensors saved for backward while ``loss_fn()`` runs, each storage once.

    The storages of ``exclude`` (inputs that exist anyway) are not counted. The loss is then
    back-propagated, so the call is a full forward + backward.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    loss.backward()
    return sum(seen.values())


def rss_kib(field: str) -> int:
    """A memory field of ``/proc/self/status`` in KiB (``VmRSS``: resident, ``VmHWM``: peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0
