"""Under torch.distributed what one process refuses, every process refuses (#14).

Before the agreed flag, the process that met a NaN raised, and the other waited
forever in the all-reduce of the class sums. Before the checks were made from
sizes that every process knows, a batch size of 1 on 5 items left only rank 0
with an empty batch (rank 1 went on to the head's all-reduce), and a 1-item
experience gave rank 1 an empty shard whose feature extraction raised while
rank 0 waited in the all-reduce of the class statistics. AnalyticCIL's base
phase (a backbone trained by SGD on each process's shard, without gradient
averaging) is refused.
"""

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.utils.classification_dataset import (
    _make_taskaware_tensor_classification_dataset as tensor_dataset,
)
from avalanche.training.plugins import EvaluationPlugin
from gloo_harness import error_of, run_on_processes

from neve.models import PretrainedClassifier
from neve.plugins import ClassifierAlignmentPlugin
from neve.strategies import SLCA, AnalyticCIL, NearestPrototype


def _stream(n: int = 40, nan_at: int | None = 37):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=gen)
    if nan_at is not None:
        x[nan_at, 2] = float("nan")  # in the second process's shard only
    y = torch.arange(n) % 4
    data = tensor_dataset(x, y)
    return with_classes_timeline(benchmark_from_datasets(train=[data], test=[data]))


def _backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())


def _analytic(**kwargs) -> AnalyticCIL:
    return AnalyticCIL(backbone=_backbone(), feature_dim=3, buffer_size=8,
                       evaluator=EvaluationPlugin(loggers=[]), **kwargs)


def on_process(rank: int, world: int) -> dict:
    out = {}
    strategy = NearestPrototype(num_classes=4, feature_dim=4, train_mb_size=5)
    before = strategy.class_sums.clone()
    out["nan"] = error_of(lambda: strategy.train(_stream().train_stream[0]))
    out["unchanged"] = torch.equal(before, strategy.class_sums)

    # 5 items, batches of 1: rank 0 (2 items) could not fill 3 batches, rank 1 could
    out["batch_of_one"] = error_of(
        lambda: _analytic(train_mb_size=1).train(_stream(5, None).train_stream[0]))

    model = PretrainedClassifier(_backbone(), num_classes=4, feature_dim=3)
    slca = SLCA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                evaluator=EvaluationPlugin(loggers=[]),
                alignment=ClassifierAlignmentPlugin(samples_per_class=4, epochs=1))
    out["one_item"] = error_of(lambda: slca.train(_stream(1, None).train_stream[0]))

    base = _analytic(base_epochs=1, train_mb_size=10)
    weights = [p.detach().clone() for p in base.model.backbone.parameters()]
    out["base_phase"] = error_of(lambda: base.train(_stream(40, None).train_stream[0]),
                                 (RuntimeError,))
    out["base_unchanged"] = all(torch.equal(w, p) for w, p in
                                zip(weights, base.model.backbone.parameters(), strict=True))
    return out


def test_what_one_process_refuses_every_process_refuses_without_a_hang(tmp_path):
    ranks = run_on_processes(on_process, tmp_path, timeout_s=180)
    for rank, result in enumerate(ranks):
        assert result["nan"].startswith("ValueError"), (rank, result["nan"])
        assert result["unchanged"] is True, rank
        assert "empty batch" in result["batch_of_one"], (rank, result["batch_of_one"])
        assert "1 items but there are 2 processes" in result["one_item"], \
            (rank, result["one_item"])
        assert "base phase" in result["base_phase"], (rank, result["base_phase"])
        assert result["base_unchanged"] is True, rank
    assert "NaN" in ranks[1]["nan"]
    assert "another process" in ranks[0]["nan"]
