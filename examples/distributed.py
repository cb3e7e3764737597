"""neve's methods on several processes or GPUs, through Avalanche's DistributedHelper.

    torchrun --standalone --nproc_per_node=2 examples/distributed.py \\
        --method analytic --dataset digits --save analytic.pt
    torchrun --standalone --nproc_per_node=2 examples/distributed.py --method slca --save slca.pt
    torchrun --standalone --nproc_per_node=2 examples/distributed.py --method slca --finetune
    torchrun --standalone --nproc_per_node=2 examples/distributed.py --method curriculum

Split digits (5 experiences of 2 classes) with a small seeded MLP backbone.
``neve.plugins.init_distributed`` starts the process group (NCCL on GPUs, gloo on
CPU; ``--backend gloo`` also on GPUs) with each process on its node's GPU
``cuda:LOCAL_RANK``; Avalanche shards the data loaders. Saved by rank 0, a dict of
tensors (``torch.load(OUT, weights_only=True)``), the same for any number of
processes:

* ``analytic``: AnalyticCIL's head weights (its statistics summed over processes);
* ``slca``: SLCA's class means and covariances (backbone frozen unless
  ``--finetune``, then also the backbone's and head's weights); features
  gathered over processes; trained with DDP on the same global batches of 16
  for any number of processes that divides 16 (``GlobalBatchPlugin``);
* ``curriculum``: the Curriculum Designer's distance matrix (teacher features
  gathered over processes).

Prints the training time per experience (rank 0).
"""

from __future__ import annotations

import argparse
import time

import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.distributed import DistributedHelper
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin

from neve.benchmarks import CurriculumDesigner, digits
from neve.models import PretrainedClassifier
from neve.plugins import (
    ClassifierAlignmentPlugin,
    DDPPlugin,
    GlobalBatchPlugin,
    SlowLearnerPlugin,
    init_distributed,
)
from neve.strategies import SLCA, AnalyticCIL

FEATURES = 32


def backbone(seed: int) -> torch.nn.Module:
    """Flatten 8x8 digits, Linear(64 -> 32), ReLU; the same seeded weights on every process."""
    gen = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, FEATURES), torch.nn.ReLU())
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return net


def evaluator() -> EvaluationPlugin:
    return EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])


def run_stream(strategy, bm) -> list[float]:
    """Train on each experience; the seconds of each ``train`` call."""
    seconds = []
    for exp in bm.train_stream:
        DistributedHelper.barrier()
        start = time.perf_counter()
        strategy.train(exp)
        DistributedHelper.barrier()
        seconds.append(time.perf_counter() - start)
    return seconds


def analytic(bm, device, args) -> tuple[dict, list[float]]:
    strategy = AnalyticCIL(
        backbone=backbone(args.seed), feature_dim=FEATURES, buffer_size=512, gamma=1.0,
        train_mb_size=64, eval_mb_size=256, device=device, evaluator=evaluator(),
    )  # AnalyticCIL shards exactly under torch.distributed by itself
    seconds = run_stream(strategy, bm)
    return {"weight": strategy.model.head.weight.cpu()}, seconds


def slca(bm, device, args) -> tuple[dict, list[float]]:
    model = PretrainedClassifier(backbone(args.seed), num_classes=2, feature_dim=FEATURES)
    if not args.finetune:
        model.features.requires_grad_(False)
    strategy = SLCA(
        model=model,
        optimizer=torch.optim.SGD([p for p in model.parameters() if p.requires_grad],
                                  lr=0.05, momentum=0.9),
        train_mb_size=16, train_epochs=2, eval_mb_size=256, device=device,
        evaluator=evaluator(),
        slow_learner=SlowLearnerPlugin(0.1),
        alignment=ClassifierAlignmentPlugin(samples_per_class=32, epochs=2, seed=args.seed),
        plugins=[GlobalBatchPlugin(seed=args.seed), DDPPlugin()],
    )  # train_mb_size is the global batch: 16 / N items per process
    seconds = run_stream(strategy, bm)
    stats = strategy.alignment.stats
    classes = stats.classes
    out = {
        "classes": torch.tensor(classes),
        "means": torch.stack([stats.means[c] for c in classes]),
        "covariances": torch.stack([stats.covariance_of(c) for c in classes]),
    }
    if args.finetune:
        out.update({f"backbone.{k}": v for k, v in model.features.state_dict().items()})
        out.update({f"head.{k}": v for k, v in model.classifier.state_dict().items()})
    return out, seconds


def curriculum(bm, device, args) -> tuple[dict, list[float]]:
    train, _ = digits(seed=0)
    DistributedHelper.barrier()
    start = time.perf_counter()
    designer = CurriculumDesigner(teacher=backbone(args.seed), distance="cosine",
                                  device=device).fit(train)
    seconds = [time.perf_counter() - start]
    return {"distances": designer.distances_.clone()}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", choices=("analytic", "slca", "curriculum"), required=True)
    parser.add_argument("--dataset", choices=("digits",), default="digits")
    parser.add_argument("--save", default=None, help="where rank 0 saves the tensors")
    parser.add_argument("--finetune", action="store_true",
                        help="slca: train the backbone too (DDP), not only the head")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=("nccl", "gloo"), default=None,
                        help="default: nccl with CUDA, gloo without")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU with a GPU present")
    args = parser.parse_args()

    device = init_distributed(args.seed, backend=args.backend, use_cuda=not args.cpu)
    train, test = digits(seed=0)
    bm = nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)
    run = {"analytic": analytic, "slca": slca, "curriculum": curriculum}[args.method]
    tensors, seconds = run(bm, device, args)
    if DistributedHelper.is_main_process:
        world = DistributedHelper.world_size
        per = sum(seconds) / len(seconds)
        print(f"{args.method}: {world} process(es), {per:.5f} s per experience "
              f"({len(seconds)} timed)")
        if args.save:
            torch.save({k: v.detach().cpu() for k, v in tensors.items()}, args.save)
    if DistributedHelper.is_distributed:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
