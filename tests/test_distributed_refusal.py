"""Under torch.distributed a bad batch on one process is refused on every process (#14).

Before the agreed flag, the process that met a NaN raised, and the other waited
forever in the all-reduce of the class sums.
"""

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.utils.classification_dataset import (
    _make_taskaware_tensor_classification_dataset as tensor_dataset,
)
from gloo_harness import error_of, run_on_processes

from neve.strategies import NearestPrototype


def _stream():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=gen)
    x[37, 2] = float("nan")  # in the second process's shard only
    y = torch.arange(40) % 4
    data = tensor_dataset(x, y)
    return with_classes_timeline(benchmark_from_datasets(train=[data], test=[data]))


def on_process(rank: int, world: int) -> dict:
    strategy = NearestPrototype(num_classes=4, feature_dim=4, train_mb_size=5)
    before = strategy.class_sums.clone()
    refused = error_of(lambda: strategy.train(_stream().train_stream[0]))
    return {"unchanged": torch.equal(before, strategy.class_sums), "refused": refused}


def test_a_nan_on_one_process_is_refused_on_both_without_a_hang(tmp_path):
    ranks = run_on_processes(on_process, tmp_path, timeout_s=120)
    for rank, result in enumerate(ranks):
        assert result["refused"].startswith("ValueError"), (rank, result["refused"])
        assert result["unchanged"] is True, rank
    assert "NaN" in ranks[1]["refused"]
    assert "another process" in ranks[0]["refused"]
