"""The accuracy matrix and its figures on two gloo processes equal one process's.

Naive with neve's GlobalBatchPlugin, DDPPlugin and WholeEvaluationPlugin, through
:func:`neve.benchmarks.results.run_seeds`, with Avalanche's AccuracyMatrixPluginMetric
and forgetting metrics beside the per-experience accuracies.
"""

import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.evaluation.metrics import (
    AccuracyMatrixPluginMetric,
    accuracy_metrics,
    forgetting_metrics,
)
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive
from gloo_harness import run_on_processes

from neve.benchmarks import digits
from neve.benchmarks.results import accuracy_matrix_of, run_seeds
from neve.plugins import DDPPlugin, GlobalBatchPlugin, WholeEvaluationPlugin


def results() -> dict:
    train, test = digits(seed=0)
    bm = nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)
    made = []

    def make(seed):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32),
                                    torch.nn.ReLU(), torch.nn.Linear(32, 10))
        made.append(Naive(
            model, torch.optim.SGD(model.parameters(), lr=0.05), torch.nn.CrossEntropyLoss(),
            train_mb_size=16, train_epochs=1, eval_mb_size=50,
            plugins=[GlobalBatchPlugin(seed=seed), DDPPlugin(), WholeEvaluationPlugin()],
            evaluator=EvaluationPlugin(accuracy_metrics(experience=True),
                                       AccuracyMatrixPluginMetric(),
                                       forgetting_metrics(stream=True), loggers=[])))
        return made[-1]

    out = run_seeds(make, bm, [0])
    figures = out["figures"]
    return {"matrix": torch.tensor(out["matrices"][0], dtype=torch.float64),
            "avalanche_matrix": torch.from_numpy(accuracy_matrix_of(made[0].evaluator)),
            "figures": torch.tensor([figures[k]["mean"] for k in sorted(figures)],
                                    dtype=torch.float64),
            "stream_forgetting": torch.tensor(made[0].evaluator.get_last_metrics()[
                "StreamForgetting/eval_phase/test_stream"], dtype=torch.float64)}


def on_process(rank: int, world: int) -> dict:
    return results()


def test_two_processes_give_the_one_process_matrix_and_figures(tmp_path):
    ranks = run_on_processes(on_process, tmp_path)
    one = results()
    assert one["matrix"].shape == (5, 5) and one["matrix"].diagonal().min() > 0.3  # it learned
    for rank, got in enumerate(ranks):
        for key, ref in one.items():
            assert torch.allclose(got[key], ref, rtol=0, atol=1e-12), (rank, key)
