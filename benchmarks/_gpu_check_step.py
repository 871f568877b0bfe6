"""``gpu_check.py``'s section 4: our training step against the official ``MyModel``'s.

One AdamW step (lr 1e-5, weight decay 1e-4) with ASL (γ− = 4, γ+ = 0, clip 0.05) on random
images, at the same batch, image size, classes (the COCO names) and autocast dtype for every
model, random weights everywhere:

* ``official``: the official ``MyModel`` (torchvision ResNet-101, its einsum transformer layer
  over all v + C tokens, the CLIP RN50 text tower re-encoding the 77-token prompts and trained
  every step), imported from ``--official-dir`` by :mod:`_official`;
* ``ours-cached``: ``create_cprfl("resnet101", ...)`` with frozen class embeddings (the default);
* ``ours-trainable`` (GPU run only): this package's trainable-text-encoder mode, the same RN50
  text tower (random weights through open_clip) on the trimmed context, i.e. the official
  model's work.

The models alternate round by round (:func:`_speed.interleaved_times`); the time is the median
round; on CUDA the peak memory of one step above the model and optimiser state is recorded.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _gpu_check_core import Sizes
from _memory import cuda_peak_bytes
from _speed import interleaved_times
from torch import nn

TEXT_DIM = 1024  # CLIP RN50's embedding width, which the official PI layer takes


def _ours_head(sizes: Sizes) -> dict[str, int]:
    """Our head arguments matching the official model's sizes (paper sizes unless overridden)."""
    model = sizes.official_overrides.get("model", {})
    keys = {"feature_d": "embed_dim", "head_num": "num_heads", "dim_head": "head_dim"}
    keys["mlp_dim"] = "mlp_hidden_dim"
    return {ours: model[theirs] for theirs, ours in keys.items() if theirs in model}


def build_models(
    sizes: Sizes, official_dir: Path, names: list[str], tmp: Path
) -> dict[str, nn.Module]:
    """The official model and ours (cached, and trainable where ``Sizes`` asks), on the CPU."""
    from _official import build_official_model

    from cprfl_zoo import create_cprfl

    overrides = sizes.official_overrides
    torch.manual_seed(0)
    official = build_official_model(
        official_dir, names, model_sizes=overrides.get("model"), clip_sizes=overrides.get("clip")
    )
    models: dict[str, nn.Module] = {"official": official}
    head = _ours_head(sizes)
    torch.manual_seed(0)
    models["ours-cached"] = create_cprfl(
        "resnet101",
        class_names=names,
        text_embeddings=torch.randn(len(names), TEXT_DIM),
        pretrained=False,
        **head,
    )
    if sizes.official_trainable:
        from _clip import CLIP_MODEL, write_random_clip_checkpoint

        checkpoint = write_random_clip_checkpoint(tmp / "rn50-quickgelu.safetensors")
        torch.manual_seed(0)
        models["ours-trainable"] = create_cprfl(
            "resnet101",
            class_names=names,
            pretrained=False,
            text_encoder=CLIP_MODEL,
            text_pretrained=str(checkpoint),
            trainable_text_encoder=True,
            **head,
        )
    return models


def _trainer(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, dtype: str) -> Callable:
    from cprfl_zoo.losses import AsymmetricLoss

    amp = getattr(torch, dtype)
    device = images.device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=1e-4)
    loss_fn = AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05, reduction="mean")

    def step() -> None:
        with torch.autocast(device.type, dtype=amp, enabled=amp != torch.float32):
            logits = model(images)
        loss = loss_fn(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def run_step_compare(
    sizes: Sizes, device: str, dtype: str, official_dir: Path | None
) -> dict[str, Any]:
    """Section 4's rows: one per model, with the official / ours time ratio."""
    if official_dir is None:
        return {"status": "skipped", "reason": "no --official-dir"}
    from _official import move_official

    from cprfl_zoo.class_lists import COCO_LT_CLASSES

    dev = torch.device(device)
    names = list(COCO_LT_CLASSES)[: sizes.step_classes]
    with tempfile.TemporaryDirectory(prefix="cprfl-gpu-check-step-") as tmp:
        models = build_models(sizes, official_dir, names, Path(tmp))
    move_official(models["official"], dev)
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(sizes.batch, 3, sizes.img_size, sizes.img_size, generator=gen).to(dev)
    targets = (torch.rand(sizes.batch, len(names), generator=gen) < 0.05).float().to(dev)
    rows: dict[str, dict[str, Any]] = {}
    steps = {}
    for name, model in models.items():
        model.to(dev).train()
        row: dict[str, Any] = {"impl": name, "batch": sizes.batch, "img_size": sizes.img_size}
        row.update(classes=len(names), dtype=dtype)
        row["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        amp = getattr(torch, dtype)
        with torch.no_grad(), torch.autocast(dev.type, dtype=amp, enabled=amp != torch.float32):
            row["logits_shape"] = list(model(images).shape)
        steps[name] = _trainer(model, images, targets, dtype)
        steps[name]()  # warm-up: optimiser state, cuDNN's algorithm choice
        if dev.type == "cuda":
            row["peak_mib"] = cuda_peak_bytes(steps[name], dev) / 2**20
        rows[name] = row
    iters = 3 if dev.type == "cuda" else 1
    samples = interleaved_times(steps, sizes.step_rounds, iters, dev)
    official = statistics.median(samples["official"])
    for name, values in samples.items():
        time_s = statistics.median(values)
        rows[name].update(time_s=time_s, times_s=values, images_per_s=sizes.batch / time_s)
        rows[name]["official_over_this"] = official / time_s
    shapes_ok = all(r["logits_shape"] == [sizes.batch, len(names)] for r in rows.values())
    return {"status": "ok" if shapes_ok else "failed", "rows": list(rows.values())}
