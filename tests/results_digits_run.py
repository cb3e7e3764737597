"""A run on Split digits with Avalanche's accuracy-matrix, forgetting and BWT metrics, used
by test_results_checkpoint.py in separate processes (see resume_harness.py).

    python results_digits_run.py full   OUT        # 5 experiences, no interruption
    python results_digits_run.py first  OUT CKPT   # experiences 0..2, then checkpoint
    python results_digits_run.py resume OUT CKPT   # new process: load, run the rest

The environment variable ``RESULTS_RUN_METHOD`` is ``naive`` (default: SGD on a small
MLP) or ``analytic`` (AnalyticCIL). OUT receives the metrics' results, their histories
and the accuracy matrices.
"""

import os
import sys

import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.evaluation.metrics import (
    AccuracyMatrixPluginMetric,
    accuracy_metrics,
    bwt_metrics,
    forgetting_metrics,
)
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive
from resume_harness import train_with_checkpoint

from neve.benchmarks import digits
from neve.benchmarks.results import accuracy_matrix_of
from neve.plugins import CurriculumEffectiveness
from neve.strategies import AnalyticCIL


def evaluator() -> EvaluationPlugin:
    return EvaluationPlugin(
        accuracy_metrics(stream=True, experience=True), AccuracyMatrixPluginMetric(),
        forgetting_metrics(experience=True, stream=True), bwt_metrics(experience=True,
                                                                       stream=True),
        CurriculumEffectiveness(), loggers=[])


def strategy_for(method: str):
    if method == "analytic":
        backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 48),
                                       torch.nn.ReLU())
        return AnalyticCIL(backbone=backbone, feature_dim=48, buffer_size=128, gamma=1.0,
                           train_mb_size=64, eval_mb_size=256, evaluator=evaluator())
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 10))
    return Naive(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                 torch.nn.CrossEntropyLoss(), train_mb_size=16, train_epochs=1,
                 eval_mb_size=64, evaluator=evaluator())


def results_of(strategy) -> dict:
    """What the metrics report at the end, as tensors and plain data."""
    ev = strategy.evaluator
    by_class = {type(m).__name__: m for m in ev.metrics}
    history = {k: list(v[1]) for k, v in ev.get_all_metrics().items() if "Acc_Matrix" not in k}
    return {
        "matrix": by_class["AccuracyMatrixPluginMetric"].matrix.clone(),
        "last_matrix": ev.get_last_metrics()["EvalStream/Acc_Matrix"].clone(),
        "experience_forgetting": by_class["ExperienceForgetting"].result(),
        "stream_forgetting": by_class["StreamForgetting"].result(),
        "experience_bwt": by_class["ExperienceBWT"].result(),
        "stream_bwt": by_class["StreamBWT"].result(),
        "history": history,
        "matrix_from_history": torch.from_numpy(accuracy_matrix_of(ev.get_all_metrics())),
        "matrix_from_curriculum": torch.from_numpy(accuracy_matrix_of(
            by_class["CurriculumEffectiveness"])),
        "last": {k: v for k, v in ev.get_last_metrics().items() if "Acc_Matrix" not in k},
    }


def main(mode: str, out: str, ckpt: str | None = None) -> None:
    RNGManager.set_random_seeds(1234)
    train, test = digits(seed=0)
    bm = nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)
    strategy, accs = train_with_checkpoint(
        strategy_for(os.environ.get("RESULTS_RUN_METHOD", "naive")), bm, mode, ckpt)
    torch.save({"accs": accs, **results_of(strategy)}, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
