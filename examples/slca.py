"""SLCA on Split Fashion-MNIST: fine-tune the pretrained EfficientNet-Lite0 slowly, align its head.

Five experiences of two classes. The model is neve's ``PretrainedClassifier``:
``features`` = EfficientNet-Lite0 (ImageNet weights) behind its own resize +
normalise transform (``preprocess=True``, so the raw 28x28 images go in), and
``classifier`` = Avalanche's ``IncrementalClassifier``. ``SLCA`` trains the head
with SGD lr 0.01 and the backbone with 0.01 x 0.01 (slow learner), stores each
class's feature mean and covariance, and re-trains the head on sampled features
after each experience (classifier alignment). A class-balanced subset keeps it
to minutes on a CPU.

    python examples/slca.py                          # 100 images per class, 32 px
    python examples/slca.py --train-per-class 500 --input-size 64
"""

from __future__ import annotations

import argparse

import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.logging import TextLogger
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin

from neve.benchmarks import class_balanced_subset, fashion_mnist
from neve.models import PretrainedClassifier, pretrained_backbone
from neve.plugins import ClassifierAlignmentPlugin, SlowLearnerPlugin
from neve.strategies import SLCA


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--backbone-lr-scale", type=float, default=0.01)
    parser.add_argument("--covariance", choices=["full", "diagonal", "shared"], default="full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    RNGManager.set_random_seeds(args.seed)
    train, test = fashion_mnist()
    train = class_balanced_subset(train, args.train_per_class, seed=args.seed)
    test = class_balanced_subset(test, args.test_per_class, seed=args.seed)
    bm = nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=args.seed)

    backbone = pretrained_backbone("efficientnet-lite0", input_size=args.input_size)
    model = PretrainedClassifier(backbone, num_classes=2, preprocess=True)
    strategy = SLCA(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4),
        train_mb_size=32,
        train_epochs=args.epochs,
        eval_mb_size=256,
        device=args.device,
        evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[TextLogger()]),
        slow_learner=SlowLearnerPlugin(args.backbone_lr_scale),
        alignment=ClassifierAlignmentPlugin(covariance=args.covariance, batch_size=64),
    )
    accuracies = []
    for k, exp in enumerate(bm.train_stream):
        strategy.train(exp)
        res = strategy.eval(bm.test_stream[: k + 1])
        accuracies.append(res["Top1_Acc_Stream/eval_phase/test_stream/Task000"])
        print(
            f"after experience {k} (classes {sorted(exp.classes_in_this_experience)}): "
            f"accuracy on the classes seen so far {100 * accuracies[-1]:.1f}%"
        )
    seconds = strategy.alignment.alignment_seconds
    print(
        f"last accuracy {100 * accuracies[-1]:.1f}%, average {100 * sum(accuracies) / 5:.1f}%; "
        f"alignment steps took {sum(seconds):.1f} s in all"
    )
    return accuracies


if __name__ == "__main__":
    main()
