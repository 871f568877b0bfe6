"""``create_cprfl`` on a text-embedding cache miss vs a cache hit.

A miss loads the CLIP model (here OpenAI RN50's architecture, ``"RN50-quickgelu"``), keeps its text
tower and encodes the 80 COCO prompts before the model is built; a hit reads the (80, 1024)
embeddings from the on-disk cache and never builds CLIP. Both build the same ResNet-101 CPRFL
model with random weights, so the difference is the price of the embeddings alone.

No weights can be downloaded here, so the CLIP weights are random ones written once to a local
safetensors checkpoint of the real architecture and passed as ``text_pretrained=<file>``: the
library's local-checkpoint path, which costs what the ``"openai"`` tag costs once its file is in
the local cache, plus hashing the file (the cache key names local weights by their SHA-256; the
digest is memoised per process, so it is paid by the first call, the miss). The hash time of a new
process is reported on its own row.

Each miss uses a fresh cache folder; misses, hits and builds with the embeddings given (the
floor: the ResNet-101 alone) alternate, after one untimed warm-up pair.

Run: ``OMP_NUM_THREADS=2 python benchmarks/bench_create.py [--quick]``
"""

from __future__ import annotations

import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _clip import CLIP_MODEL, write_random_clip_checkpoint
from _speed import bench_parser

BACKBONE = "resnet101"


def _sha256_seconds(path: Path) -> float:
    start = time.perf_counter()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return time.perf_counter() - start


def _create(checkpoint: Path, cache_dir: Path | None) -> float:
    """Time one ``create_cprfl``; ``cache_dir=None`` passes the embeddings instead."""
    from cprfl_zoo import create_cprfl
    from cprfl_zoo.class_lists import COCO_LT_CLASSES

    if cache_dir is None:
        text_args = {"text_embeddings": torch.randn(len(COCO_LT_CLASSES), 1024)}
    else:
        text_args = {
            "text_encoder": CLIP_MODEL,
            "text_pretrained": str(checkpoint),
            "embed_cache_dir": str(cache_dir),
        }
    start = time.perf_counter()
    model = create_cprfl(BACKBONE, class_names=list(COCO_LT_CLASSES), pretrained=False, **text_args)
    elapsed = time.perf_counter() - start
    if model.class_embeddings.shape != (len(COCO_LT_CLASSES), 1024):
        raise RuntimeError(f"unexpected class embeddings {tuple(model.class_embeddings.shape)}")
    return elapsed


def run(quick: bool = False, device: str = "cpu") -> list[dict]:
    """Time ``create_cprfl`` with 80 COCO class names on cache misses and hits.

    The model is also built with ``text_embeddings=`` given (no text encoder involved), the
    floor both are compared with.

    Args:
        quick: Fewer repetitions (2 instead of 4 of each).
        device: Recorded only: ``create_cprfl`` encodes on CUDA whenever one is visible.

    Returns:
        Rows ``{"bench": "create", "case": ..., "time_s", "times_s"}`` for embeddings given, the
        miss, the hit and the hashing of the checkpoint; the hit row has
        ``ratio_miss_over_hit``.
    """
    reps = 2 if quick else 4
    encode_device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="cprfl-bench-create-") as tmp:
        root = Path(tmp)
        checkpoint = write_random_clip_checkpoint(root / "rn50-quickgelu-random.safetensors")
        size_mib = checkpoint.stat().st_size / 2**20
        hash_times = [_sha256_seconds(checkpoint) for _ in range(2)]
        _create(checkpoint, root / "warmup")  # imports, tokenizer, digest memo
        _create(checkpoint, root / "warmup")
        misses, hits, given = [], [], []
        for i in range(reps):
            cache = root / f"cache{i}"
            misses.append(_create(checkpoint, cache))
            hits.append(_create(checkpoint, cache))
            given.append(_create(checkpoint, None))
    base = {"bench": "create", "classes": 80, "backbone": BACKBONE, "text_encoder": CLIP_MODEL}
    base.update(device=device, encode_device=encode_device)
    miss, hit = statistics.median(misses), statistics.median(hits)
    return [
        {**base, "case": "embeddings given", "time_s": statistics.median(given), "times_s": given},
        {**base, "case": "cache miss", "time_s": miss, "times_s": misses},
        {
            **base,
            "case": "cache hit",
            "time_s": hit,
            "times_s": hits,
            "ratio_miss_over_hit": miss / hit,
        },
        {
            **base,
            "case": "checkpoint sha256",
            "time_s": min(hash_times),
            "times_s": hash_times,
            "file_mib": size_mib,
        },
    ]


def format_rows(rows: list[dict]) -> str:
    """Format rows as a table."""
    lines = [f"{'case':<20} {'median s':>9}  all (s)"]
    for r in rows:
        times = ", ".join(f"{t:.2f}" for t in r["times_s"])
        extra = f"  ({r['file_mib']:.0f} MiB file)" if "file_mib" in r else ""
        if "ratio_miss_over_hit" in r:
            extra = f"  (miss / hit: {r['ratio_miss_over_hit']:.1f}x)"
        lines.append(f"{r['case']:<20} {r['time_s']:>9.2f}  {times}{extra}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = bench_parser(__doc__, "fewer repetitions", device=None).parse_args(argv)
    print(
        f"create_cprfl({BACKBONE!r}, 80 COCO names, text_encoder={CLIP_MODEL!r}, random local "
        f"weights); torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(format_rows(run(args.quick)))


if __name__ == "__main__":
    main()
