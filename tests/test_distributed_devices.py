"""Which GPU each process uses under torchrun, and the README's several-node command (#14).

Avalanche 0.6.0's ``DistributedHelper`` puts a process on ``cuda:<global rank>``:
on the second node of a 2 x 4 GPU run, rank 5 asks for ``cuda:5``, which that
node does not have. ``neve.plugins.init_distributed`` uses torchrun's
``LOCAL_RANK``. No GPU here: the CUDA calls are recorded, not made. The
several-node command runs through bench/distributed.py's launcher.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from avalanche.distributed import DistributedHelper

from neve.models.distributed import process_device
from neve.plugins import init_distributed
from neve.plugins.distributed import ddp_device_ids

PATH = Path(__file__).resolve().parents[1] / "bench" / "distributed.py"
SPEC = importlib.util.spec_from_file_location("neve_bench_distributed", PATH)
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


@pytest.mark.parametrize(("local_rank", "gpus", "expected"), [
    (0, 0, "cpu"), (3, 0, "cpu"), (0, 4, "cuda:0"), (1, 4, "cuda:1"), (3, 4, "cuda:3"),
])
def test_process_device_is_the_local_gpu(local_rank, gpus, expected):
    assert process_device(local_rank, gpus) == torch.device(expected)


@pytest.mark.parametrize(("local_rank", "gpus", "words"), [
    (4, 4, "LOCAL_RANK=4 but this node has 4 CUDA device"), (-1, 4, "local_rank must be"),
    (True, 4, "local_rank must be"),
])
def test_process_device_refuses_a_gpu_the_node_lacks(local_rank, gpus, words):
    with pytest.raises(ValueError, match=words):
        process_device(local_rank, gpus)


@pytest.fixture()
def second_node(monkeypatch):
    """Rank 5 of 8 = local rank 1 of the second 4-GPU node; CUDA calls recorded."""
    calls: dict[str, list] = {"set_device": [], "init_process_group": []}
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls["set_device"].append(d))
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda **kw: calls["init_process_group"].append(kw))
    monkeypatch.setattr(DistributedHelper, "use_cuda", False)
    monkeypatch.setattr(DistributedHelper, "_dev_map", DistributedHelper._make_map("cpu"))
    return calls


def test_avalanche_helper_names_the_global_rank_gpu(monkeypatch, second_node):
    # the finding: Avalanche's device is cuda:<global rank>, absent on a 4-GPU node
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 5)
    monkeypatch.setattr(DistributedHelper, "use_cuda", True)
    assert DistributedHelper.make_device() == torch.device("cuda:5")


def test_init_distributed_uses_the_local_gpu(second_node):
    device = init_distributed(7)
    assert device == torch.device("cuda:1")
    assert second_node["set_device"] == [torch.device("cuda:1")]
    assert second_node["init_process_group"] == [
        {"backend": "nccl", "device_id": torch.device("cuda:1")}]
    assert DistributedHelper.use_cuda is True
    assert DistributedHelper.device_map["cuda:5"] == "cuda:1"  # tensors unpickled here


def test_init_distributed_gloo_on_gpus_binds_no_device(second_node):
    init_distributed(0, backend="gloo")
    assert second_node["init_process_group"] == [{"backend": "gloo", "device_id": None}]


def test_init_distributed_refuses_more_processes_than_gpus(monkeypatch, second_node):
    monkeypatch.setenv("LOCAL_RANK", "4")
    with pytest.raises(ValueError, match="LOCAL_RANK=4 but this node has 4"):
        init_distributed(0)
    assert second_node == {"set_device": [], "init_process_group": []}
    assert DistributedHelper.use_cuda is False  # nothing changed


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"seed": -1}, ValueError, "seed"), ({"seed": 0, "backend": 3}, ValueError, "backend"),
])
def test_init_distributed_bad_arguments(second_node, kwargs, error, words):
    with pytest.raises(error, match=words):
        init_distributed(**kwargs)
    assert second_node["init_process_group"] == []


def test_init_distributed_twice_is_refused(monkeypatch, second_node):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    with pytest.raises(RuntimeError, match="already up"):
        init_distributed(0)


def test_init_distributed_without_torchrun_is_one_process(monkeypatch, second_node):
    monkeypatch.delenv("LOCAL_RANK")
    assert init_distributed(0) == torch.device("cuda:0")
    assert second_node["init_process_group"] == []


def test_ddp_device_ids_cpu_model_is_none():
    assert ddp_device_ids(torch.nn.Linear(2, 2)) is None


def test_two_nodes_from_the_readme_save_the_one_process_head():
    """The README's several-node command, as two one-process "nodes" on localhost."""
    result = bench.compare("analytic", processes=2, layout="nodes")
    assert result["tensors"] == 1
    assert result["largest_relative_difference"] < 1e-6


def test_largest_relative_difference_is_independent_of_order_and_checks_keys():
    a = {"w": torch.tensor([3.0, 4.0]), "z": torch.zeros(2)}
    b = {"w": torch.tensor([3.0, 4.5]), "z": torch.zeros(2)}
    assert bench.largest_relative_difference(a, b) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="keys differ"):
        bench.largest_relative_difference(a, {"w": a["w"]})
