"""Instance-test episodes with NearestPrototype under torch.distributed equal one process (#14).

Each of 2 gloo processes runs the same episodes through ``run_episodes``; each
support set is split over the processes, the class sums are all-reduced and the
queries are scored whole, so every process gets the one-process accuracies. A
support set with fewer items than processes is refused on both, without a hang.
"""

import torch
from gloo_harness import error_of, run_on_processes

from neve.benchmarks import digits, encode_episode, instance_test_episodes, run_episodes
from neve.strategies import NearestPrototype


def accuracies(support_sets: int) -> torch.Tensor:
    train, _ = digits(seed=0)
    episodes = [encode_episode(bm, lambda x: x.flatten(1)) for bm in
                instance_test_episodes(train, 3, 20, support_sets, "noise", 0.6, seed=0)]
    res = run_episodes(lambda: NearestPrototype(num_classes=20, feature_dim=64), episodes,
                       progress=False)
    return torch.tensor(res.accuracies["test"], dtype=torch.float64)


def on_process(rank: int, world: int) -> dict:
    # support sets of one image: fewer items than processes
    return {"acc": accuracies(4), "refused": error_of(lambda: accuracies(20))}


def test_episodes_on_two_processes_score_as_one_process(tmp_path):
    ranks = run_on_processes(on_process, tmp_path)
    one = accuracies(4)
    assert 0.2 < float(one.mean()) < 1.0  # noisy queries: neither trivial nor hopeless
    for res in ranks:
        torch.testing.assert_close(res["acc"], one, rtol=0, atol=1e-12)
        assert "1 items but there are 2 processes" in res["refused"] or \
            "another process" in res["refused"], res["refused"]
