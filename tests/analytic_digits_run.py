"""An AnalyticCIL run on Split digits, used by test_analytic.py in separate processes.

    python analytic_digits_run.py full   OUT      # 5 experiences, no interruption
    python analytic_digits_run.py first  OUT CKPT # experiences 0..2, then checkpoint
    python analytic_digits_run.py resume OUT CKPT # new process: load, run the rest

OUT receives the head's state and weight and the accuracies after each experience.
The backbone is a small seeded random MLP with ``base_epochs=1``, so the
checkpoint must also carry the base-trained backbone.
"""

import sys

import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin
from resume_harness import train_with_checkpoint

from neve.benchmarks import digits
from neve.strategies import AnalyticCIL


def main(mode: str, out: str, ckpt: str | None = None) -> None:
    RNGManager.set_random_seeds(1234)
    train, test = digits(seed=0)
    bm = nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 48), torch.nn.ReLU())
    evaluator = EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])
    strategy = AnalyticCIL(
        backbone=backbone, feature_dim=48,
        buffer_size=128, gamma=0.5, base_epochs=1, train_mb_size=32,
        eval_mb_size=256, evaluator=evaluator,
    )
    strategy, accs = train_with_checkpoint(strategy, bm, mode, ckpt)
    torch.save(
        {
            "state": strategy.model.state_dict(),
            "weight": strategy.head.weight.clone(),
            "accs": accs,
        },
        out,
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
