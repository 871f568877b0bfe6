"""Tests for cprfl_zoo.data.label_stats and cprfl_zoo.data.samplers: class statistics read from a
training list, class-aware and repeat-factor sampling, and their sharding across ranks."""

from __future__ import annotations

import math
import os
import socket
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset

import cprfl_zoo.data.samplers
from cprfl_zoo.data import (
    ClassAwareSampler,
    MultiLabelImageList,
    RepeatFactorSampler,
    class_counts,
    class_priors,
    image_repeat_factors,
    multi_hot_targets,
    read_image_list,
)
from cprfl_zoo.data.samplers import _shard


def long_tailed_targets(n=60, c=5, seed=0):
    """Multi-hot targets with class k in about n / 2**(k+1) images (each class in at least 1)."""
    gen = torch.Generator().manual_seed(seed)
    rates = torch.tensor([0.5 ** (k + 1) for k in range(c)])
    y = (torch.rand(n, c, generator=gen) < rates).float()
    y[torch.arange(c), torch.arange(c)] = 1.0
    return y


@pytest.fixture
def image_list(tmp_path):
    lines = ["a.jpg 0 2", "b.jpg 0", "c.jpg", "d.jpg 1 0", "e.jpg 0 2 2"]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return MultiLabelImageList(tmp_path / "train.txt", tmp_path, num_classes=4, check_files=False)


# --- class statistics -----------------------------------------------------------------------


def test_counts_and_priors_from_the_image_list(image_list):
    want = torch.tensor([4, 1, 2, 0])
    assert torch.equal(class_counts(image_list), want)
    assert torch.equal(class_counts(image_list), image_list.class_counts)
    assert torch.equal(class_counts(image_list.entries), want)
    assert torch.equal(class_counts(image_list.targets), want)
    assert torch.equal(class_counts(image_list.targets.numpy()), want)
    torch.testing.assert_close(class_priors(image_list), want.double() / 5, rtol=0, atol=0)
    assert class_counts(image_list).dtype == torch.long
    assert class_priors(image_list).dtype == torch.float64


def test_subset_and_unknown_labels(image_list):
    subset = Subset(image_list, [0, 3])
    assert torch.equal(class_counts(subset), torch.tensor([2, 1, 1, 0]))
    assert torch.equal(multi_hot_targets(subset), image_list.targets[[0, 3]])
    y = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [0.0, -1.0], [1.0, -1.0]])
    assert torch.equal(class_counts(y), torch.tensor([2, 1]))
    # class 0 is known in 3 images (2 positive), class 1 in 2 (1 positive)
    torch.testing.assert_close(class_priors(y), torch.tensor([2 / 3, 1 / 2], dtype=torch.float64))


def test_targets_that_cannot_be_read():
    with pytest.raises(TypeError, match="cannot read multi-label targets from a str"):
        class_counts("train.txt")
    with pytest.raises(ValueError, match=r"\(num_images, num_classes\) matrix, got shape \(4,\)"):
        class_counts(torch.zeros(4))


# --- sharding -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [10, 11, 3])
@pytest.mark.parametrize("replicas", [1, 3, 4])
@pytest.mark.parametrize("drop_last", [False, True])
def test_sharding_is_distributed_samplers(n, replicas, drop_last):
    indices = list(range(n))
    for rank in range(replicas):
        torch_sampler = DistributedSampler(
            indices, num_replicas=replicas, rank=rank, shuffle=False, drop_last=drop_last
        )
        assert _shard(indices, replicas, rank, drop_last) == list(torch_sampler)


# --- class-aware sampling -------------------------------------------------------------------


def single_label_targets(sizes):
    """One class per image: class c has sizes[c] images (so each pick's class is known)."""
    labels = torch.cat([torch.full((s,), c) for c, s in enumerate(sizes)])
    return torch.nn.functional.one_hot(labels, len(sizes)).float(), labels


def test_class_aware_rounds_over_classes_and_over_each_class():
    sizes = [20, 7, 3, 1, 0]  # class 4 has no image: skipped
    y, labels = single_label_targets(sizes)
    k = 3
    sampler = ClassAwareSampler(y, num_samples=300, samples_per_class=k, seed=5)
    drawn = list(sampler)
    assert len(drawn) == len(sampler) == 300
    chunks = [drawn[i : i + k] for i in range(0, 300, k)]
    visited = []
    for chunk in chunks:  # each visit draws k images of one class
        assert len({labels[i].item() for i in chunk}) == 1
        visited.append(labels[chunk[0]].item())
    # Classes come in rounds: every block of 4 visits is a permutation of the classes with images.
    for r in range(0, len(visited) - 3, 4):
        assert sorted(visited[r : r + 4]) == [0, 1, 2, 3]
    # Within a class, images come in rounds: no image repeats before all have been drawn.
    for c, size in enumerate(sizes[:4]):
        picks = [i for i in drawn if labels[i] == c]
        for r in range(0, len(picks) - size + 1, size):
            assert len(set(picks[r : r + size])) == size


def test_class_aware_balances_a_long_tailed_list():
    y = long_tailed_targets(n=200, c=6)
    sampler = ClassAwareSampler(y, num_samples=6000, seed=0)
    drawn = torch.tensor(list(sampler))
    picked_counts = y[drawn].sum(dim=0)
    natural = y.sum(dim=0) / len(y) * 6000
    # The rarest class (5 of 200 images) is in over 15% of the picks instead of 2.5%; against
    # the head class (97 images, which co-occurs with everything) it gains more than 4 times.
    assert picked_counts[5] > 0.15 * 6000 > 3 * natural[5]
    assert picked_counts[5] / picked_counts[0] > 4 * natural[5] / natural[0]


def test_class_aware_is_deterministic_per_seed_and_epoch():
    y = long_tailed_targets()
    a, b = ClassAwareSampler(y, seed=1), ClassAwareSampler(y, seed=1)
    assert list(a) == list(b)
    assert len(a) == 60  # default: the number of images
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(ClassAwareSampler(y, seed=2)) != first


@pytest.mark.parametrize("drop_last", [False, True])
def test_class_aware_shards_one_epoch_across_ranks(drop_last):
    y = long_tailed_targets()
    whole = ClassAwareSampler(y, num_samples=50, num_replicas=1, rank=0, seed=3)
    whole.set_epoch(2)
    parts = []
    for rank in range(4):
        s = ClassAwareSampler(
            y, num_samples=50, num_replicas=4, rank=rank, seed=3, drop_last=drop_last
        )
        s.set_epoch(2)
        parts.append(list(s))
        assert len(s) == (12 if drop_last else 13)
    full = list(whole)
    padded = full[:48] if drop_last else full + full[:2]
    assert [i for row in zip(*parts, strict=True) for i in row] == padded


def test_default_replicas_come_from_the_process_group(monkeypatch):
    y = long_tailed_targets()
    monkeypatch.setattr(cprfl_zoo.data.samplers.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(cprfl_zoo.data.samplers.dist, "get_world_size", lambda: 3)
    monkeypatch.setattr(cprfl_zoo.data.samplers.dist, "get_rank", lambda: 2)
    for sampler in (ClassAwareSampler(y), RepeatFactorSampler(y, threshold=0.2)):
        assert (sampler.num_replicas, sampler.rank) == (3, 2)


def test_class_aware_bad_arguments():
    y = long_tailed_targets()
    with pytest.raises(ValueError, match="no image in the training list"):
        ClassAwareSampler(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        ClassAwareSampler(y, num_samples=0)
    with pytest.raises(ValueError, match="samples_per_class must be a positive int"):
        ClassAwareSampler(y, samples_per_class=1.5)
    with pytest.raises(ValueError, match=r"rank must be an int in \[0, num_replicas=2\)"):
        ClassAwareSampler(y, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="seed must be an int"):
        ClassAwareSampler(y, seed=None)


# --- repeat-factor sampling -----------------------------------------------------------------


def formula_repeat_factors(y, t):
    """r_c = max(1, sqrt(t / f_c)), r_i = max over the image's classes (1 without any)."""
    n, c = y.shape
    freq = [sum(y[i, k].item() >= 0.5 for i in range(n)) / n for k in range(c)]
    out = []
    for i in range(n):
        factors = [max(1.0, math.sqrt(t / freq[k])) for k in range(c) if y[i, k] >= 0.5]
        out.append(max(factors, default=1.0))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("threshold", [0.001, 0.1, 0.3, 1.0])
def test_repeat_factors_match_formula(threshold):
    y = long_tailed_targets()
    y[7] = 0.0  # an image without labels: factor 1
    got = image_repeat_factors(y, threshold)
    torch.testing.assert_close(got, formula_repeat_factors(y, threshold), rtol=1e-12, atol=0)
    assert got[7] == 1.0
    assert torch.equal(RepeatFactorSampler(y, threshold).repeat_factors, got)


def test_repeat_factor_epochs_round_stochastically():
    y = long_tailed_targets()
    sampler = RepeatFactorSampler(y, threshold=0.3, seed=0)
    r = sampler.repeat_factors
    assert r.max() > 2  # the tail is oversampled
    totals = torch.zeros(len(y), dtype=torch.float64)
    epochs = 300
    lengths = set()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        drawn = list(sampler)
        assert len(drawn) == len(sampler)
        lengths.add(len(drawn))
        counts = torch.bincount(torch.tensor(drawn), minlength=len(y)).double()
        assert ((counts == r.floor()) | (counts == r.ceil())).all()
        totals += counts
    assert len(lengths) > 1  # the epoch's length varies
    # E[count] = r_i; with 300 epochs the mean is within 0.1 of it (std <= 0.5 / sqrt(300)).
    torch.testing.assert_close(totals / epochs, r, rtol=0, atol=0.1)


def test_repeat_factor_shuffle_seed_and_shards():
    y = long_tailed_targets()
    ordered = list(RepeatFactorSampler(y, threshold=0.3, shuffle=False, seed=4))
    assert ordered == sorted(ordered)
    shuffled = RepeatFactorSampler(y, threshold=0.3, seed=4)
    assert sorted(shuffled) == ordered  # same rounding draws, then a permutation
    assert list(shuffled) == list(RepeatFactorSampler(y, threshold=0.3, seed=4))
    parts = [list(RepeatFactorSampler(y, 0.3, num_replicas=2, rank=r, seed=4)) for r in (0, 1)]
    full = list(shuffled)
    assert len(parts[0]) == len(parts[1]) == math.ceil(len(full) / 2)
    padded = full + full[: len(parts[0]) * 2 - len(full)]
    assert [i for row in zip(*parts, strict=True) for i in row] == padded


def test_repeat_factor_bad_threshold():
    for bad in (0, -0.1, 1.5, float("nan"), True, "0.1"):
        with pytest.raises(ValueError, match=r"threshold must be a number in \(0, 1\]"):
            RepeatFactorSampler(long_tailed_targets(), threshold=bad)


def test_samplers_drive_a_data_loader():
    y = long_tailed_targets()
    dataset = TensorDataset(torch.arange(len(y)), y)
    for sampler in (ClassAwareSampler(y, num_samples=32), RepeatFactorSampler(y, 0.2)):
        loader = DataLoader(dataset, batch_size=8, sampler=sampler)
        seen = torch.cat([idx for idx, _ in loader]).tolist()
        assert seen == list(sampler)


# --- under torchrun: two gloo processes -----------------------------------------------------


def _sampler_worker(rank, world_size, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        y = long_tailed_targets()
        out = {}
        for name, sampler in (
            ("class_aware", ClassAwareSampler(y, num_samples=41, seed=7)),
            ("repeat_factor", RepeatFactorSampler(y, threshold=0.3, seed=7)),
        ):
            sampler.set_epoch(3)
            out[name] = list(sampler)
        torch.save(out, Path(out_dir) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_split_one_epoch(tmp_path):
    mp.start_processes(
        _sampler_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="fork"
    )
    parts = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in (0, 1)]
    y = long_tailed_targets()
    for name, single in (
        ("class_aware", ClassAwareSampler(y, num_samples=41, seed=7)),
        ("repeat_factor", RepeatFactorSampler(y, threshold=0.3, seed=7)),
    ):
        single.set_epoch(3)
        full = list(single)
        a, b = parts[0][name], parts[1][name]
        assert len(a) == len(b) == math.ceil(len(full) / 2)
        interleaved = [i for row in zip(a, b, strict=True) for i in row]
        assert interleaved[: len(full)] == full
        assert Counter(a + b) - Counter(full) == Counter(full[: len(a) + len(b) - len(full)])


def test_read_image_list_targets_work_as_sampler_input(image_list):
    sampler = ClassAwareSampler(read_image_list(image_list.entries.source, 4), num_samples=9)
    assert set(sampler) <= {0, 1, 3, 4}  # c.jpg has no label and is never drawn
    assert np.asarray(list(sampler)).shape == (9,)
