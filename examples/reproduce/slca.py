"""SLCA on Split CIFAR-100 (10 tasks x 10 classes), ViT-B/16 IN21K, the paper's hyperparameters.

Zhang et al., "SLCA: Slow Learner with Classifier Alignment", ICCV 2023: SGD
momentum 0.9, weight decay 5e-4, batch 128, head lr 0.01, backbone lr 0.01/100,
20 epochs per task with lr x0.1 at epoch 18; after each task the class means and
covariances of the features, then 5 epochs of alignment on 256 sampled features
per class (batches of 256, tau 0.1, logit normalisation).

    python examples/reproduce/slca.py --data-root data --weights vit_b16_in21k.safetensors
    python examples/reproduce/slca.py --smoke
"""

from __future__ import annotations

import time

import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin
from common import EpochLRDecay, backbone, fake_dataset, parser, real_dataset, report

from neve.models import PretrainedClassifier
from neve.plugins import ClassifierAlignmentPlugin, SlowLearnerPlugin
from neve.strategies import SLCA

PAPER = {"last_acc": 91.53, "inc_acc": 94.09,
         "source": "Zhang et al., ICCV 2023, Table 1 (Split CIFAR-100, ViT-B/16 IN21K)"}
ACC = "Top1_Acc_Stream/eval_phase/test_stream/Task000"


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--backbone", default="timm/vit_base_patch16_224.augreg_in21k")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--tasks", type=int, default=10)
    args = p.parse_args(argv)
    start = time.perf_counter()
    RNGManager.set_random_seeds(args.seed)
    if args.smoke:
        train, test = (fake_dataset("cifar100", 4, 4, args.seed + k) for k in (0, 1))
        args.epochs, args.tasks = 1, 2
    else:
        train, test = (real_dataset("cifar100", args.data_root, t) for t in (True, False))
    net = backbone(args, args.backbone, "timm/vit_tiny_patch16_224", input_size=224)
    bm = nc_benchmark(train, test, n_experiences=args.tasks, task_labels=False, seed=args.seed)
    model = PretrainedClassifier(net, num_classes=2, preprocess=True)
    strategy = SLCA(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4),
        train_mb_size=8 if args.smoke else 128,
        train_epochs=args.epochs,
        eval_mb_size=256,
        device=args.device,
        evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]),
        plugins=[EpochLRDecay(milestone=18)],
        slow_learner=SlowLearnerPlugin(0.01),
        alignment=ClassifierAlignmentPlugin(
            samples_per_class=16 if args.smoke else 256, epochs=5, batch_size=256, seed=args.seed
        ),
    )
    accuracies = []
    for k, exp in enumerate(bm.train_stream):
        strategy.train(exp)
        accuracies.append(100 * strategy.eval(bm.test_stream[: k + 1])[ACC])
    metrics = {"last_acc": accuracies[-1], "inc_acc": sum(accuracies) / len(accuracies),
               "per_task": accuracies}
    protocol = {"benchmark": f"Split CIFAR-100 {args.tasks} tasks", "backbone": net.name,
                "epochs": args.epochs, "input_size": net.input_size}
    return report("slca", args, metrics, PAPER, protocol, start)


if __name__ == "__main__":
    main()
