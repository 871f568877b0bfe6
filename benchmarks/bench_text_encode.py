"""Text-tower encoding of class prompts: full 77-token context vs the trimmed context.

The tower is OpenAI CLIP RN50's text transformer (open_clip ``RN50-quickgelu``: width 512,
12 layers), built with random weights (timing does not depend on them, and nothing is
downloaded). "full" is open_clip's own path (``TextTransformer.forward`` on 77 tokens, what
``CLIP.encode_text`` and the official code compute); "trimmed" is :class:`cprfl_zoo.text.TextTower`
on the context trimmed to the longest prompt. Both give the same features (checked here).

"encode" is a forward pass without gradients (computing the embeddings once); "train step" is
forward + backward, what the trainable-text-encoder mode pays on every training step.
``--quick`` uses 2 of the 12 layers and one timed run.

Run: ``python benchmarks/bench_text_encode.py [--quick] [--device cuda]``
"""

from __future__ import annotations

import statistics
import time

import torch
from _speed import bench_parser

from cprfl_zoo.class_lists import COCO_LT_CLASSES
from cprfl_zoo.text.tower import TextTower, text_arch

MODEL = "RN50-quickgelu"


def _time(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(quick: bool = False, device: str = "cpu") -> list[dict]:
    """Time the encoding of the 80 COCO prompts, full and trimmed context.

    Args:
        quick: 2 text layers instead of 12, one timed run.
        device: ``"cpu"`` or ``"cuda"``.

    Returns:
        One row per (pass, context): ``time_s`` (median), ``context`` and ``speedup`` (full over
        trimmed, on the trimmed rows).
    """
    torch.manual_seed(0)
    arch = text_arch(MODEL)
    if quick:
        arch["text_cfg"]["layers"] = 2
    tower = TextTower(arch, model_name=MODEL).to(device)
    tower.set_class_names(list(COCO_LT_CLASSES))
    trimmed = tower.tokens
    full = torch.zeros(trimmed.shape[0], tower.context_length, dtype=torch.long, device=device)
    full[:, : trimmed.shape[1]] = trimmed
    with torch.no_grad():
        diff = (tower.text(full) - tower.encode(trimmed)).abs().max().item()
    assert diff < 1e-4, f"trimmed and full features differ by {diff}"

    def encode(tokens: torch.Tensor, trim: bool):
        def fn() -> None:
            with torch.no_grad():
                tower.encode(tokens) if trim else tower.text(tokens)

        return fn

    def step(tokens: torch.Tensor, trim: bool):
        def fn() -> None:
            out = tower.encode(tokens) if trim else tower.text(tokens)
            out.square().mean().backward()

        return fn

    repeats = 1 if quick else 2
    rows = []
    for name, make in (("encode", encode), ("train step", step)):
        t_full = _time(make(full, False), repeats, device)
        t_trim = _time(make(trimmed, True), repeats, device)
        rows.append({"pass": name, "context": full.shape[1], "time_s": t_full, "speedup": 1.0})
        rows.append(
            {
                "pass": name,
                "context": trimmed.shape[1],
                "time_s": t_trim,
                "speedup": t_full / t_trim,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    """Print the table."""
    args = bench_parser(__doc__).parse_args(argv)
    rows = run(args.quick, args.device)
    layers = 2 if args.quick else 12
    print(
        f"80 COCO prompts, {MODEL} text tower ({layers} layers), {args.device}, "
        f"threads={torch.get_num_threads()}"
    )
    print(f"{'pass':<11} {'context':>7} {'time (s)':>9} {'speedup':>8}")
    for r in rows:
        print(f"{r['pass']:<11} {r['context']:>7} {r['time_s']:>9.4f} {r['speedup']:>7.1f}x")


if __name__ == "__main__":
    main()
