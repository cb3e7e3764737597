"""Naive on a curriculum-ordered Split digits with CurriculumEffectiveness, for test_curriculum.py.

    python curriculum_digits_run.py full   OUT      # 5 experiences, no interruption
    python curriculum_digits_run.py first  OUT CKPT # experiences 0..2, then checkpoint
    python curriculum_digits_run.py resume OUT CKPT # new process: load, run the rest

OUT receives the final weights and F after each experience.
"""

import sys

import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive
from resume_harness import train_with_checkpoint

from neve.benchmarks import curriculum_benchmark, digits
from neve.plugins import CurriculumEffectiveness

ORDER = [3, 7, 1, 9, 0, 2, 4, 5, 6, 8]


def main(mode: str, out: str, ckpt: str | None = None) -> None:
    RNGManager.set_random_seeds(1234)
    train, test = digits(seed=0)
    bm = curriculum_benchmark(train, test, ORDER, classes_per_experience=2)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    )
    evaluator = EvaluationPlugin(
        accuracy_metrics(experience=True), CurriculumEffectiveness(), loggers=[]
    )
    strategy = Naive(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=16,
        train_epochs=1,
        eval_mb_size=64,
        evaluator=evaluator,
    )
    strategy, fs = train_with_checkpoint(
        strategy, bm, mode, ckpt, metric="CurriculumF/eval_phase/test_stream"
    )
    torch.save({"state": strategy.model.state_dict(), "fs": fs}, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
