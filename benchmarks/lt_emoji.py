"""Long-tailed multi-label benchmark on emoji drawings of named things (issue 10).

Does exact CPRFL beat a linear head on the tail when class names carry meaning and the
backbone is fine-tuned? 72 emoji classes, 8 in each of 9 subcategories (mammals, birds, marine
animals, fruits, vegetables, prepared food, ground transport, air transport, balls), drawn in
two styles (Noto Color Emoji, Twemoji) from the npm packages ``emoji-datasource-google`` and
``emoji-datasource-twitter`` (see ``benchmarks/_emoji.py``; fetched once with ``npm pack``).

Protocol (CPU defaults; ``--device cuda`` runs 224 px canvases and the paper's head sizes):

* canvases of 96 px, 1 to 4 emoji each at random scale (60-100 % of a 2x2 grid cell), position
  and rotation (±30°), on flat or gradient backgrounds with noise, each emoji in one of the two
  styles at random (``_lt_compose.compose_rgba_set``);
* a seeded class-to-frequency order (``_emoji.frequency_order``) that gives every subcategory one
  class in each block of 9 ranks; the last block (one class per subcategory) is held out of
  training entirely (*unseen*); the 63 seen classes get exactly ``400 * 100 ** (-r / 62)``
  training positives at rank r (imbalance 100; COCO-LT's thresholds head >= 100, medium 20-99,
  tail < 20 give 19 / 22 / 22 classes, with head, medium and tail members in every subcategory);
* a balanced validation set (20 canvases per class, all 72 classes) used for every choice
  (learning rate), and a balanced test set (30 per class) used for nothing but the report; the
  training, validation and test sets come from disjoint random streams;
* two regimes with the same budget for every method within each: ``frozen`` (ImageNet
  EfficientNet-Lite0 tokens computed once; 20 epochs) and ``finetune`` (end-to-end, backbone at
  a tenth of the head's learning rate, random flips and colour jitter; 5 epochs);
* methods ``linear-BCE``, ``linear-ASL`` (global pool + Linear), ``CPRFL-ASL`` (MiniLM
  embeddings of the names), ``CPRFL-ASL-random`` (random unit embeddings), and the opt-in
  variant ``CPRFL-ASL-cosine`` (``create_cprfl(..., cosine_classifier=True)``);
* each method's peak learning rate is chosen on the validation set (seed 0) from the regime's
  grid and reused for seeds 1 and 2; mean ± std over the 3 seeds of the frequency order;
* unseen classes: after training, CPRFL's ``set_classes`` with all 72 names scores the 9 held-out
  classes; their AP is compared with chance (the class's positive rate in the test set);
* diagnostics per run: logit scale on positives / negatives, the share of ASL's gradient that
  pushes each group's logits down, and for CPRFL the prompt drift and the correlation of the
  prompts' cosine similarities with the text embeddings'.

Every finished (regime, method, seed, lr) run is appended to the JSON results file at once, and
a rerun skips the runs already there, so an interrupted run resumes.

Run: ``python benchmarks/lt_emoji.py`` (both regimes), ``--regime frozen``, ``--report FILES``
to print the tables (and draw the AP-vs-count plot with ``--plot``) from saved results.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cprfl_zoo.fileio import atomic_write_text

try:
    import _assets
    import _emoji
    from _heads import CPRFLOnTokens, OnImages, PooledLinear, make_loss
    from _lt_compose import ComposedSet, compose_rgba_set, long_tailed_counts
except ModuleNotFoundError:  # imported as benchmarks.lt_emoji
    from benchmarks import _assets, _emoji
    from benchmarks._heads import CPRFLOnTokens, OnImages, PooledLinear, make_loss
    from benchmarks._lt_compose import ComposedSet, compose_rgba_set, long_tailed_counts

RESULTS = Path(__file__).resolve().parent / "results" / "lt_emoji.json"
BACKBONE = "tf_efficientnet_lite0"
TEMPLATE = "a photo of a {}."
METHODS = ("linear-BCE", "linear-ASL", "CPRFL-ASL", "CPRFL-ASL-random")
OPTIONS = ("CPRFL-ASL-cosine",)
REGIMES = ("frozen", "finetune")


@dataclass(frozen=True)
class EmojiConfig:
    """Everything that defines one run of the benchmark."""

    seeds: tuple[int, ...] = (0, 1, 2)
    max_count: int = 400
    imbalance: float = 100.0
    head_threshold: int = 100
    tail_threshold: int = 20
    val_per_class: int = 20
    test_per_class: int = 30
    canvas_size: int = 96
    batch_size: int = 32
    frozen_epochs: int = 20
    finetune_epochs: int = 5
    frozen_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    finetune_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    backbone_lr_ratio: float = 0.1
    weight_decay: float = 1e-4
    test_seed: int = 1234
    device: str = "cpu"
    threads: int = 1
    head: dict[str, int] = field(
        default_factory=lambda: {"dim": 256, "num_heads": 4, "head_dim": 64, "mlp_hidden_dim": 512}
    )


CUDA = {
    "canvas_size": 224,
    "batch_size": 64,
    "finetune_epochs": 12,
    "head": {"dim": 2048, "num_heads": 8, "head_dim": 512, "mlp_hidden_dim": 2048},
}
QUICK = {"seeds": (0,), "frozen_epochs": 4, "finetune_epochs": 1, "frozen_lrs": (1e-3,)}


def _log(message: str) -> None:
    print(f"[lt_emoji] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- data
@dataclass(frozen=True)
class EmojiSplits:
    """The composed sets of one seed, and the split of the seen classes."""

    train: ComposedSet
    val: ComposedSet
    test: ComposedSet
    seen: np.ndarray  # class indices trained on
    unseen: np.ndarray  # class indices held out of training
    counts: np.ndarray  # (C,) training positives per class, 0 for unseen
    order: np.ndarray


def training_counts(
    subcategories: Sequence[str], seed: int, max_count: int, imbalance: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class training counts: the last frequency block unseen, the rest long-tailed.

    Args:
        subcategories: (C,) subcategory of each class.
        seed: Seed of the frequency order.
        max_count: Count of the most frequent class.
        imbalance: Ratio between the most and least frequent seen class.

    Returns:
        counts (C,) int64 (0 for unseen classes), seen class indices, unseen class indices.
    """
    order = _emoji.frequency_order(tuple(subcategories), seed)
    block = len(set(subcategories))
    seen_order, unseen = order[:-block], np.sort(order[-block:])
    counts_seen = long_tailed_counts(
        len(seen_order), max_count, imbalance, np.arange(len(seen_order))
    )
    counts = np.zeros(len(order), dtype=np.int64)
    counts[seen_order] = counts_seen
    return counts, np.sort(seen_order), unseen


def compose_splits(
    images: np.ndarray,
    pools: Sequence[np.ndarray],
    subcategories: Sequence[str],
    seed: int,
    cfg: EmojiConfig,
) -> EmojiSplits:
    """Compose the long-tailed training set of ``seed`` and the fixed balanced val / test sets.

    The three sets use disjoint random streams: ``[seed, 1]`` for training, ``[test_seed, 2]``
    for validation and ``[test_seed, 3]`` for test (``test_seed`` is far from the seeds).

    Args:
        images: (M, h, w, 4) RGBA drawings.
        pools: Per class, its drawings' indices.
        subcategories: Per class, its subcategory.
        seed: The seed of the frequency order and of the training composition.
        cfg: The configuration.

    Returns:
        The splits.
    """
    counts, seen, unseen = training_counts(subcategories, seed, cfg.max_count, cfg.imbalance)
    num_classes = len(pools)

    def compose(per_class: Sequence[int], stream: list[int]) -> ComposedSet:
        return compose_rgba_set(
            images,
            pools,
            per_class,
            rng=np.random.default_rng(stream),
            canvas_size=cfg.canvas_size,
        )

    return EmojiSplits(
        train=compose(counts, [seed, 1]),
        val=compose([cfg.val_per_class] * num_classes, [cfg.test_seed, 2]),
        test=compose([cfg.test_per_class] * num_classes, [cfg.test_seed, 3]),
        seen=seen,
        unseen=unseen,
        counts=counts,
        order=_emoji.frequency_order(tuple(subcategories), seed),
    )


def to_input(canvases: np.ndarray, mean: float = 0.5, std: float = 0.5) -> torch.Tensor:
    """uint8 (B, S, S, 3) canvases -> normalised (B, 3, S, S) float channels-last tensor."""
    x = torch.from_numpy(canvases).float().div_(255).sub_(mean).div_(std)
    return x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


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
def extract_tokens(backbone: nn.Module, canvases: np.ndarray, device: str, batch: int = 64):
    """Local backbone tokens (N, v, d0) of all canvases (the frozen regime's features)."""
    from cprfl_zoo.backbone import backbone_tokens

    backbone.eval()
    out = []
    for i in range(0, len(canvases), batch):
        x = to_input(canvases[i : i + batch]).to(device)
        out.append(backbone_tokens(backbone, backbone.forward_features(x)).float().cpu())
    return torch.cat(out).contiguous()


# ---------------------------------------------------------------------- methods
def cprfl_model(module: nn.Module) -> nn.Module | None:
    """The CPRFL model inside a method's module, or None for a linear head."""
    from cprfl_zoo.model import CPRFL

    if isinstance(module, CPRFL):
        return module
    if isinstance(module, CPRFLOnTokens):
        return module.model
    return None


def build_method(
    method: str,
    regime: str,
    backbone: nn.Module,
    embeddings: torch.Tensor,
    seen_names: list[str],
    cfg: EmojiConfig,
) -> nn.Module:
    """The trainable module of one method in one regime (on ``cfg.device``)."""
    from cprfl_zoo import create_cprfl

    if method.startswith("linear"):
        head = PooledLinear(backbone.num_features, len(seen_names))
        module = OnImages(copy.deepcopy(backbone), head) if regime == "finetune" else head
        return module.to(cfg.device)
    kwargs: dict[str, Any] = dict(cfg.head)
    if method.endswith("-cosine"):
        kwargs["cosine_classifier"] = True
    model = create_cprfl(
        BACKBONE,
        class_names=seen_names,
        text_embeddings=embeddings,
        pretrained_backbone=False,
        **kwargs,
    )
    model.backbone.load_state_dict(backbone.state_dict(), strict=True)
    if regime == "finetune":
        return model.to(cfg.device)
    model.backbone.requires_grad_(False)
    return CPRFLOnTokens(model).to(cfg.device)


def train(
    module: nn.Module,
    get_batch: Callable[[torch.Tensor, bool], torch.Tensor],
    targets: torch.Tensor,
    loss_fn: nn.Module,
    *,
    lr: float,
    epochs: int,
    cfg: EmojiConfig,
    seed: int,
) -> None:
    """AdamW + one-cycle schedule, the same for every method; backbone at a lower lr.

    No weight decay on biases and norm weights (1-d parameters).
    """
    n = len(targets)
    steps = epochs * math.ceil(n / cfg.batch_size)
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
                scale = cfg.backbone_lr_ratio if is_backbone else 1.0
                wd = cfg.weight_decay if decay else 0.0
                groups.append({"params": params, "lr": lr * scale, "weight_decay": wd})
    optimizer = torch.optim.AdamW(groups, lr=lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in groups], total_steps=steps, pct_start=0.2
    )
    gen = torch.Generator().manual_seed(seed)
    module.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            x = get_batch(idx, True)
            loss = loss_fn(module(x), targets[idx].to(cfg.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()


@torch.no_grad()
def predict(
    module: nn.Module, get_batch: Callable[[torch.Tensor, bool], torch.Tensor], n: int
) -> torch.Tensor:
    """Logits of ``n`` samples, in order, on the CPU."""
    module.eval()
    out = [
        module(get_batch(torch.arange(i, min(i + 128, n)), False)).float().cpu()
        for i in range(0, n, 128)
    ]
    return torch.cat(out)


# ---------------------------------------------------------------------- diagnostics
def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12))


def _offdiag_cos(x: torch.Tensor) -> torch.Tensor:
    x = F.normalize(x.double(), dim=-1)
    sim = x @ x.T
    i, j = torch.triu_indices(len(x), len(x), 1)
    return sim[i, j]


def logit_diagnostics(
    logits: torch.Tensor, targets: torch.Tensor, groups: dict[str, list[int]]
) -> dict[str, Any]:
    """Logit scale on positives / negatives, and ASL's push on each group's logits.

    ``push_down_share`` is the share of the total gradient magnitude of the ASL loss (summed over
    samples) on a group's logits that comes from its negatives: 1 means the loss only pushes that
    group's logits down.
    """
    from cprfl_zoo import AsymmetricLoss

    z = logits.double().clone().requires_grad_(True)
    loss = AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05, reduction="sum")(z, targets.double())
    (grad,) = torch.autograd.grad(loss, z)
    out: dict[str, Any] = {}
    for name, idx in groups.items():
        if not idx:
            continue
        t, lg, g = targets[:, idx].bool(), logits[:, idx].double(), grad[:, idx].abs()
        out[name] = {
            "pos_logit": round(float(lg[t].mean()), 3) if t.any() else math.nan,
            "neg_logit": round(float(lg[~t].mean()), 3),
            "logit_std": round(float(lg.std()), 3),
            "push_down_share": round(float(g[~t].sum() / g.sum().clamp_min(1e-12)), 4),
        }
    return out


def prompt_diagnostics(
    model: nn.Module, prompts_init: torch.Tensor, groups: dict[str, list[int]]
) -> dict[str, Any]:
    """How far each group's prompts moved, and whether their similarities follow the text's."""
    with torch.no_grad():
        prompts = model.get_prompts().float().cpu()
    text = model.class_embeddings.float().cpu()
    drift = (prompts - prompts_init).norm(dim=-1) / prompts_init.norm(dim=-1).clamp_min(1e-12)
    tcos = _offdiag_cos(text)
    return {
        "prompt_norm": {
            k: round(float(prompts[v].norm(dim=-1).mean()), 3) for k, v in groups.items()
        },
        "prompt_drift": {k: round(float(drift[v].mean()), 4) for k, v in groups.items()},
        "text_prompt_cos_corr_init": round(_pearson(tcos, _offdiag_cos(prompts_init)), 4),
        "text_prompt_cos_corr": round(_pearson(tcos, _offdiag_cos(prompts)), 4),
    }


# ---------------------------------------------------------------------- the benchmark
def load_results(path: Path) -> dict[str, Any]:
    """The results document at ``path`` ({"runs": []} if there is none)."""
    if path.is_file():
        return json.loads(path.read_text())
    return {"benchmark": "lt_emoji", "runs": []}


def _run_key(run: dict[str, Any]) -> tuple:
    return (run["regime"], run["method"], run["seed"], run["lr"])


def run_benchmark(
    cfg: EmojiConfig,
    regimes: Sequence[str],
    methods: Sequence[str],
    output: Path,
    data_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the requested regimes and methods, appending every finished run to ``output``."""
    from cprfl_zoo.backbone import create_backbone
    from cprfl_zoo.metrics import average_precision, long_tail_map, long_tail_split

    torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    classes = _emoji.load_emoji_classes(data_dir)
    names = list(classes.names)
    _log(f"{len(names)} classes from {len(set(classes.subcategories))} subcategories")

    classifier = _assets.efficientnet_lite0_imagenet()
    check = _assets.imagenet_check(classifier)
    state = {k: v for k, v in classifier.state_dict().items() if not k.startswith("classifier.")}
    backbone = create_backbone(BACKBONE)
    backbone.load_state_dict(state, strict=True)
    backbone = backbone.to(cfg.device, memory_format=torch.channels_last).eval()
    text = _assets.MiniLMTextEncoder(TEMPLATE)(names)

    doc = load_results(output)
    doc.update(
        {
            "config": asdict(cfg),
            "class_names": names,
            "subcategories": list(classes.subcategories),
            "template": TEMPLATE,
            "backbone": BACKBONE,
            "imagenet_check": check,
            "licences": _emoji.LICENCES,
        }
    )
    done = {_run_key(r) for r in doc["runs"]}

    def save(run: dict[str, Any]) -> None:
        doc["runs"].append(run)
        atomic_write_text(output, json.dumps(doc, indent=1))

    for seed in cfg.seeds:
        t = time.perf_counter()
        splits = compose_splits(classes.images, classes.pools, classes.subcategories, seed, cfg)
        seen, unseen = splits.seen.tolist(), splits.unseen.tolist()
        split = long_tail_split(
            splits.counts[seen].tolist(), cfg.head_threshold, cfg.tail_threshold
        )
        groups = {k: list(v) for k, v in split.groups().items()}
        train_y = torch.from_numpy(splits.train.targets[:, seen]).float()
        val_y = torch.from_numpy(splits.val.targets[:, seen]).float()
        test_all = torch.from_numpy(splits.test.targets).float()
        _log(
            f"seed {seed}: {len(train_y)} training canvases, groups "
            f"{ {k: len(v) for k, v in groups.items()} }, unseen {[names[i] for i in unseen]} "
            f"({time.perf_counter() - t:.0f} s)"
        )
        doc.setdefault("splits", {})[str(seed)] = {
            "counts": splits.counts.tolist(),
            "order": splits.order.tolist(),
            "seen": seen,
            "unseen": unseen,
            "num_train": len(train_y),
            "num_val": len(val_y),
            "num_test": len(test_all),
        }
        g = torch.Generator().manual_seed(10_000 + seed)
        random_emb = F.normalize(torch.randn(len(names), text.shape[1], generator=g), dim=-1)
        sets = {"train": splits.train.images, "val": splits.val.images, "test": splits.test.images}

        tokens: dict[str, torch.Tensor] = {}
        for regime in regimes:
            if regime == "frozen":
                t = time.perf_counter()
                tokens = {k: extract_tokens(backbone, v, cfg.device) for k, v in sets.items()}
                _log(
                    f"seed {seed}: tokens {tuple(tokens['train'].shape)} in "
                    f"{time.perf_counter() - t:.0f} s"
                )
            epochs = cfg.frozen_epochs if regime == "frozen" else cfg.finetune_epochs
            lrs = cfg.frozen_lrs if regime == "frozen" else cfg.finetune_lrs
            for method in methods:
                chosen = _chosen_lr(doc, regime, method)
                grid = lrs if chosen is None else (chosen,)
                if chosen is None and seed != cfg.seeds[0]:
                    raise RuntimeError(f"no learning rate chosen for {regime} {method}")
                for lr in grid:
                    key = (regime, method, seed, lr)
                    if key in done:
                        continue
                    aug_gen = torch.Generator().manual_seed(20_000 + seed)

                    def batch_of(
                        name: str,
                        idx: torch.Tensor,
                        training: bool,
                        regime: str = regime,
                        tokens: dict[str, torch.Tensor] = tokens,
                        aug_gen: torch.Generator = aug_gen,
                        sets: dict[str, np.ndarray] = sets,
                    ) -> torch.Tensor:
                        if regime == "frozen":
                            return tokens[name][idx].to(cfg.device)
                        x = to_input(sets[name][idx.numpy()])
                        if training:
                            x = augment(x, aug_gen)
                        return x.to(cfg.device)

                    emb = random_emb if method.endswith("-random") else text
                    torch.manual_seed(seed)
                    module = build_method(
                        method, regime, backbone, emb[seen], [names[i] for i in seen], cfg
                    )
                    model = cprfl_model(module)
                    prompts_init = None
                    if model is not None:
                        with torch.no_grad():
                            prompts_init = model.get_prompts().float().cpu()
                    t = time.perf_counter()
                    train(
                        module,
                        lambda i, tr: batch_of("train", i, tr),
                        train_y,
                        make_loss(method),
                        lr=lr,
                        epochs=epochs,
                        cfg=cfg,
                        seed=seed,
                    )
                    train_s = time.perf_counter() - t
                    val_scores = predict(module, lambda i, tr: batch_of("val", i, tr), len(val_y))
                    test_scores = predict(
                        module, lambda i, tr: batch_of("test", i, tr), len(test_all)
                    )
                    test_y = test_all[:, seen]
                    result = long_tail_map(test_scores, test_y, split)
                    run: dict[str, Any] = {
                        "regime": regime,
                        "method": method,
                        "seed": seed,
                        "lr": lr,
                        "epochs": epochs,
                        "train_s": round(train_s, 1),
                        "val_mAP": round(
                            100 * float(average_precision(val_scores, val_y).nanmean()), 3
                        ),
                        "test": {k: round(v, 3) for k, v in result.as_dict(100).items()},
                        "test_ap": [round(100 * float(a), 2) for a in result.ap],
                        "diag_test": logit_diagnostics(test_scores, test_y, groups),
                    }
                    train_scores = predict(
                        module, lambda i, tr: batch_of("train", i, False), min(len(train_y), 512)
                    )
                    run["diag_train"] = logit_diagnostics(
                        train_scores, train_y[: len(train_scores)], groups
                    )
                    if model is not None:
                        run["prompts"] = prompt_diagnostics(model, prompts_init, groups)
                        model.set_classes(names, emb)
                        all_scores = predict(
                            module, lambda i, tr: batch_of("test", i, tr), len(test_all)
                        )
                        ap = average_precision(all_scores[:, unseen], test_all[:, unseen])
                        chance = test_all[:, unseen].mean(0)
                        run["unseen_ap"] = [round(100 * float(a), 2) for a in ap]
                        run["unseen_chance"] = [round(100 * float(c), 2) for c in chance]
                    save(run)
                    done.add(key)
                    _log(
                        f"{regime} seed {seed} {method} lr {lr:g}: val mAP {run['val_mAP']:.2f}, "
                        f"test {run['test']} ({train_s:.0f} s)"
                    )
                    del module
    doc["runtime_s"] = round(time.perf_counter() - start, 1)
    atomic_write_text(output, json.dumps(doc, indent=1))
    return doc


def _chosen_lr(doc: dict[str, Any], regime: str, method: str) -> float | None:
    """The learning rate of the best validation mAP among the grid runs of the first seed."""
    cfg = doc["config"]
    grid = cfg["frozen_lrs"] if regime == "frozen" else cfg["finetune_lrs"]
    first = cfg["seeds"][0]
    runs = [
        r
        for r in doc["runs"]
        if r["regime"] == regime and r["method"] == method and r["seed"] == first
    ]
    if {r["lr"] for r in runs} < set(grid):
        return None
    return max(runs, key=lambda r: r["val_mAP"])["lr"]


# ---------------------------------------------------------------------- report
def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def selected_runs(doc: dict[str, Any], regime: str, method: str) -> list[dict[str, Any]]:
    """The runs at the learning rate chosen on validation, one per seed."""
    lr = _chosen_lr(doc, regime, method)
    if lr is None:
        return []
    return sorted(
        (r for r in doc["runs"] if (r["regime"], r["method"], r["lr"]) == (regime, method, lr)),
        key=lambda r: r["seed"],
    )


def format_tables(doc: dict[str, Any]) -> str:
    """Markdown tables: per regime mean ± std, paired tail differences, unseen AP, diagnostics."""
    cfg = doc["config"]
    lines: list[str] = []
    methods = [m for m in (*METHODS, *OPTIONS) if any(r["method"] == m for r in doc["runs"])]
    for regime in REGIMES:
        rows = {m: selected_runs(doc, regime, m) for m in methods}
        rows = {m: r for m, r in rows.items() if r}
        if not rows:
            continue
        epochs = cfg["frozen_epochs"] if regime == "frozen" else cfg["finetune_epochs"]
        lines += [
            f"### {regime}: {BACKBONE} ImageNet, {cfg['canvas_size']} px, {epochs} epochs, "
            f"batch {cfg['batch_size']}",
            "",
            "| method | lr (val) | seeds | val mAP | mAP | head | medium | tail |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for m, runs in rows.items():
            cells = []
            for key in ("mAP", "mAP_head", "mAP_medium", "mAP_tail"):
                mean, std = _mean_std([r["test"][key] for r in runs])
                cells.append(f"{mean:.2f} ± {std:.2f}")
            val = statistics.fmean(r["val_mAP"] for r in runs)
            lines.append(
                f"| {m} | {runs[0]['lr']:g} | {len(runs)} | {val:.2f} | " + " | ".join(cells) + " |"
            )
        linear = [m for m in rows if m.startswith("linear")]
        if linear:
            best = max(linear, key=lambda m: statistics.fmean(r["val_mAP"] for r in rows[m]))
            lines += [
                "",
                f"Paired tail AP difference against the best linear head on validation "
                f"({best}), per seed:",
                "",
            ]
            lines += [
                "| method | " + " | ".join(f"seed {r['seed']}" for r in rows[best]) + " | mean |",
                "|---" * (len(rows[best]) + 2) + "|",
            ]
            base = {r["seed"]: r["test"]["mAP_tail"] for r in rows[best]}
            for m, runs in rows.items():
                if not m.startswith("CPRFL"):
                    continue
                diffs = {
                    r["seed"]: r["test"]["mAP_tail"] - base[r["seed"]]
                    for r in runs
                    if r["seed"] in base
                }
                cells = [f"{diffs[s]:+.2f}" if s in diffs else "–" for s in base]
                mean = statistics.fmean(diffs.values()) if diffs else math.nan
                lines.append(f"| {m} | " + " | ".join(cells) + f" | {mean:+.2f} |")
        unseen = {m: runs for m, runs in rows.items() if "unseen_ap" in runs[0]}
        if unseen:
            lines += [
                "",
                "Unseen classes (held out of training, scored after `set_classes`):",
                "",
                "| method | unseen AP | chance |",
                "|---|---|---|",
            ]
            for m, runs in unseen.items():
                ap, _ = _mean_std([statistics.fmean(r["unseen_ap"]) for r in runs])
                ch = statistics.fmean(statistics.fmean(r["unseen_chance"]) for r in runs)
                sd = _mean_std([statistics.fmean(r["unseen_ap"]) for r in runs])[1]
                lines.append(f"| {m} | {ap:.2f} ± {sd:.2f} | {ch:.2f} |")
        lines += [
            "",
            "Diagnostics (mean over seeds): mean test logit on positives / negatives; share of "
            "ASL's gradient on the training set that pushes a group's logits down; correlation "
            "of the prompts' pairwise cosine similarities with the text embeddings'; relative "
            "change of the tail prompts in training:",
            "",
            "| method | head pos / neg | tail pos / neg | push-down head | push-down tail |"
            " text-prompt sim. corr. | tail prompt drift |",
            "|---|---|---|---|---|---|---|",
        ]
        for m, runs in rows.items():

            def avg(path: Callable[[dict], float], runs: list = runs) -> float:
                return statistics.fmean(path(run) for run in runs)

            def d(where: str, group: str, key: str, avg: Callable = avg) -> float:
                return avg(lambda run: run[where][group][key])

            corr = drift = "–"
            if "prompts" in runs[0]:
                corr = f"{avg(lambda run: run['prompts']['text_prompt_cos_corr']):.2f}"
                drift = f"{avg(lambda run: run['prompts']['prompt_drift']['tail']):.2f}"
            lines.append(
                f"| {m} | {d('diag_test', 'head', 'pos_logit'):.1f} / "
                f"{d('diag_test', 'head', 'neg_logit'):.1f} | "
                f"{d('diag_test', 'tail', 'pos_logit'):.1f} / "
                f"{d('diag_test', 'tail', 'neg_logit'):.1f} | "
                f"{d('diag_train', 'head', 'push_down_share'):.3f} | "
                f"{d('diag_train', 'tail', 'push_down_share'):.3f} | {corr} | {drift} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot_ap_vs_count(doc: dict[str, Any], path: Path) -> None:
    """Per-class test AP against training count, one panel per regime (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("the plot needs matplotlib: pip install matplotlib") from e
    regimes = [rg for rg in REGIMES if any(r["regime"] == rg for r in doc["runs"])]
    fig, axes = plt.subplots(1, len(regimes), figsize=(6 * len(regimes), 4), squeeze=False)
    styles = {
        "linear-BCE": "s",
        "linear-ASL": "^",
        "CPRFL-ASL": "o",
        "CPRFL-ASL-random": "x",
        "CPRFL-ASL-cosine": "D",
    }
    for ax, regime in zip(axes[0], regimes, strict=True):
        for method, marker in styles.items():
            runs = selected_runs(doc, regime, method)
            if not runs:
                continue
            xs, ys = [], []
            for r in runs:
                split = doc["splits"][str(r["seed"])]
                counts = [split["counts"][c] for c in split["seen"]]
                xs += counts
                ys += r["test_ap"]
            xs_a, ys_a = np.asarray(xs, float), np.asarray(ys, float)
            bins = np.geomspace(xs_a.min(), xs_a.max() + 1, 9)
            which = np.digitize(xs_a, bins)
            mx = [np.exp(np.log(xs_a[which == b]).mean()) for b in np.unique(which)]
            my = [ys_a[which == b].mean() for b in np.unique(which)]
            ax.scatter(xs_a, ys_a, s=6, alpha=0.25, marker=marker)
            ax.plot(mx, my, marker=marker, label=method)
        ax.set_xscale("log")
        ax.set_xlabel("training positives of the class")
        ax.set_ylabel("test AP (%)")
        ax.set_title(f"{regime}: per-class AP (dots), binned mean (lines)")
        ax.axvline(20, color="grey", lw=0.5, ls="--")
        ax.axvline(100, color="grey", lw=0.5, ls="--")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from cprfl_zoo.fileio import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."), dpi=110)
    plt.close(fig)


def merge(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One document from several result files (runs concatenated, first file's metadata)."""
    out = dict(docs[0])
    runs: dict[tuple, dict[str, Any]] = {}
    for d in docs:
        for r in d["runs"]:
            runs.setdefault(_run_key(r), r)
    out["runs"] = list(runs.values())
    out["config"] = dict(docs[-1]["config"])  # the last file's grids (the widest, when extended)
    out["splits"] = {k: v for d in docs for k, v in d.get("splits", {}).items()}
    return out


def config_for(device: str = "cpu", quick: bool = False, **overrides: Any) -> EmojiConfig:
    """The CPU configuration, the CUDA one, or the quick one, with overrides."""
    cfg = EmojiConfig(device=device)
    if device.startswith("cuda"):
        cfg = replace(cfg, **CUDA)
    if quick:
        cfg = replace(cfg, **QUICK)
    return replace(cfg, **overrides) if overrides else cfg


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regime", choices=(*REGIMES, "both"), default="both")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=(*METHODS, *OPTIONS))
    parser.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    parser.add_argument("--frozen-lrs", type=float, nargs="+", help="frozen lr grid")
    parser.add_argument("--finetune-lrs", type=float, nargs="+", help="fine-tune lr grid")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (224 px, paper head)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 lr, few epochs")
    parser.add_argument("--threads", type=int, help="torch threads (default 1)")
    parser.add_argument("--data-dir", type=Path, help="folder of the two npm tarballs")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument("--report", type=Path, nargs="+", help="only print tables from these")
    parser.add_argument("--plot", type=Path, help="draw AP vs training count into this image")
    args = parser.parse_args(argv)
    if args.report:
        doc = merge([load_results(p) for p in args.report])
    else:
        overrides: dict[str, Any] = {}
        if args.seeds:
            overrides["seeds"] = tuple(args.seeds)
        if args.threads:
            overrides["threads"] = args.threads
        for name in ("frozen_lrs", "finetune_lrs"):
            if getattr(args, name):
                overrides[name] = tuple(getattr(args, name))
        cfg = config_for(args.device, args.quick, **overrides)
        regimes = REGIMES if args.regime == "both" else (args.regime,)
        try:
            doc = run_benchmark(cfg, regimes, args.methods, args.output, args.data_dir)
        except FileNotFoundError as e:
            raise SystemExit(str(e)) from None
        print(f"results in {args.output}")
    print(format_tables(doc))
    if args.plot:
        plot_ap_vs_count(doc, args.plot)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
