"""Long-tailed multi-label benchmark on emoji drawings of named things (issue 10).

Does exact CPRFL beat a linear head on the tail when class names carry meaning and the
backbone is fine-tuned? 72 emoji classes (9 subcategories of 8) in two drawing styles from the
npm packages ``emoji-datasource-google`` and ``emoji-datasource-twitter`` (``_emoji.py``),
composed 1-4 per canvas by :func:`cprfl_zoo.synthetic.compose_rgba_set` with a long-tailed
training set (63 seen classes, imbalance 100; the last frequency block of 9 classes unseen) and
balanced validation / test sets (``_lt_emoji_data.py``). Three regimes, the same budget for
every method within each: ``frozen`` (ImageNet EfficientNet-Lite0 tokens, 20 epochs),
``finetune-top`` (the backbone's last stage and head convolution trained with the head on the
frozen bottom's cached features, 20 epochs: the CPU's fine-tuned regime) and ``finetune`` (end
to end; 5 epochs on the CPU, 12 at 224 px with the paper's head sizes under ``--device cuda``).
Methods are ``<head>-<loss>[-<option>...]`` (``_lt_emoji_tools.py``): linear and CPRFL heads,
each with every long-tail tool of the library. Each method's learning rate is chosen on
validation (seed 0) and reused for the other seeds (in ``finetune-top`` the tools reuse their
head's ASL baseline's, and ``--top-backbone-lr`` trains the top at one lr for every head
instead of at 1/10 of the head's); every run records per-epoch training and validation curves; the
held-out classes are scored after ``set_classes``. The full protocol and the results are in
``docs/src/benchmark_accuracy.md``.

Every finished (regime, method, seed, lr) run is appended to the JSON results file at once, and
a rerun skips the runs already there, so an interrupted run resumes.

Run: ``python benchmarks/lt_emoji.py`` (every regime), ``--regime frozen``, ``--quick``,
``--report FILES`` to print the tables (``--plot`` draws AP vs training count, ``--curves`` the
training curves) from saved results.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import _assets
import _emoji
import torch
import torch.nn.functional as F
from _heads import make_loss
from _lt_diagnostics import logit_diagnostics
from _lt_emoji_data import (
    BACKBONE,
    METHODS,
    REGIMES,
    RESULTS,
    TEMPLATE,
    EmojiConfig,
    EmojiSplits,
    compose_splits,
    config_for,
    epochs_of,
    training_counts,
)
from _lt_emoji_methods import (
    batches,
    build_method,
    extract_bottom,
    extract_tokens,
    predict,
    run_one,
    train,
)
from _lt_emoji_report import (
    _run_key,
    chosen_point,
    format_tables,
    grid_points,
    load_results,
    merge,
    regime_rows,
)
from _lt_emoji_tools import SPECS, anchor_base, make_sampler, make_task_loss, spec_of
from _lt_train import imagenet_backbone, logger, to_input

from cprfl_zoo.cli_args import positive_float
from cprfl_zoo.fileio import atomic_write_text

# Re-exported: examples/quickstart.py and the tests use them as lt_emoji.<name>.
__all__ = [
    "BACKBONE",
    "TEMPLATE",
    "EmojiConfig",
    "EmojiSplits",
    "build_method",
    "compose_splits",
    "extract_tokens",
    "logit_diagnostics",
    "make_loss",
    "make_sampler",
    "make_task_loss",
    "predict",
    "spec_of",
    "to_input",
    "train",
    "training_counts",
]
_log = logger("lt_emoji")


# ---------------------------------------------------------------------- the benchmark
def _seed_data(classes, names, seed: int, cfg: EmojiConfig, doc: dict[str, Any]) -> dict[str, Any]:
    """The splits of one seed, its targets and long-tail split; recorded in ``doc["splits"]``."""
    from cprfl_zoo.metrics import long_tail_split

    splits = compose_splits(classes.images, classes.pools, classes.subcategories, seed, cfg)
    seen, unseen = splits.seen.tolist(), splits.unseen.tolist()
    split = long_tail_split(splits.counts[seen].tolist(), cfg.head_threshold, cfg.tail_threshold)
    ys = (
        torch.from_numpy(splits.train.targets[:, seen]).float(),
        torch.from_numpy(splits.val.targets[:, seen]).float(),
        torch.from_numpy(splits.test.targets).float(),
        seen,
    )
    _log(f"seed {seed}: {len(ys[0])} training canvases, unseen {[names[i] for i in unseen]}")
    doc.setdefault("splits", {})[str(seed)] = {
        "counts": splits.counts.tolist(),
        "order": splits.order.tolist(),
        "seen": seen,
        "unseen": unseen,
        **{f"num_{k}": len(y) for k, y in zip(("train", "val", "test"), ys, strict=False)},
    }
    sets = {"train": splits.train.images, "val": splits.val.images, "test": splits.test.images}
    return {"ys": ys, "split": split, "unseen": unseen, "sets": sets}


def _random_embeddings(text: torch.Tensor, seed: int) -> torch.Tensor:
    """Random unit embeddings of the text's shape (the ``-random`` methods), seeded by ``seed``."""
    g = torch.Generator().manual_seed(10_000 + seed)
    return F.normalize(torch.randn(*text.shape, generator=g), dim=-1)


def _points(doc: dict[str, Any], regime: str, method: str, first: bool) -> list:
    """The grid points to run: the whole grid on the first seed, the chosen one after it."""
    points = grid_points(doc, regime, method) if first else [chosen_point(doc, regime, method)]
    if points is None or None in points:
        base = anchor_base(method)
        raise RuntimeError(
            f"no grid point chosen yet for {regime} {method}: run its first seed's grid first"
            + (f" (and {base} before it, whose learning rate it reuses)" if base else "")
            + (
                f" (and its head's ASL baseline, whose learning rate it reuses in {regime})"
                if regime in doc["config"].get("reuse_base_lr", ()) and not base
                else ""
            )
        )
    return points


def _cache_features(regime: str, backbone, data: dict[int, dict], cfg: EmojiConfig) -> None:
    """Cache each seed's inputs of a regime in ``data[seed]["features"][regime]``.

    ``frozen``: the backbone's tokens; ``finetune-top``: the frozen bottom's features of the
    canvases and of their mirror images, checked once against the whole backbone. Validation
    and test are the same for every seed, so they are computed once.
    """
    if regime == "finetune-top":
        _check_top_split(backbone, cfg)

    def extract(canvases):
        if regime == "frozen":
            return extract_tokens(backbone, canvases, cfg.device)
        return extract_bottom(backbone, canvases, cfg.top_start, cfg.device)

    shared: dict[str, Any] = {}
    for d in data.values():
        cached = {"train": extract(d["sets"]["train"])}
        for k in ("val", "test"):
            if k not in shared:
                shared[k] = extract(d["sets"][k])
            cached[k] = shared[k]
        d.setdefault("features", {})[regime] = cached


def _check_top_split(backbone, cfg: EmojiConfig) -> None:
    """Raise if the bottom and top of ``finetune-top`` do not compose to ``forward_features``."""
    from _heads import bottom_features

    x = torch.randn(2, 3, cfg.canvas_size, cfg.canvas_size, device=cfg.device)
    with torch.inference_mode():
        f = bottom_features(backbone, x, cfg.top_start)
        top = backbone.bn2(backbone.conv_head(backbone.blocks[cfg.top_start :](f)))
        err = float((top - backbone.forward_features(x)).abs().max())
    if err > 1e-4:
        raise RuntimeError(f"finetune-top split at block {cfg.top_start} is off by {err:g}")


def run_benchmark(
    cfg: EmojiConfig,
    regimes: Sequence[str],
    methods: Sequence[str],
    output: Path,
    data_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the requested regimes and methods, appending every finished run to ``output``.

    Methods run one after the other, each over all seeds (the first seed's grid, then the
    chosen point on the others), so every finished method has all its seeds. The frozen
    regime's backbone tokens are computed once per seed (validation and test once in all)
    and reused by every method.
    """
    torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    classes = _emoji.load_emoji_classes(data_dir)
    names = list(classes.names)
    _log(f"{len(names)} classes from {len(set(classes.subcategories))} subcategories")
    backbone, _, check = imagenet_backbone(BACKBONE, cfg.device)
    text = _assets.MiniLMTextEncoder(TEMPLATE)(names)
    doc = load_results(output)
    doc.update(config=asdict(cfg), class_names=names, subcategories=list(classes.subcategories))
    doc.update(template=TEMPLATE, backbone=BACKBONE, imagenet_check=check)
    doc["licences"] = _emoji.LICENCES
    done = {_run_key(r) for r in doc["runs"]}
    data = {seed: _seed_data(classes, names, seed, cfg, doc) for seed in cfg.seeds}
    for regime in regimes:
        if regime in ("frozen", "finetune-top"):
            t = time.perf_counter()
            _cache_features(regime, backbone, data, cfg)
            doc.setdefault("feature_s", {})[regime] = round(time.perf_counter() - t, 1)
        epochs = epochs_of(cfg, regime)
        for method in methods:
            for seed in cfg.seeds:
                d = data[seed]
                for lr, weight in _points(doc, regime, method, seed == cfg.seeds[0]):
                    if (regime, method, seed, lr, weight) in done:
                        continue
                    gen = torch.Generator().manual_seed(20_000 + seed)
                    cached = d.get("features", {}).get(regime, {})
                    batch_of = batches(regime, cached, d["sets"], gen, cfg.device)
                    emb = _random_embeddings(text, seed) if spec_of(method).random_text else text
                    args = (backbone, names, emb, d["ys"], d["split"], d["unseen"], cfg)
                    run = run_one(method, regime, lr, seed, epochs, batch_of, *args, weight)
                    doc["runs"].append(run)
                    atomic_write_text(output, json.dumps(doc, indent=1))
                    done.add(_run_key(run))
                    w = f" anchor {weight:g}" if weight is not None else ""
                    _log(
                        f"{regime} seed {seed} {method} lr {lr:g}{w}: val mAP {run['val_mAP']:.2f}"
                        f", test tail {run['test']['mAP_tail']:.2f} ({run['train_s']} s)"
                    )
    doc["runtime_s"] = round(time.perf_counter() - start, 1)
    atomic_write_text(output, json.dumps(doc, indent=1))
    return doc


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regime", choices=(*REGIMES, "all"), default="all")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(SPECS))
    parser.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    parser.add_argument("--frozen-lrs", type=float, nargs="+", help="frozen lr grid")
    parser.add_argument("--finetune-lrs", type=float, nargs="+", help="fine-tune lr grid")
    parser.add_argument("--frozen-cprfl-lrs", type=float, nargs="+", help="CPRFL's frozen lr grid")
    parser.add_argument("--anchor-weights", type=float, nargs="+", help="prompt anchor weight grid")
    parser.add_argument("--top-lrs", type=float, nargs="+", help="finetune-top lr grid")
    parser.add_argument("--top-cprfl-lrs", type=float, nargs="+", help="CPRFL's finetune-top grid")
    parser.add_argument("--top-epochs", type=int, help="finetune-top epochs")
    parser.add_argument("--top-start", type=int, help="finetune-top: first trained block stage")
    parser.add_argument(
        "--top-backbone-lr", type=positive_float, help="finetune-top: top's lr, any head"
    )
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (224 px, paper head)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 lr, few epochs")
    parser.add_argument("--threads", type=int, help="torch threads (default 1)")
    parser.add_argument("--data-dir", type=Path, help="folder of the two npm tarballs")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument("--report", type=Path, nargs="+", help="only print tables from these")
    parser.add_argument("--plot", type=Path, help="draw AP vs training count into this image")
    parser.add_argument("--curves", type=Path, help="draw the training curves into this image")
    args = parser.parse_args(argv)
    if args.report:
        doc = merge([load_results(p) for p in args.report])
    else:
        names = ("seeds", "threads", "frozen_lrs", "finetune_lrs", "frozen_cprfl_lrs")
        names += ("anchor_weights", "top_lrs", "top_cprfl_lrs", "top_epochs", "top_start")
        names += ("top_backbone_lr",)
        overrides = {n: getattr(args, n) for n in names if getattr(args, n)}
        overrides = {n: tuple(v) if isinstance(v, list) else v for n, v in overrides.items()}
        cfg = config_for(args.device, args.quick, **overrides)
        regimes = REGIMES if args.regime == "all" else (args.regime,)
        try:
            doc = run_benchmark(cfg, regimes, args.methods, args.output, args.data_dir)
        except FileNotFoundError as e:
            raise SystemExit(str(e)) from None
        print(f"results in {args.output}")
    print(format_tables(doc))
    if args.plot:
        from _lt_plot import plot_ap_vs_count

        plot_ap_vs_count(doc, args.plot)
        print(f"plot written to {args.plot}")
    if args.curves:
        from _lt_curves import plot_curves

        plot_curves({rg: regime_rows(doc, rg) for rg in REGIMES}, args.curves)
        print(f"curves written to {args.curves}")


if __name__ == "__main__":
    main()
