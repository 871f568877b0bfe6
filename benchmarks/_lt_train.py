"""Training and evaluation loops shared by the long-tailed accuracy benchmarks.

``lt_emoji.py`` and ``lt_multilabel.py`` train every method with the same budget through
:func:`train` and score it through :func:`predict`; a batch is fetched by ``get_batch(idx,
training)`` (cached backbone tokens, or normalised images from :func:`to_input`, augmented with
:func:`augment` when training end to end).
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import numpy as np
import torch
from torch import nn

GetBatch = Callable[[torch.Tensor, bool], torch.Tensor]


class EpochSampler(Protocol):
    """What :func:`train` needs of a sampler: an index list per epoch."""

    def set_epoch(self, epoch: int) -> None: ...

    def __iter__(self) -> Iterator[int]: ...


def logger(name: str) -> Callable[[str], None]:
    """A function printing ``[name] message`` to stderr."""

    def log(message: str) -> None:
        print(f"[{name}] {message}", file=sys.stderr, flush=True)

    return log


def to_input(canvases: np.ndarray, mean: float = 0.5, std: float = 0.5) -> torch.Tensor:
    """uint8 (B, S, S, 3) or grayscale (B, S, S) canvases -> normalised (B, 3, S, S) tensor.

    The tensor is float32 and channels-last; grayscale canvases are repeated over 3 channels.
    """
    x = torch.from_numpy(canvases).float().div_(255).sub_(mean).div_(std)
    x = x[:, None].expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.contiguous(memory_format=torch.channels_last)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and brightness / contrast jitter (±20 %) of a normalised batch."""
    b = x.shape[0]
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    gain = 1 + 0.4 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
    shift = 0.4 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * gain + mean + shift).clamp(-1, 1)


@torch.inference_mode()
def extract_tokens(
    backbone: nn.Module, canvases: np.ndarray, device: str = "cpu", batch: int = 64
) -> torch.Tensor:
    """Local backbone tokens (N, v, d0) of all canvases, as ``CPRFL.forward_features`` gives."""
    from cprfl_zoo.backbone import backbone_tokens

    backbone.eval()
    out = []
    for i in range(0, len(canvases), batch):
        x = to_input(canvases[i : i + batch]).to(device)
        out.append(backbone_tokens(backbone, backbone.forward_features(x)).float().cpu())
    return torch.cat(out).contiguous()


def imagenet_backbone(
    name: str, device: str = "cpu", check: bool = True
) -> tuple[nn.Module, dict, list | None]:
    """The ImageNet EfficientNet-Lite0 backbone (``_assets``), its state dict and photo check.

    Returns:
        The backbone (channels-last, eval, on ``device``), its state dict without the
        classifier, and ``_assets.imagenet_check``'s result (None without ``check``).
    """
    import _assets

    from cprfl_zoo.backbone import create_backbone

    classifier = _assets.efficientnet_lite0_imagenet()
    checked = _assets.imagenet_check(classifier) if check else None
    state = {k: v for k, v in classifier.state_dict().items() if not k.startswith("classifier.")}
    backbone = create_backbone(name)
    backbone.load_state_dict(state, strict=True)
    return backbone.to(device, memory_format=torch.channels_last).eval(), state, checked


def train(
    module: nn.Module,
    get_batch: GetBatch,
    targets: torch.Tensor,
    loss_fn: nn.Module,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    weight_decay: float,
    seed: int,
    backbone_lr_ratio: float = 1.0,
    device: str = "cpu",
    sampler: EpochSampler | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> None:
    """AdamW + one-cycle schedule (20 % warm-up), the same for every method.

    Parameters under ``backbone.`` / ``model.backbone.`` train at ``lr * backbone_lr_ratio``;
    biases and norm weights (1-d parameters) get no weight decay. Batches follow a seeded
    permutation per epoch, or the index list ``sampler`` gives for the epoch after
    ``sampler.set_epoch(epoch)`` (e.g. :class:`cprfl_zoo.data.ClassAwareSampler`); the schedule
    counts the batches of all epochs' lists. ``on_epoch(epoch, mean_loss)`` is called after
    each epoch with the mean of its batch losses (it may put the module in eval mode).
    """
    n = len(targets)
    gen = torch.Generator().manual_seed(seed)
    orders = []
    for epoch in range(epochs):
        if sampler is None:
            orders.append(torch.randperm(n, generator=gen))
        else:
            sampler.set_epoch(epoch)
            orders.append(torch.as_tensor(list(sampler), dtype=torch.long))
    steps = sum(math.ceil(len(order) / batch_size) for order in orders)
    groups = []
    for is_backbone in (True, False):
        for decay in (True, False):
            params = [
                p
                for name, p in module.named_parameters()
                if p.requires_grad
                and name.startswith(("backbone.", "model.backbone.")) == is_backbone
                and (p.ndim > 1) == decay
            ]
            if params:
                scale = backbone_lr_ratio if is_backbone else 1.0
                wd = weight_decay if decay else 0.0
                groups.append({"params": params, "lr": lr * scale, "weight_decay": wd})
    optimizer = torch.optim.AdamW(groups, lr=lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in groups], total_steps=steps, pct_start=0.2
    )
    for epoch, order in enumerate(orders):
        module.train()
        total = torch.zeros((), dtype=torch.float64, device=device)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            loss = loss_fn(module(get_batch(idx, True)), targets[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.detach().double()
        if on_epoch is not None:
            on_epoch(epoch, float(total) / math.ceil(len(order) / batch_size))


@torch.no_grad()
def predict(module: nn.Module, get_batch: GetBatch, n: int, batch: int = 128) -> torch.Tensor:
    """Logits of ``n`` samples, in order, float32 on the CPU (``get_batch(idx, False)``)."""
    module.eval()
    out = [
        module(get_batch(torch.arange(i, min(i + batch, n)), False)).float().cpu()
        for i in range(0, n, batch)
    ]
    return torch.cat(out)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population std of the non-NaN values (NaN, NaN if none; std 0 for one)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0
