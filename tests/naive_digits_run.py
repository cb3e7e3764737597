"""A Naive run on Split digits, used by test_checkpoint.py in separate processes.

    python naive_digits_run.py full   OUT      # 5 experiences, no interruption
    python naive_digits_run.py first  OUT CKPT # experiences 0..2, then checkpoint
    python naive_digits_run.py resume OUT CKPT # new process: load, run the rest

OUT receives the final weights and the accuracies after each experience.
"""

import sys

import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive
from resume_harness import train_with_checkpoint

from neve.benchmarks import digits


def main(mode: str, out: str, ckpt: str | None = None) -> None:
    RNGManager.set_random_seeds(1234)
    train, test = digits(seed=0)
    bm = nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    )
    evaluator = EvaluationPlugin(accuracy_metrics(stream=True, experience=True), loggers=[])
    strategy = Naive(
        model,
        torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9),
        torch.nn.CrossEntropyLoss(),
        train_mb_size=16,
        train_epochs=2,
        eval_mb_size=64,
        evaluator=evaluator,
    )
    strategy, accs = train_with_checkpoint(strategy, bm, mode, ckpt)
    torch.save({"state": strategy.model.state_dict(), "accs": accs}, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
