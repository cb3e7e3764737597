"""ACIL on CIFAR-100: base training on 50 classes, then 25 analytic phases of 2 classes.

Zhuang et al., "ACIL: Analytic Class-Incremental Learning with Absolute
Memorization and Privacy Protection", NeurIPS 2022: the backbone and a linear
head are trained with SGD on the 50 base classes (base phase), the backbone is
frozen, and every phase (the base one too) is learned in closed form through a
random ReLU buffer layer (8192 units for CIFAR) with ridge strength gamma.
neve's default backbone is torchvision's ResNet-18 at 32 px (the paper: a
ResNet-32); ``--backbone`` takes any name of ``pretrained_backbone``.

    python examples/reproduce/acil.py --data-root data --weights none
    python examples/reproduce/acil.py --smoke
"""

from __future__ import annotations

import time

from avalanche.benchmarks import nc_benchmark
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin
from common import backbone, fake_dataset, parser, real_dataset, report
from torch import nn

from neve.strategies import AnalyticCIL

PAPER = {"average_acc": 71.05, "last_acc": 63.38,
         "source": "Zhuang et al., NeurIPS 2022, ACIL, CIFAR-100 B50 25 phases (main table)"}
ACC = "Top1_Acc_Stream/eval_phase/test_stream/Task000"


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--backbone", default="torchvision/resnet18")
    p.add_argument("--base-classes", type=int, default=50)
    p.add_argument("--phases", type=int, default=25)
    p.add_argument("--base-epochs", type=int, default=300)
    p.add_argument("--base-lr", type=float, default=0.1)
    p.add_argument("--buffer-size", type=int, default=8192)
    p.add_argument("--gamma", type=float, default=0.1)
    args = p.parse_args(argv)
    start = time.perf_counter()
    RNGManager.set_random_seeds(args.seed)
    classes = 100
    if args.smoke:
        classes, args.base_classes, args.phases, args.base_epochs = 8, 4, 2, 1
        args.buffer_size = 128
        train, test = (fake_dataset("cifar100", 4, classes, args.seed + k) for k in (0, 1))
    else:
        train, test = (real_dataset("cifar100", args.data_root, t) for t in (True, False))
    net = backbone(args, args.backbone, "torchvision/resnet18", input_size=32)
    per_phase = (classes - args.base_classes) // args.phases
    bm = nc_benchmark(train, test, n_experiences=args.phases + 1, task_labels=False,
                      seed=args.seed, per_exp_classes={0: args.base_classes},
                      class_ids_from_zero_in_each_exp=False)
    strategy = AnalyticCIL(
        backbone=nn.Sequential(net.transform, net), feature_dim=net.feature_dim,
        buffer_size=args.buffer_size, gamma=args.gamma, base_epochs=args.base_epochs,
        base_lr=args.base_lr, buffer_seed=args.seed, train_mb_size=8 if args.smoke else 256,
        eval_mb_size=256, device=args.device,
        evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]),
    )
    accuracies = []
    for k, exp in enumerate(bm.train_stream):
        strategy.train(exp)
        accuracies.append(100 * strategy.eval(bm.test_stream[: k + 1])[ACC])
    metrics = {"average_acc": sum(accuracies) / len(accuracies), "last_acc": accuracies[-1],
               "per_phase": accuracies}
    protocol = {"benchmark": f"CIFAR-100 B{args.base_classes}, {args.phases} phases of "
                             f"{per_phase}", "backbone": net.name, "base_epochs": args.base_epochs,
                "buffer_size": args.buffer_size, "gamma": args.gamma}
    return report("acil", args, metrics, PAPER, protocol, start)


if __name__ == "__main__":
    main()
