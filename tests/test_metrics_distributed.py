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
