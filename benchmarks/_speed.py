"""Small helpers shared by the speed benchmarks (``bench_*.py``)."""

from __future__ import annotations

import torch


class TokenBackbone(torch.nn.Module):
    """Stands in for the backbone: the head cases feed (B, v, 2048) tokens straight to the head."""

    num_features = 2048

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
