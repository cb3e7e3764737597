"""Which GPU each process uses under torchrun, and the README's several-node command (#14).

Avalanche 0.6.0's ``DistributedHelper`` puts a process on ``cuda:<global rank>``:
on the second node of a 2 x 4 GPU run, rank 5 asks for ``cuda:5``, which that
node does not have. ``neve.plugins.init_distributed`` uses torchrun's
``LOCAL_RANK``; a resumed process puts the saved CUDA tensors and rank 0's CUDA
generator state on its own GPU. No GPU here: the CUDA calls are recorded, not made. The
several-node command runs through bench/distributed.py's launcher.
"""

from __future__ import annotations

import datetime
import importlib.util
from pathlib import Path

import pytest
import torch
from avalanche.distributed import DistributedHelper

from neve.models.core.distributed import process_device
from neve.plugins import init_distributed
from neve.plugins.checkpoint import process_map_location
from neve.plugins.checkpoint_file import continue_saving_process_cuda_rng
from neve.plugins.process_group import ddp_device_ids

PATH = Path(__file__).resolve().parents[1] / "bench" / "distributed.py"
SPEC = importlib.util.spec_from_file_location("neve_bench_distributed", PATH)
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


@pytest.mark.parametrize(("local_rank", "gpus", "expected"), [
    (0, 0, "cpu"), (3, 0, "cpu"), (0, 4, "cuda:0"), (1, 4, "cuda:1"), (3, 4, "cuda:3"),
    (0, 1, "cuda:0"), (3, 1, "cuda:0"),  # one visible GPU: its own (per-process masks)
])
def test_process_device_is_the_local_gpu(local_rank, gpus, expected):
    assert process_device(local_rank, gpus) == torch.device(expected)


@pytest.mark.parametrize(("local_rank", "gpus", "words"), [
    (4, 4, "LOCAL_RANK=4 but this node has 4 CUDA device"), (2, 2, "LOCAL_RANK=2 but"),
    (-1, 4, "local_rank must be"),
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
    init_distributed(0, backend="gloo", timeout=datetime.timedelta(hours=1))
    assert second_node["init_process_group"] == [
        {"backend": "gloo", "device_id": None, "timeout": datetime.timedelta(hours=1)}]


def test_init_distributed_refuses_more_processes_than_gpus(monkeypatch, second_node):
    monkeypatch.setenv("LOCAL_RANK", "4")
    with pytest.raises(ValueError, match="LOCAL_RANK=4 but this node has 4"):
        init_distributed(0)
    assert second_node == {"set_device": [], "init_process_group": []}
    assert DistributedHelper.use_cuda is False  # nothing changed


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"seed": -1}, ValueError, "seed"), ({"seed": 0, "backend": 3}, ValueError, "backend"),
    ({"seed": 0, "timeout": 60}, ValueError, "timeout"),
    ({"seed": 0, "timeout": datetime.timedelta(0)}, ValueError, "timeout"),
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


@pytest.fixture()
def in_group_on_gpu_1(monkeypatch, second_node):
    """As if in a process group of 8, this process's current GPU being cuda:1."""
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 8)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    return second_node


def test_resumed_tensors_go_to_this_process_gpu(in_group_on_gpu_1):
    # rank 0 saved from cuda:0; without a map every rank would load onto cuda:0
    assert process_map_location() == {f"cuda:{i}": "cuda:1" for i in range(4)}


def test_resumed_tensors_stay_put_in_one_process():
    assert process_map_location() is None


def test_resumed_cuda_generator_continues_rank_0s(monkeypatch, in_group_on_gpu_1):
    calls = []
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device: calls.append((state, device)))
    states = [torch.tensor([7], dtype=torch.uint8), torch.tensor([9], dtype=torch.uint8)]
    continue_saving_process_cuda_rng(states, saved_device=0)
    assert calls == [(states[0], 1)]  # rank 0 drew from cuda:0; this process uses cuda:1
    continue_saving_process_cuda_rng(states, saved_device=None)  # an older file
    assert len(calls) == 1


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


def test_scaling_keeps_each_methods_fastest_round_with_that_launchs_calibration(monkeypatch):
    """Two rounds of made-up launches: times, breakdown and its calibration from the fastest."""
    times = {("1x1", 0): 4.0, ("1x1", 1): 3.0, ("2x1", 0): 2.5, ("2x1", 1): 1.5,
             ("1x2", 0): 2.0, ("1x2", 1): 2.2}
    latency = {0: 1e-3, 1: 9e-3}  # the 2-process calibration of each round
    calls = []

    def launch(method_args, procs, layout, folder, extra, threads, timeout_s):
        name, round_ = folder.name.rsplit("-", 1)
        calls.append(name)
        seconds = times[name, int(round_)]
        report = {"setup_s": 0.1, "calibration": {"latency_s": latency[int(round_)],
                                                  "large_s": 0.1, "bytes": 1e6},
                  "methods": {"analytic": {
                      "seconds_per_experience": seconds, "timed": 2,
                      "images_per_experience": 100.0,
                      "collectives": {"seconds": 0.2, "calls": 4, "bytes": 8.0},
                      "ddp_steps": 10, "ddp_bytes_per_step": 1000}}}
        return {"w": torch.tensor([1.0, float(threads)])}, report, 2 * seconds + 1

    monkeypatch.setattr(bench, "launch", launch)
    result = bench.scaling(2, "standalone", [], repeats=2)
    assert calls == ["1x1", "2x1", "1x2"] * 2  # interleaved rounds
    entry = result["methods"]["analytic"]
    assert entry["seconds_per_experience"] == {"1x1": 3.0, "2x1": 1.5, "1x2": 2.0}
    assert entry["seconds_per_experience_rounds"]["2x1"] == [2.5, 1.5]
    assert entry["speedup"] == {"2x1": pytest.approx(2.0), "1x2": pytest.approx(1.5)}
    # the first round's tensors: thread count 1 against 2 in the second entry
    assert entry["largest_relative_difference_threads"] == pytest.approx(1 / 2 ** 0.5)
    per_byte = (0.1 - 9e-3) / 1e6  # round 1's calibration, where 2x1 was fastest
    assert entry["breakdown"]["ddp_allreduce_s_estimated"] == pytest.approx(
        10 * (9e-3 + 1000 * per_byte) / 2)
    assert entry["breakdown"]["ideal_seconds"] == pytest.approx(1.5)
    assert result["repeats"] == 2 and result["startup"]["1x1"]["launch_wall_s"] == 9.0
