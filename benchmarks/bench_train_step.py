"""One CPRFL training step with cached class embeddings vs re-encoding the prompts every step.

The paper's setting: ResNet-101 at 448 x 448, the 80 COCO classes, head sizes d = 2048 (8 heads of
512, FFN 2048, PI hidden 1024), ASL (γ− = 4, γ+ = 0, clip 0.05, mean), one AdamW step, batch 2.
Every weight is random (nothing is downloaded). Three ways to get the class embeddings W:

* ``cached``: the default, frozen embeddings computed once (a buffer); W costs nothing per step.
* ``official-style``: what the official code does (``src/models/build_model_TF.py``): the 80
  tokenised prompts go through the CLIP text tower (OpenAI RN50's: width 512, 12 layers, the full
  77-token context) on every forward, and its weights are fine-tuned with the rest. Built here from
  open_clip's ``"RN50-quickgelu"`` config with random weights, encoding with open_clip's own
  ``encode_text``.
* ``trainable``: this package's trainable-text-encoder mode
  (``create_cprfl(..., trainable_text_encoder=True)``), the same tower on the context trimmed to
  the longest prompt (causal attention makes that exact).

One model serves the three modes (its ``text_tower`` is swapped), stepped in alternation, round
by round, so the ratios see the same machine load. Times are medians; on CUDA the memory one step
allocates is recorded as well. On CPU the run needs about 9 GB of memory (the official-style step
keeps the 77-token context of 80 prompts through 12 layers for the backward pass) and a step
takes seconds to tens of seconds.

Run: ``OMP_NUM_THREADS=2 python benchmarks/bench_train_step.py [--quick] [--device cuda
--dtype bfloat16]``
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from _clip import CLIP_MODEL, OfficialStyleTextEncoder, write_random_clip_checkpoint  # noqa: E402
from _memory import cuda_peak_bytes  # noqa: E402
from _speed import bench_parser, interleaved_times  # noqa: E402

BATCH, IMG_SIZE, BACKBONE = 2, 448, "resnet101"
MODES = ("cached", "official-style", "trainable")


def _class_names() -> list[str]:
    from cprfl_zoo.class_lists import COCO_LT_CLASSES

    return list(COCO_LT_CLASSES)


def _build(checkpoint: Path) -> tuple[nn.Module, dict[str, nn.Module | None]]:
    """Build the model once, with the text source of every mode.

    The model comes from ``create_cprfl(..., trainable_text_encoder=True)`` (this package's
    trainable mode, the context trimmed); the official-style tower is the same CLIP weights
    loaded by open_clip with its full context. Swapping ``model.text_tower`` switches modes:
    ``None`` uses the cached ``class_embeddings`` buffer. One model serves all three so the
    machine holds one ResNet-101 and its optimizer state, not three.
    """
    import open_clip

    from cprfl_zoo import create_cprfl

    names = _class_names()
    torch.manual_seed(0)
    model = create_cprfl(
        BACKBONE,
        class_names=names,
        pretrained=False,
        text_encoder=CLIP_MODEL,
        text_pretrained=str(checkpoint),
        trainable_text_encoder=True,
    )
    clip_model = open_clip.create_model(CLIP_MODEL, pretrained=str(checkpoint), weights_only=True)
    tokenizer = open_clip.get_tokenizer(CLIP_MODEL)
    tokens = tokenizer([f"a photo of a {n.replace('_', ' ')}." for n in names])
    towers: dict[str, nn.Module | None] = {
        "cached": None,
        "official-style": OfficialStyleTextEncoder(clip_model, tokens),
        "trainable": model.text_tower,
    }
    return model, towers


def _trainer(
    model: nn.Module, towers: dict[str, nn.Module | None], device: torch.device, dtype: str
) -> Callable[[str], None]:
    from cprfl_zoo.losses import AsymmetricLoss

    amp_dtype = getattr(torch, dtype)
    model.to(device).train()
    params = {id(p): p for p in model.parameters()}
    for tower in towers.values():
        if tower is not None:
            tower.to(device).train()
            params.update({id(p): p for p in tower.parameters()})
    # Parameters without a gradient (the towers a mode does not use) are skipped by AdamW.
    optimizer = torch.optim.AdamW(list(params.values()), lr=1e-5, weight_decay=1e-4)
    loss_fn = AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05, reduction="mean")
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(BATCH, 3, IMG_SIZE, IMG_SIZE, generator=gen).to(device)
    targets = (torch.rand(BATCH, model.num_classes, generator=gen) < 0.05).float().to(device)

    def step(mode: str) -> None:
        # Assigning a module registers it; get_class_embeddings() then calls it every forward.
        model.text_tower = towers[mode]
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
            logits = model(images)
        loss = loss_fn(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def run(quick: bool = False, device: str = "cpu", dtype: str = "float32") -> list[dict]:
    """Time one training step in each mode, the modes alternating round by round.

    Args:
        quick: Fewer rounds (1 instead of 3 on CPU, after the warm-up step of each mode; 5
            instead of 20 on CUDA).
        device: ``"cpu"`` or ``"cuda"``.
        dtype: ``"float32"``, or ``"bfloat16"`` / ``"float16"`` for autocast.

    Returns:
        One row per mode: ``time_s`` (median), ``times_s``, ``ratio_vs_cached``, the text
        tower's context length and parameter count, and on CUDA ``peak_mib``, the memory one
        step allocates above the model and optimizer state.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        rounds, iters = (5, 3) if quick else (20, 5)
    else:
        rounds, iters = (1, 1) if quick else (3, 1)
    with tempfile.TemporaryDirectory(prefix="cprfl-bench-step-") as tmp:
        checkpoint = write_random_clip_checkpoint(Path(tmp) / "rn50-quickgelu.safetensors")
        model, towers = _build(checkpoint)
    step = _trainer(model, towers, dev, dtype)
    peaks = {}
    for mode in MODES:
        step(mode)  # warm-up; creates the optimizer state of this mode's parameters
    if dev.type == "cuda":
        peaks = {mode: cuda_peak_bytes(partial(step, mode), dev) / 2**20 for mode in MODES}
    samples = interleaved_times({mode: partial(step, mode) for mode in MODES}, rounds, iters, dev)
    base_time = statistics.median(samples["cached"])
    rows = []
    for mode in MODES:
        tower = towers[mode]
        row = {
            "bench": "train_step",
            "mode": mode,
            "backbone": BACKBONE,
            "img_size": IMG_SIZE,
            "batch": BATCH,
            "classes": model.num_classes,
            "device": str(dev),
            "dtype": dtype,
            "time_s": statistics.median(samples[mode]),
            "times_s": samples[mode],
            "ratio_vs_cached": statistics.median(samples[mode]) / base_time,
            "text_context": int(tower.tokens.shape[1]) if tower is not None else 0,
            "text_params": sum(p.numel() for p in tower.parameters()) if tower is not None else 0,
        }
        if mode in peaks:
            row["peak_mib"] = peaks[mode]
        rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    """Format rows as a table with ratios against the cached mode."""
    lines = [f"{'mode':<15} {'context':>7} {'step (s)':>9} {'× cached':>9} {'peak MiB':>9}"]
    for r in rows:
        peak = f"{r['peak_mib']:>9.0f}" if "peak_mib" in r else f"{'n/a':>9}"
        lines.append(
            f"{r['mode']:<15} {r['text_context'] or '-':>7} {r['time_s']:>9.3f} "
            f"{r['ratio_vs_cached']:>8.2f}x {peak}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = bench_parser(__doc__, "fewer rounds", dtype=True).parse_args(argv)
    print(
        f"{BACKBONE} @ {IMG_SIZE}px, batch {BATCH}, 80 classes, AdamW + ASL; {args.device}, "
        f"{args.dtype}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(format_rows(run(args.quick, args.device, args.dtype)))


if __name__ == "__main__":
    main()
