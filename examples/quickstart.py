"""CPRFL in a few minutes on a laptop CPU, with or without network access.

    pip install "cprfl-zoo[examples]"
    python examples/quickstart.py

What it does:

1. composes a small long-tailed multi-label dataset from the handwritten digits that ship with
   scikit-learn: 64 x 64 images showing 1-3 digits, digit 0 in most training images, digit 9 in
   a handful, and a balanced test set drawn from different handwriting samples;
2. builds a CPRFL model on a small timm backbone (``test_resnet``) with CLIP text embeddings of
   the class names, and a plain baseline: the same backbone with timm's linear classifier;
3. trains both the same way (AdamW, OneCycle, the asymmetric loss in the CPRFL setting) and
   prints mAP overall and on the head / medium / tail classes;
4. saves the CPRFL model with ``save_pretrained``, reloads it with ``CPRFL.from_pretrained`` and
   checks that the reloaded model gives the same logits;
5. shows the top labels for a few test images (saved as PNG files for ``predict.py``).

With network access it uses OpenAI CLIP RN50 text embeddings and the backbone's ImageNet weights
(downloaded once, then cached). Without, it says so and falls back to seeded random class
embeddings and a randomly initialised backbone; the run still works and still learns.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import huggingface_hub.constants
import timm
import timm.data
import timm.optim
import torch
from torch import nn

import cprfl_zoo
from cprfl_zoo.losses import AsymmetricLoss
from cprfl_zoo.metrics import long_tail_map, long_tail_split
from cprfl_zoo.synthetic import make_digit_composites
from cprfl_zoo.text import encode_class_names

CLIP_MODEL, CLIP_PRETRAINED = "RN50-quickgelu", "openai"
RANDOM_EMBED_DIM = 1024  # the width of CLIP RN50's text embeddings


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train CPRFL and a linear-head baseline on a small long-tailed multi-label "
        "digits dataset, compare their mAP, save and reload the model.",
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
        help="timm backbone; its ImageNet weights are used when they can be downloaded "
        "(default: test_resnet, 1 M parameters, ImageNet weights test_resnet.r160_in1k)",
    )
    parser.add_argument("--epochs", type=positive_int, default=12, help="training epochs (12)")
    parser.add_argument("--train-images", type=positive_int, default=800, help="(800)")
    parser.add_argument("--test-images", type=positive_int, default=400, help="(400)")
    parser.add_argument("--img-size", type=positive_int, default=64, help="image side (64)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="(32)")
    parser.add_argument(
        "--lr", type=float, default=5e-4, help="peak learning rate of the heads (5e-4)"
    )
    parser.add_argument(
        "--backbone-lr",
        type=float,
        default=None,
        help="peak learning rate of the backbones (default: 4e-3 from random weights, the "
        "heads' rate from ImageNet weights)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--offline", action="store_true", help="do not try to download CLIP or ImageNet weights"
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="a seconds-long smoke run: tiny dataset, 32 px images, one epoch (numbers are "
        "meaningless)",
    )
    args = parser.parse_args(argv)
    for flag, value in (("--lr", args.lr), ("--backbone-lr", args.backbone_lr)):
        if value is not None and not value > 0:
            parser.error(f"argument {flag}: must be positive, got {value}")
    if args.output.exists() and not args.output.is_dir():
        parser.error(f"argument --output: {args.output} exists and is not a folder")
    if args.fast:
        args.epochs, args.train_images, args.test_images = 1, 96, 48
        args.img_size, args.batch_size, args.backbone = 32, 16, "test_resnet"
    if args.img_size % 2 or args.img_size < 16:
        parser.error(f"argument --img-size: must be an even number >= 16, got {args.img_size}")
    return args


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers within ``timeout`` seconds (DNS included)."""
    if huggingface_hub.constants.is_offline_mode():
        return False
    host = urllib.parse.urlparse(huggingface_hub.constants.ENDPOINT).hostname or "huggingface.co"
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def short_reason(error: Exception) -> str:
    if huggingface_hub.constants.is_offline_mode():
        return "offline, and not in the local cache"
    return f"{type(error).__name__}: {str(error)[:120]}"


def go_offline() -> None:
    # Without this, every download attempt would spend about a minute retrying.
    os.environ["HF_HUB_OFFLINE"] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True


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
    cfg = {"model_name": f"custom:random-normal(seed={seed})", "embed_dim": RANDOM_EMBED_DIM}
    return (
        emb,
        cfg,
        (
            f"FALLBACK random class embeddings (seeded, {RANDOM_EMBED_DIM}-d): CLIP weights "
            f"unavailable ({reason})"
        ),
    )


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


def build_models(
    args: argparse.Namespace,
    names: list[str],
    emb: torch.Tensor,
    text_cfg: dict,
    weights: dict[str, torch.Tensor] | None,
) -> tuple[cprfl_zoo.CPRFL, nn.Module]:
    torch.manual_seed(args.seed)
    cprfl = cprfl_zoo.create_cprfl(
        args.backbone,
        class_names=names,
        text_embeddings=emb,
        pretrained_backbone=False,
        text_encoder_cfg=text_cfg,
        dim=128,
        num_heads=4,
        head_dim=32,
        mlp_hidden_dim=256,
    )
    # The saved config records how the model was trained: whole images at this size, so that
    # predict.py (timm's eval transform) resizes without cropping.
    cprfl.pretrained_cfg.update(input_size=(3, args.img_size, args.img_size), crop_pct=1.0)
    baseline = timm.create_model(args.backbone, num_classes=len(names))
    if weights is not None:
        cprfl.backbone.load_state_dict(weights)
        missing, unexpected = baseline.load_state_dict(weights, strict=False)
        assert not unexpected and all(
            k.startswith(baseline.default_cfg["classifier"]) for k in missing
        )
    return cprfl, baseline


def normalizer(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = timm.data.resolve_model_data_config(model)
    return torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)


def is_head(model: nn.Module, name: str) -> bool:
    """Whether a parameter comes after the backbone: CPRFL's projection, PI and VSI, or the
    baseline's linear classifier."""
    if isinstance(model, cprfl_zoo.CPRFL):
        return not name.startswith("backbone.")
    return name.startswith(model.pretrained_cfg["classifier"] + ".")


def train(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, args: argparse.Namespace
) -> float:
    """Train with AdamW + OneCycle + ASL (gamma_neg 4, gamma_pos 0, clip 0.05); return seconds."""
    assert args.backbone_lr is not None
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
        order = torch.randperm(len(images))
        total = 0.0
        for i in range(steps):
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
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
    return torch.cat(
        [
            model((images[i : i + batch_size] - mean) / std)
            for i in range(0, len(images), batch_size)
        ]
    )


def save_samples(images: torch.Tensor, folder: Path) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        path = folder / f"test_{i}.png"
        pixels = (img * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    online = not args.offline and hub_reachable()
    if not online:
        go_offline()
    print(f"cprfl_zoo {cprfl_zoo.__version__}, torch {torch.__version__}, timm {timm.__version__}")
    print(f"network: {'Hugging Face Hub reachable' if online else 'offline'}")

    # 1. data
    train_set = make_digit_composites(
        args.train_images,
        img_size=args.img_size,
        max_digits=3,
        imbalance=100,
        pool="train",
        seed=args.seed,
    )
    test_set = make_digit_composites(
        args.test_images, img_size=args.img_size, max_digits=3, pool="test", seed=args.seed + 1
    )
    names = list(train_set.class_names)
    counts = train_set.class_counts()
    # The papers' head/tail limits (100 / 20 training images) suit COCO-LT's 1,909 images; these
    # are scaled to this set's size.
    head_min = max(2, round(0.1875 * args.train_images))
    tail_below = max(1, round(0.0375 * args.train_images))
    split = long_tail_split(counts, head_min, tail_below)
    print(
        f"\ndata: {len(train_set)} training images (long-tailed), {len(test_set)} test images "
        f"(balanced), {args.img_size}x{args.img_size} px, 1-3 digits each"
    )
    print(
        "  training images per class: "
        + ", ".join(f"{n} {c}" for n, c in zip(names, counts.tolist(), strict=True))
    )
    print(
        f"  head >= {head_min} images: {', '.join(names[i] for i in split.head) or '-'} | "
        f"medium: {', '.join(names[i] for i in split.medium) or '-'} | "
        f"tail < {tail_below}: {', '.join(names[i] for i in split.tail) or '-'}"
    )
    print("  (thresholds scaled from the papers' 100 / 20 for COCO-LT's 1,909 training images)")

    # 2. models
    # Offline, both still come from the local caches when an earlier run downloaded them.
    emb, text_cfg, text_note = class_embeddings(names, args.seed)
    weights, backbone_note = backbone_weights(args.backbone)
    if args.backbone_lr is None:  # from random weights the backbone has to learn fast
        args.backbone_lr = args.lr if weights is not None else 4e-3
    print(f"\nclass embeddings: {text_note}")
    print(f"backbone: {backbone_note}")
    cprfl, baseline = build_models(args, names, emb, text_cfg, weights)
    n_cprfl = sum(p.numel() for p in cprfl.parameters()) / 1e6
    n_base = sum(p.numel() for p in baseline.parameters()) / 1e6
    print(f"models: CPRFL {n_cprfl:.2f} M parameters, linear-head baseline {n_base:.2f} M")

    # 3. train and evaluate
    print(
        f"recipe (both models): AdamW, OneCycle, asymmetric loss; peak learning rate "
        f"{args.backbone_lr:g} (backbone) / {args.lr:g} (head); {args.epochs} epochs of "
        f"{args.batch_size} images"
    )
    results = {}
    for label, model in (("linear head", baseline), ("CPRFL", cprfl)):
        print(f"\ntraining {label} ({args.epochs} epochs)", flush=True)
        seconds = train(model, train_set.images, train_set.targets, args)
        scores = predict(model, test_set.images)
        results[label] = (long_tail_map(scores, test_set.targets, split), seconds)

    print(f"\nmAP on the balanced test set (%), {args.backbone} backbone, same training recipe:")
    print(f"  {'model':<12} {'mAP':>6} {'head':>6} {'medium':>6} {'tail':>6}   train time")
    for label, (res, seconds) in results.items():
        row = res.as_dict(100)
        print(
            f"  {label:<12} {row['mAP']:6.1f} {row['mAP_head']:6.1f} {row['mAP_medium']:6.1f} "
            f"{row['mAP_tail']:6.1f}   {seconds:5.0f} s"
        )

    if "FALLBACK" in text_note:
        print(
            "  (with random class embeddings the prompts carry no meaning of the class names, "
            "which is\n   where CPRFL's gain on rare classes comes from in the paper; here the "
            "two heads compete\n   as plain trainable classifiers)"
        )

    # 4. save, reload, check
    folder = args.output / "cprfl-digits"
    res = results["CPRFL"][0].as_dict(100)
    cprfl.save_pretrained(
        folder,
        metrics={
            label: res[key]
            for key, label in (
                ("mAP", "mAP"),
                ("mAP_head", "head mAP"),
                ("mAP_medium", "medium mAP"),
                ("mAP_tail", "tail mAP"),
            )
            if math.isfinite(res[key])  # a group without classes has no mAP
        },
        model_card={"dataset": "synthetic long-tailed digits (cprfl_zoo quickstart)"},
    )
    reloaded = cprfl_zoo.CPRFL.from_pretrained(folder)
    batch = test_set.images[:8]
    same = torch.equal(predict(cprfl, batch), predict(reloaded, batch))
    print(f"\nsaved to {folder}/ ({', '.join(sorted(p.name for p in folder.iterdir()))})")
    print(f"reloaded with CPRFL.from_pretrained: logits {'identical' if same else 'DIFFER'}")
    if not same:
        print("error: the reloaded model does not reproduce the saved model's logits")
        return 1

    # 5. predictions
    probs = predict(reloaded, test_set.images[:4]).sigmoid()
    paths = save_samples(test_set.images[:4], args.output / "samples")
    print("\ntop labels of a few test images (probability):")
    for path, p, target in zip(paths, probs, test_set.targets[:4], strict=True):
        truth = ", ".join(names[i] for i in target.nonzero().flatten().tolist())
        top = p.topk(3)
        pairs = zip(top.values.tolist(), top.indices.tolist(), strict=True)
        shown = "  ".join(f"{names[i]} {v:.2f}" for v, i in pairs)
        print(f"  {path}: shows {truth:<20} predicted {shown}")
    print(f"\ntry: python examples/predict.py {folder} {paths[0]} --top-k 3")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
