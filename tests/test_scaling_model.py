"""bench/scaling_model.py: collective costs, the methods' bytes and T(N), against hand sums."""

import importlib.util
import math
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "bench" / "scaling_model.py"
SPEC = importlib.util.spec_from_file_location("neve_scaling_model", PATH)
model = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(model)


def test_collective_costs_follow_the_ring_counts():
    alpha, beta = 1e-4, 1e-9
    assert model.collective_seconds("all_reduce", 1e6, 1, alpha, beta) == 0.0
    # N = 2: 2 steps, 1e6 bytes; N = 4: 6 steps, 1.5e6 bytes
    assert model.collective_seconds("all_reduce", 1e6, 2, alpha, beta) == pytest.approx(
        2e-4 + 1e-3)
    assert model.collective_seconds("all_reduce", 1e6, 4, alpha, beta) == pytest.approx(
        6e-4 + 1.5e-3)
    assert model.collective_seconds("all_gather", 1e6, 8, alpha, beta) == pytest.approx(
        7e-4 + 7e-3)
    assert model.collective_seconds("broadcast", 1e6, 8, alpha, beta) == pytest.approx(
        3 * (1e-4 + 1e-3))
    with pytest.raises(ValueError, match="kind"):
        model.collective_seconds("reduce_scatter", 1.0, 2, alpha, beta)


def test_alpha_beta_inverts_the_two_process_all_reduce():
    alpha, beta = model.alpha_beta(2e-4, 2e-4 + 16e-3, 16e6)
    assert model.collective_seconds("all_reduce", 16e6, 2, alpha, beta) == pytest.approx(
        2e-4 + 16e-3)
    assert model.collective_seconds("all_reduce", 4, 2, alpha, beta) == pytest.approx(
        2e-4, rel=1e-4)


def test_analytic_bytes_are_b_squared_and_b_c_per_batch():
    colls = model.method_collectives("analytic", 2, b=100, classes=4, new_classes=2,
                                     images=3000, batch=1024)
    batches = math.ceil(3000 / 2048)  # 2 per process
    assert sum(c.calls * c.payload for c in colls) == batches * (8 * 100 * 100 + 8 * 100 * 4
                                                                 + 3 * 8)


def test_ddp_steps_do_not_shrink_with_processes():
    kw = dict(b=10, classes=4, new_classes=2, images=1200, batch=32, parameters=1000)
    two = model.method_collectives("slca-finetune", 2, **kw)
    eight = model.method_collectives("slca-finetune", 8, **kw)
    assert two[-1].calls == eight[-1].calls == math.ceil(1200 / 32)
    assert two[-1].payload == 4000


def test_prototype_calls_per_group_do_not_grow_with_episodes():
    # sharded episodes: the same 7 calls per group for any number of episodes; the features'
    # bytes per process grow with them and shrink with N
    calls = [sum(c.calls for c in model.method_collectives(
        "prototype", 2, b=64, classes=20, new_classes=20, images=0, episodes=e))
        for e in (3, 30)]
    assert calls == [7, 7]
    first = model.method_collectives("prototype", 4, b=64, classes=20, new_classes=20, images=0,
                                     episodes=30)[0]
    assert first.payload == 4 * 64 * 40 * 30 / 4


def test_expected_seconds_adds_compute_share_serial_and_collectives():
    colls = [model.Collective("all_reduce", 3, 1e6), model.Collective("all_gather", 2, 1e3)]
    alpha, beta = 1e-4, 1e-9
    hand = 10.0 / 4 + 0.5 + 3 * (6 * alpha + 1.5e6 * beta) + 2 * (3 * alpha + 3e3 * beta)
    assert model.expected_seconds(10.0, 0.5, colls, 4, alpha, beta) == pytest.approx(hand)
    assert model.expected_seconds(10.0, 0.5, colls, 1, alpha, beta) == pytest.approx(10.5)


def test_split_compute_recovers_a_consistent_pair():
    compute, serial = model.split_compute(10.0, 10.0 / 2 + 1.0 + 0.25, 0.25)
    assert (compute, serial) == (pytest.approx(8.0), pytest.approx(2.0))
    assert model.split_compute(1.0, 5.0, 0.0) == (0.0, 1.0)  # slower on 2: all serial


def test_fashion_sizes_are_the_example_s():
    example_path = PATH.parents[1] / "examples" / "distributed.py"
    spec = importlib.util.spec_from_file_location("neve_distributed_example", example_path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    setup = example.SETUPS["fashion-mnist"]
    assert model.FASHION["analytic"] == {"b": setup.buffer_size, "batch": setup.analytic_batch}
    for method in ("slca", "slca-finetune"):
        assert model.FASHION[method] == {"b": setup.features, "batch": setup.slca_batch}
    assert model.FASHION["curriculum"] == model.FASHION["prototype"] == {"b": setup.features}
