"""Under torch.distributed a bad batch on one process is refused on every process (#14).

Before the agreed flag, the process that met a NaN raised, and the other waited
forever in the all-reduce of the class sums.
"""

import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.utils.classification_dataset import (
    _make_taskaware_tensor_classification_dataset as tensor_dataset,
)

from neve.strategies import NearestPrototype


def _stream():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=gen)
    x[37, 2] = float("nan")  # in the second process's shard only
    y = torch.arange(40) % 4
    data = tensor_dataset(x, y)
    return with_classes_timeline(benchmark_from_datasets(train=[data], test=[data]))


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        strategy = NearestPrototype(num_classes=4, feature_dim=4, train_mb_size=5)
        before = strategy.class_sums.clone()
        try:
            strategy.train(_stream().train_stream[0])
            outcome = "trained"
        except ValueError as err:
            outcome = "refused: " + str(err)
        unchanged = torch.equal(before, strategy.class_sums)
        with open(f"{out}/rank{rank}.txt", "w") as f:
            f.write(f"{unchanged}\n{outcome}")
    finally:
        dist.destroy_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_nan_on_one_process_is_refused_on_both_without_a_hang(tmp_path):
    ctx = mp.spawn(_worker, args=(_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise AssertionError("a process waited forever for the other")
    for rank in (0, 1):
        unchanged, outcome = (tmp_path / f"rank{rank}.txt").read_text().split("\n", 1)
        assert outcome.startswith("refused"), (rank, outcome)
        assert unchanged == "True", rank
    assert "NaN" in (tmp_path / "rank1.txt").read_text()
    assert "another process" in (tmp_path / "rank0.txt").read_text()
