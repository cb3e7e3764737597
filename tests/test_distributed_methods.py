"""Two CPU processes (gloo) end with one process's numbers, for every method (issue #14).

One ``mp.spawn`` of two workers runs examples/distributed.py's methods (AnalyticCIL
with ExactShardsPlugin, SLCA with a frozen backbone and DDPPlugin, the Curriculum
Designer) and NearestPrototype with CurriculumEffectiveness on Split digits; the
test process runs the same without a process group.
"""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin
from gloo_harness import run_on_processes

from neve.benchmarks import LabelledTensorDataset, digits
from neve.models.core.distributed import equal_batches, shard_range
from neve.plugins import CurriculumEffectiveness
from neve.strategies import NearestPrototype

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "distributed.py"


def example():
    spec = importlib.util.spec_from_file_location("distributed_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flat(dataset) -> LabelledTensorDataset:
    x = torch.stack([dataset[i][0].flatten() for i in range(len(dataset))])
    return LabelledTensorDataset(x, torch.as_tensor(dataset.targets))


def nearest_prototype() -> dict:
    train, test = digits(seed=0)
    bm = nc_benchmark(flat(train), flat(test), n_experiences=5, task_labels=False, seed=0)
    metric = CurriculumEffectiveness()
    strategy = NearestPrototype(
        num_classes=10, feature_dim=64, train_mb_size=50, eval_mb_size=97,
        evaluator=EvaluationPlugin(accuracy_metrics(experience=True), metric, loggers=[]),
    )
    accs = []
    for exp in bm.train_stream:
        strategy.train(exp)
        res = strategy.eval(bm.test_stream)
        accs.append([res[f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{j:03d}"]
                     for j in range(5)])
    return {"sums": strategy.class_sums, "counts": strategy.class_counts,
            "accuracies": torch.tensor(accs, dtype=torch.float64),
            "matrix": torch.as_tensor(metric.accuracy_matrix("test"))}


def run_all() -> dict:
    ex = example()
    train, test = digits(seed=0)
    bm = nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)
    args = SimpleNamespace(seed=0, finetune=False)
    out = {}
    for name in ("analytic", "slca", "curriculum"):
        tensors, _ = getattr(ex, name)(bm, "cpu", args)
        out.update({f"{name}/{k}": v for k, v in tensors.items()})
    out.update({f"nearest/{k}": v for k, v in nearest_prototype().items()})
    return out


def on_process(rank: int, world: int) -> dict:
    results = run_all()
    results["shard"] = torch.tensor(list(shard_range(1437)))
    return results


def test_two_gloo_processes_match_one_process(tmp_path):
    ranks = run_on_processes(on_process, tmp_path)
    # the two shards are disjoint, contiguous and cover every item once
    assert torch.equal(torch.cat([r.pop("shard") for r in ranks]), torch.arange(1437))
    one = run_all()
    assert set(one) == set(ranks[0])
    for key, ref in one.items():
        ref = torch.as_tensor(ref).double()
        for res in ranks:
            got = res[key].double()
            assert got.shape == ref.shape, key
            scale = max(float(ref.norm()), 1e-12)
            assert float((got - ref).norm()) / scale < 1e-6, key
    assert one["nearest/counts"].sum() == len(digits(seed=0)[0])  # each item once
    assert torch.equal(ranks[0]["analytic/weight"], ranks[1]["analytic/weight"])


def test_equal_batches_without_a_process_group_is_one_shard():
    # ceil(10 / 4) = 3 batches of nearly equal size, in order
    assert equal_batches(10, 4) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    for n, size in [(1, 1), (7, 7), (7, 3), (10, 1), (33, 8), (100, 7)]:
        batches = equal_batches(n, size)
        lengths = [len(b) for b in batches]
        assert len(batches) == -(-n // size) and max(lengths) - min(lengths) <= 1, (n, size)
        assert max(lengths) <= size and sum(batches, []) == list(range(n)), (n, size)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3)).tolist()
    assert equal_batches(10, 4, shuffle=True, seed=3) == [order[:4], order[4:7], order[7:]]
