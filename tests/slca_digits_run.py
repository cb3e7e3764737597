"""An SLCA run on Split digits with a tiny MLP backbone, for test_slca_checkpoint.py.

    python slca_digits_run.py full   OUT      # 5 experiences, no interruption
    python slca_digits_run.py first  OUT CKPT # experiences 0..2, then checkpoint
    python slca_digits_run.py resume OUT CKPT # new process: load, run the rest

OUT receives the final weights, the accuracies after each experience and the
alignment plugin's state.
"""

import sys

import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin
from resume_harness import train_with_checkpoint

from neve.benchmarks import digits
from neve.models import PretrainedClassifier
from neve.plugins import ClassifierAlignmentPlugin, SlowLearnerPlugin
from neve.strategies import SLCA


def tiny_backbone(feature_dim: int = 16) -> torch.nn.Module:
    """Flatten 8x8 digits, then Linear(64 -> feature_dim) + ReLU."""
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, feature_dim), torch.nn.ReLU()
    )


def make_strategy() -> SLCA:
    model = PretrainedClassifier(tiny_backbone(), num_classes=2, feature_dim=16)
    evaluator = EvaluationPlugin(accuracy_metrics(stream=True, experience=True), loggers=[])
    return SLCA(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        train_mb_size=16,
        train_epochs=2,
        eval_mb_size=128,
        evaluator=evaluator,
        slow_learner=SlowLearnerPlugin(0.1),
        alignment=ClassifierAlignmentPlugin(samples_per_class=32, epochs=2),
    )


def main(mode: str, out: str, ckpt: str | None = None) -> None:
    RNGManager.set_random_seeds(1234)
    train, test = digits(seed=0)
    bm = nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)
    strategy = make_strategy()
    strategy, accs = train_with_checkpoint(strategy, bm, mode, ckpt)
    alignment = strategy.alignment.state_dict()
    torch.save(
        {
            "state": strategy.model.state_dict(),
            "accs": accs,
            "means": alignment["stats"]["means"],
            "scatters": alignment["stats"]["scatters"],
            "losses": alignment["alignment_losses"],
        },
        out,
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
