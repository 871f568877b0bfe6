"""cprfl_zoo.metrics.distributed: gathering across ranks, and MultiLabelEvaluator."""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import random_problem

from cprfl_zoo.metrics import (
    MultiLabelEvaluator,
    gather_for_metrics,
    long_tail_map,
    threshold_metrics,
)


def test_gather_for_metrics_without_process_group_is_identity():
    assert not dist.is_initialized()
    x = torch.randn(5, 3)
    assert gather_for_metrics(x) is x
    assert gather_for_metrics(x, num_samples=5) is x
    with pytest.raises(ValueError, match="num_samples=4 but the single process holds 5 rows"):
        gather_for_metrics(x, num_samples=4)
    with pytest.raises(ValueError, match="0-d tensor"):
        gather_for_metrics(torch.tensor(1.0))
    with pytest.raises(TypeError, match=r"must be a torch\.Tensor"):
        gather_for_metrics([1, 2])


def _gather_worker(rank, world_size, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        # unequal sizes: rank r holds r + 2 rows whose values encode (rank, row)
        x = torch.stack([torch.tensor([rank, i]) for i in range(rank + 2)])
        gathered = gather_for_metrics(x)
        # DistributedSampler over 7 samples on 2 ranks: 4 rows each, rank 1's last is padding
        y = torch.arange(4) + 10 * rank
        trimmed = gather_for_metrics(y, num_samples=7)
        torch.save({"gathered": gathered, "trimmed": trimmed}, Path(out_dir) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gather_for_metrics_two_gloo_processes(tmp_path):
    # fork: the workers reuse the imported torch instead of re-importing it (seconds each)
    mp.start_processes(
        _gather_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="fork"
    )
    expected = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1], [1, 2]])
    for rank in range(2):
        out = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert torch.equal(out["gathered"], expected)
        assert out["trimmed"].tolist() == [0, 1, 2, 3, 10, 11, 12]


def test_evaluator_accumulates_batches():
    scores, targets = random_problem(n=90, c=5, seed=8)
    counts = [300, 150, 40, 25, 3]
    ev = MultiLabelEvaluator(counts, threshold=0.5, top_k=2)
    with pytest.raises(ValueError, match="call update"):
        ev.compute()
    for i in range(0, 90, 32):
        ev.update(scores[i : i + 32], targets[i : i + 32])
    res = ev.compute(num_samples=90)
    lt = long_tail_map(scores, targets, counts).as_dict()
    for key in lt:
        assert res[key] == pytest.approx(lt[key], abs=1e-12)
    thr = threshold_metrics(scores.sigmoid(), targets, threshold=0.5).as_dict()
    top = threshold_metrics(scores, targets, top_k=2).as_dict()
    for key in thr:
        assert res[key] == pytest.approx(thr[key], abs=1e-12)
        assert res[f"{key}_top2"] == pytest.approx(top[key], abs=1e-12)
    ev.reset()
    ev.update(scores, targets)
    assert MultiLabelEvaluator(top_k=None).split is None
    with pytest.raises(ValueError, match=r"must both be \(B, C\)"):
        ev.update(scores[:, :2], targets)


def test_gather_in_a_single_process_group(tmp_path):
    """An initialised group of one process: the tensor is returned as is, the count checked."""
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        x = torch.randn(4, 2)
        assert gather_for_metrics(x) is x
        with pytest.raises(ValueError, match="num_samples=3 but the single process holds 4"):
            gather_for_metrics(x, num_samples=3)
        scores, targets = random_problem(n=20, c=4, seed=3)
        ev = MultiLabelEvaluator(top_k=None)
        ev.update(scores, targets)
        res = ev.compute(num_samples=20)
        assert set(res) == {"mAP", "OP", "OR", "OF1", "CP", "CR", "CF1"}
    finally:
        dist.destroy_process_group()


class _FakeWorld:
    """Two ranks simulated in this process: rank 0 sends ``mine``, rank 1 sends ``theirs``.

    ``gather_for_metrics`` makes two collectives: the row counts, then the rows padded to the
    longest shard.
    """

    def __init__(self, theirs):
        self.theirs = theirs
        self.calls = 0

    def all_gather(self, outputs, tensor, group=None):
        if self.calls % 2 == 0:  # the row counts
            other = torch.tensor([self.theirs.shape[0]])
        else:
            other = tensor.new_zeros(tensor.shape)
            other[: self.theirs.shape[0]] = self.theirs
        self.calls += 1
        outputs[0].copy_(tensor)
        outputs[1].copy_(other)


@pytest.fixture
def fake_two_ranks(monkeypatch):
    def install(theirs):
        world = _FakeWorld(theirs)
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
        monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
        monkeypatch.setattr(dist, "all_gather", world.all_gather)

    return install


def test_gather_trims_sampler_padding_and_checks_counts(fake_two_ranks):
    # DistributedSampler over 5 samples on 2 ranks: 3 rows each, rank 1's last is padding
    fake_two_ranks(torch.tensor([[10, 10], [11, 11], [99, 99]]))
    mine = torch.tensor([[0, 0], [1, 1], [2, 2]])
    assert gather_for_metrics(mine, num_samples=5).tolist() == [
        [0, 0],
        [1, 1],
        [2, 2],
        [10, 10],
        [11, 11],
    ]
    assert gather_for_metrics(mine).shape == (6, 2)  # without num_samples every row is kept
    with pytest.raises(ValueError, match=r"num_samples=8 over 2 ranks means 4 rows per rank"):
        gather_for_metrics(mine, num_samples=8)


def test_gather_unequal_shards_without_num_samples(fake_two_ranks):
    fake_two_ranks(torch.tensor([7.0]))
    out = gather_for_metrics(torch.tensor([1.0, 2.0, 3.0]))
    assert out.tolist() == [1.0, 2.0, 3.0, 7.0] and out.dtype == torch.float32


def _evaluator_worker(rank, world_size, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        scores, targets = random_problem(n=41, c=5, seed=8)
        # DistributedSampler(shuffle=False) order: rank r gets rows r, r + 2, ...; padded with 0
        rows = [*range(41), 0]
        mine = rows[rank::world_size]
        ev = MultiLabelEvaluator([300, 150, 40, 25, 3], top_k=2)
        for i in range(0, len(mine), 8):
            ev.update(scores[mine[i : i + 8]], targets[mine[i : i + 8]])
        torch.save(ev.compute(num_samples=41), Path(out_dir) / f"metrics{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_evaluator_across_two_gloo_processes(tmp_path):
    mp.start_processes(
        _evaluator_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="fork"
    )
    scores, targets = random_problem(n=41, c=5, seed=8)
    ev = MultiLabelEvaluator([300, 150, 40, 25, 3], top_k=2)
    ev.update(scores, targets)
    expected = ev.compute()
    for rank in range(2):
        got = torch.load(tmp_path / f"metrics{rank}.pt", weights_only=True)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key
