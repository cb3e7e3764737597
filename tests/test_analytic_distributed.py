"""Two CPU processes (gloo, localhost) on disjoint shards end with one process's ridge weights."""

import numpy as np
import scipy.linalg
import torch
from gloo_harness import error_of, run_on_processes

from neve.models import BufferLayer, IncrementalRidge

N, D, B, GAMMA = 400, 16, 48, 0.5


def data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (N,), generator=gen)
    y[N // 2 + 7] = 6  # the largest label lives on rank 1 only
    return x, y


def on_process(rank: int, world: int) -> dict:
    x, y = data()
    shard = slice(rank * N // world, (rank + 1) * N // world)
    xs, ys = x[shard], y[shard]
    buffer = BufferLayer(D, B, seed=1)
    head = IncrementalRidge(B, GAMMA)
    # uneven batches per rank, same number of calls (one empty)
    sizes = [50, 0, 60, 90] if rank == 0 else [10, 120, 40, 30]
    start = 0
    for size in sizes:
        head.partial_fit(buffer(xs[start : start + size]), ys[start : start + size])
        start += size
    # a bad batch on rank 1 makes every rank raise, and changes nothing
    bad = torch.full((2, B), float("nan"), dtype=torch.float64) if rank == 1 else \
        torch.zeros(2, B, dtype=torch.float64)
    raised = error_of(lambda: head.partial_fit(bad, torch.zeros(2, dtype=torch.long))) != ""
    return {"weight": head.weight, "raised": raised, "seen": int(head.num_seen)}


def test_two_gloo_workers_match_one_process_joint_ridge(tmp_path):
    results = run_on_processes(on_process, tmp_path)
    x, y = data()
    feats = np.maximum(x.numpy() @ BufferLayer(D, B, seed=1).weight.numpy(), 0)
    targets = np.eye(7)[y.numpy()]
    ref = scipy.linalg.solve(feats.T @ feats + GAMMA * np.eye(B), feats.T @ targets)
    for res in results:
        w = res["weight"].numpy()
        assert w.shape == (B, 7)  # class count agreed across ranks
        assert np.linalg.norm(w - ref) / np.linalg.norm(ref) <= 1e-8
        assert res["raised"] and res["seen"] == N
    assert torch.equal(results[0]["weight"], results[1]["weight"])
