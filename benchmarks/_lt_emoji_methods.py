"""The methods of the emoji benchmark ``lt_emoji.py``: building, training, scoring one run.

``train`` and ``predict`` are ``_lt_train``'s loops with the benchmark's configuration.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import _lt_train
import numpy as np
import torch
from _heads import (
    CPRFLOnTokens,
    OnImages,
    PooledCosineLinear,
    PooledLinear,
    TopOnFeatures,
    bottom_features,
    make_cprfl,
)
from _lt_diagnostics import cprfl_model, logit_diagnostics, prompt_diagnostics
from _lt_emoji_data import BACKBONE, EmojiConfig, backbone_lr_ratio
from _lt_emoji_tools import AnchoredLoss, make_sampler, make_task_loss, spec_of
from _lt_thresholded import thresholded_scores
from torch import nn


def extract_tokens(backbone: nn.Module, canvases: np.ndarray, device: str, batch: int = 64):
    """Local backbone tokens (N, v, d0) of all canvases (the frozen regime's features)."""
    return _lt_train.extract_tokens(backbone, canvases, device, batch)


@torch.no_grad()
def extract_bottom(
    backbone: nn.Module, canvases: np.ndarray, start: int, device: str, batch: int = 64
) -> dict[str, torch.Tensor]:
    """The frozen bottom's features of all canvases and of their mirror images (finetune-top).

    Returns:
        ``{"plain": (N, c, h, w), "flipped": (N, c, h, w)}`` on the CPU.
    """
    out: dict[str, list[torch.Tensor]] = {"plain": [], "flipped": []}
    for i in range(0, len(canvases), batch):
        x = _lt_train.to_input(canvases[i : i + batch]).to(device)
        out["plain"].append(bottom_features(backbone, x, start).float().cpu())
        out["flipped"].append(bottom_features(backbone, x.flip(-1), start).float().cpu())
    return {k: torch.cat(v).contiguous() for k, v in out.items()}


def build_method(
    method: str,
    regime: str,
    backbone: nn.Module,
    embeddings: torch.Tensor,
    seen_names: list[str],
    cfg: EmojiConfig,
) -> nn.Module:
    """The trainable module of one method in one regime (on ``cfg.device``).

    ``frozen`` trains the head on cached tokens, ``finetune-top`` the backbone's top
    (:class:`_heads.TopOnFeatures`) and the head on the bottom's cached features, ``finetune``
    everything on images.
    """
    spec = spec_of(method)
    if spec.head == "linear":
        linear = PooledCosineLinear if spec.cosine else PooledLinear
        head = linear(backbone.num_features, len(seen_names))
        if regime == "finetune":
            return OnImages(copy.deepcopy(backbone), head).to(cfg.device)
        if regime == "finetune-top":
            return TopOnFeatures(copy.deepcopy(backbone), head, cfg.top_start).to(cfg.device)
        return head.to(cfg.device)
    options = {"cosine_classifier": True} if spec.cosine else {}
    model = make_cprfl(
        BACKBONE, backbone.state_dict(), seen_names, cfg.head, text_embeddings=embeddings, **options
    )
    if regime == "finetune":
        return model.to(cfg.device)
    if regime == "finetune-top":
        return TopOnFeatures(model.backbone, CPRFLOnTokens(model), cfg.top_start).to(cfg.device)
    model.backbone.requires_grad_(False)
    return CPRFLOnTokens(model).to(cfg.device)


def train(
    module,
    get_batch,
    targets,
    loss_fn,
    *,
    lr: float,
    epochs: int,
    cfg,
    seed: int,
    sampler=None,
    on_epoch=None,
    regime: str = "frozen",
) -> None:
    """AdamW + one-cycle schedule, the same for every method; backbone at a lower lr
    (:func:`_lt_emoji_data.backbone_lr_ratio` of ``regime``).

    No weight decay on biases and norm weights (1-d parameters); an optional sampler gives each
    epoch's index list; see ``_lt_train.train``.
    """
    _lt_train.train(
        module,
        get_batch,
        targets,
        loss_fn,
        lr=lr,
        epochs=epochs,
        batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay,
        seed=seed,
        backbone_lr_ratio=backbone_lr_ratio(cfg, regime, lr),
        device=cfg.device,
        sampler=sampler,
        on_epoch=on_epoch,
    )


def predict(module: nn.Module, get_batch, n: int) -> torch.Tensor:
    """Logits of ``n`` samples, in order, on the CPU."""
    return _lt_train.predict(module, get_batch, n, 128)


def batches(regime: str, tokens: dict, sets: dict, gen: torch.Generator, device: str):
    """``batch_of(set_name, idx, training)``: cached tokens (frozen), cached bottom features
    (finetune-top; in training each sample's mirror image with probability 1/2, drawn from
    ``gen``) or images, augmented in training with ``gen`` (finetune)."""

    def batch_of(name: str, idx: torch.Tensor, training: bool) -> torch.Tensor:
        if regime == "frozen":
            return tokens[name][idx].to(device)
        if regime == "finetune-top":
            feats = tokens[name]
            if not training:
                return feats["plain"][idx].to(device)
            flip = (torch.rand(len(idx), generator=gen) < 0.5)[:, None, None, None]
            return torch.where(flip, feats["flipped"][idx], feats["plain"][idx]).to(device)
        x = _lt_train.to_input(sets[name][idx.numpy()])
        return (_lt_train.augment(x, gen) if training else x).to(device)

    return batch_of


def evaluate_run(
    module, batch_of, names, emb, ys, split, groups, unseen, prompts_init
) -> dict[str, Any]:
    """Validation / test mAP, per-class test AP, diagnostics and (CPRFL) unseen-class AP.

    ``ys`` is (training targets, validation targets, all test targets, seen class indices);
    ``prompts_init`` the CPRFL prompts before training (None for a linear head). A CPRFL model
    is left set to all classes (``set_classes(names, emb)``).
    """
    from cprfl_zoo.metrics import average_precision, long_tail_map

    train_y, val_y, test_all, seen = ys
    model = cprfl_model(module)
    val_scores = predict(module, lambda i, tr: batch_of("val", i, tr), len(val_y))
    test_scores = predict(module, lambda i, tr: batch_of("test", i, tr), len(test_all))
    test_y = test_all[:, seen]
    result = long_tail_map(test_scores, test_y, split)
    val = long_tail_map(val_scores, val_y, split)
    priors = train_y.mean(0).double()
    run: dict[str, Any] = {
        "val_mAP": round(100 * float(average_precision(val_scores, val_y).nanmean()), 3),
        "val": {k: round(v, 3) for k, v in val.as_dict(100).items()},
        "test": {k: round(v, 3) for k, v in result.as_dict(100).items()},
        "f1": thresholded_scores(val_scores, val_y, test_scores, test_y, priors, groups["tail"]),
        "test_ap": [round(100 * float(a), 2) for a in result.ap],
        "diag_test": logit_diagnostics(test_scores, test_y, groups),
    }
    n_train = min(len(train_y), 512)
    train_scores = predict(module, lambda i, tr: batch_of("train", i, False), n_train)
    run["diag_train"] = logit_diagnostics(train_scores, train_y[:n_train], groups)
    if model is not None:
        run["prompts"] = prompt_diagnostics(model, prompts_init, groups)
        model.set_classes(names, emb)
        all_scores = predict(module, lambda i, tr: batch_of("test", i, tr), len(test_all))
        ap = average_precision(all_scores[:, unseen], test_all[:, unseen])
        run["unseen_ap"] = [round(100 * float(a), 2) for a in ap]
        run["unseen_chance"] = [round(100 * float(c), 2) for c in test_all[:, unseen].mean(0)]
    return run


def run_one(
    method,
    regime,
    lr,
    seed,
    epochs,
    batch_of,
    backbone,
    names,
    emb,
    ys,
    split,
    unseen,
    cfg,
    anchor_weight: float | None = None,
) -> dict[str, Any]:
    """Build, train and score one (regime, method, seed, lr[, anchor weight]) run.

    ``batch_of(set_name, idx, training)`` fetches batches; ``emb`` holds all classes' embeddings;
    ``ys`` and ``unseen`` are as in :func:`evaluate_run`, ``split`` the seen classes' groups.
    Returns the run's results-file entry.
    """
    spec = spec_of(method)
    seen = ys[3]
    groups = {k: list(v) for k, v in split.groups().items()}
    torch.manual_seed(seed)
    module = build_method(method, regime, backbone, emb[seen], [names[i] for i in seen], cfg)
    model = cprfl_model(module)
    prompts_init = None
    if model is not None:
        with torch.no_grad():
            prompts_init = model.get_prompts().float().cpu()
    loss = make_task_loss(spec, ys[0])
    if spec.anchor:
        if model is None or anchor_weight is None:
            raise ValueError(f"{method} needs a CPRFL head and an anchor weight")
        loss = AnchoredLoss(loss, model, anchor_weight)
    curve: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "val_mAP": []}
    val_loss = make_task_loss(spec, ys[0])

    def on_epoch(epoch: int, train_loss: float) -> None:
        from cprfl_zoo.metrics import average_precision

        scores = predict(module, lambda i, tr: batch_of("val", i, tr), len(ys[1]))
        curve["train_loss"].append(round(train_loss, 5))
        curve["val_loss"].append(round(float(val_loss(scores, ys[1])), 5))
        curve["val_mAP"].append(round(100 * float(average_precision(scores, ys[1]).nanmean()), 3))

    t = time.perf_counter()
    train(
        module,
        lambda i, tr: batch_of("train", i, tr),
        ys[0],
        loss,
        lr=lr,
        epochs=epochs,
        cfg=cfg,
        seed=seed,
        sampler=make_sampler(spec, ys[0], seed),
        on_epoch=on_epoch,
        regime=regime,
    )
    run = {"regime": regime, "method": method, "seed": seed, "lr": lr, "epochs": epochs}
    if regime != "frozen":
        run["backbone_lr"] = lr * backbone_lr_ratio(cfg, regime, lr)
    if spec.anchor:
        run["anchor_weight"] = anchor_weight
    run["train_s"] = round(time.perf_counter() - t, 1)
    run["curve"] = curve
    run.update(evaluate_run(module, batch_of, names, emb, ys, split, groups, unseen, prompts_init))
    return run
