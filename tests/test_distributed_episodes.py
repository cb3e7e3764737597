"""Instance-test episodes with NearestPrototype under torch.distributed equal one process (#14).

Each of 2 gloo processes runs the same episodes through ``run_episodes``; each
support set is split over the processes, the class sums are all-reduced and the
queries are scored whole, so every process gets the one-process accuracies. A
support set with fewer items than processes is refused on both, without a hang.
"""

import torch
from avalanche.training import Naive
from gloo_harness import error_of, run_on_processes

from neve.benchmarks import digits, encode_episode, instance_test_episodes, run_episodes
from neve.models.core.distributed import LEDGER
from neve.strategies import NearestPrototype


def accuracies(support_sets: int, n: int = 3, shard: bool = False, make=None) -> torch.Tensor:
    train, _ = digits(seed=0)
    episodes = [encode_episode(bm, lambda x: x.flatten(1)) for bm in
                instance_test_episodes(train, n, 20, support_sets, "noise", 0.6, seed=0)]
    make = make or (lambda: NearestPrototype(num_classes=20, feature_dim=64))
    res = run_episodes(make, episodes, progress=False, shard_episodes=shard)
    return torch.tensor(res.accuracies["test"], dtype=torch.float64)


def naive() -> Naive:
    model = torch.nn.Linear(64, 20)
    return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                 criterion=torch.nn.CrossEntropyLoss(), train_mb_size=8)


def on_process(rank: int, world: int) -> dict:
    LEDGER.reset()
    whole = accuracies(4, n=5)
    calls_whole = LEDGER.calls
    LEDGER.reset()
    sharded = accuracies(4, n=5, shard=True)
    calls = [calls_whole, LEDGER.calls]
    return {
        "acc": accuracies(4),
        # support sets of one image: fewer items than processes
        "refused": error_of(lambda: accuracies(20)),
        "whole": whole, "sharded": sharded, "calls": calls,
        "too_few": error_of(lambda: accuracies(4, n=1, shard=True)),
        "avalanche_loaders": error_of(lambda: accuracies(4, n=2, shard=True, make=naive)),
    }


def test_episodes_on_two_processes_score_as_one_process(tmp_path):
    ranks = run_on_processes(on_process, tmp_path)
    one = accuracies(4)
    assert 0.2 < float(one.mean()) < 1.0  # noisy queries: neither trivial nor hopeless
    for res in ranks:
        torch.testing.assert_close(res["acc"], one, rtol=0, atol=1e-12)
        assert "1 items but there are 2 processes" in res["refused"] or \
            "another process" in res["refused"], res["refused"]


def test_sharded_episodes_on_two_processes_score_as_one_process(tmp_path):
    ranks = run_on_processes(on_process, tmp_path)
    one = accuracies(4, n=5)
    torch.testing.assert_close(accuracies(4, n=5, shard=True), one, rtol=0, atol=0)
    for res in ranks:
        # every process returns every episode's accuracy, in episode order (5 over 2 processes)
        torch.testing.assert_close(res["sharded"], one, rtol=0, atol=1e-12)
        torch.testing.assert_close(res["whole"], one, rtol=0, atol=1e-12)
        whole_calls, sharded_calls = res["calls"]
        # no collective inside an episode: one agreement and two gathers at the end
        assert sharded_calls == 3 and whole_calls >= 5 * 4, res["calls"]
        assert "at least one episode per process" in res["too_few"] or \
            "another process" in res["too_few"], res["too_few"]
        assert "loaders neve sets" in res["avalanche_loaders"], res["avalanche_loaders"]
