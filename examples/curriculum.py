"""Curriculum-designed class orders on Fashion-MNIST (Singh et al., ICCV 2023).

1. The Curriculum Designer takes 500 training images per class embedded by the
   frozen EfficientNet-Lite0 (64 px, features cached on disk by neve), builds
   the cosine distance matrix of the 10 class prototypes and scores all
   10! = 3,628,800 class orders.
2. The best, median and worst ranked orders are each taught one class per
   experience, single pass (1 epoch), Adam lr 1e-3, batch 64, with Avalanche
   ``Naive``, ``EWC`` and ``LwF``. The learner is an MLP (1280-256-10) on the
   cached features, so the example runs on a CPU.
3. ``CurriculumEffectiveness`` reports alpha, beta and F for each run; the
   example prints them and saves plots under ``--out`` (default
   ``outputs/curriculum``, which git ignores): the distance heatmap in each of
   the three orders and a bar chart of F. Progress bars show on a terminal only.

    python examples/curriculum.py                   # Fashion-MNIST
    python examples/curriculum.py --dataset digits  # seconds, for a check
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import EWC, LwF, Naive
from matplotlib.figure import Figure

from neve.benchmarks import (
    CurriculumDesigner,
    LabelledTensorDataset,
    curriculum_benchmark,
    digits,
    fashion_mnist,
)
from neve.models import extract_features, pretrained_backbone
from neve.plugins import CurriculumEffectiveness, PhaseProgressLogger

FASHION_NAMES = [
    "top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "boot",
]  # fmt: skip


def mlp(feature_dim: int, num_classes: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(feature_dim, 256), torch.nn.ReLU(), torch.nn.Linear(256, num_classes)
    )


def make_strategy(name: str, model, evaluator, device: str):
    common = dict(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=64,
        train_epochs=1,
        eval_mb_size=2048,
        device=device,
        evaluator=evaluator,
    )
    if name == "naive":
        return Naive(**common)
    if name == "ewc":
        return EWC(ewc_lambda=100.0, **common)
    if name == "lwf":
        return LwF(alpha=1.0, temperature=2.0, **common)
    raise ValueError(f"unknown strategy {name!r}")


def run(order, train, test, strategy_name: str, seed: int, device: str) -> dict:
    """Train one curriculum; returns the final alpha, beta and F."""
    bm = curriculum_benchmark(train, test, order)
    RNGManager.set_random_seeds(seed)
    model = mlp(train.data.shape[1], 10)
    evaluator = EvaluationPlugin(CurriculumEffectiveness(), loggers=[PhaseProgressLogger()])
    strategy = make_strategy(strategy_name, model, evaluator, device)
    res = {}
    for exp in bm.train_stream:
        strategy.train(exp)
        res = strategy.eval(bm.test_stream)
    return {k: res[f"Curriculum{k}/eval_phase/test_stream"] for k in ("Alpha", "Beta", "F")}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=["fashion_mnist", "digits"], default="fashion_mnist")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/curriculum", help="folder of the plots")
    parser.add_argument("--strategies", nargs="+", default=["naive", "ewc", "lwf"])
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    train_raw, test_raw = fashion_mnist() if args.dataset == "fashion_mnist" else digits(seed=0)
    names = FASHION_NAMES if args.dataset == "fashion_mnist" else [str(i) for i in range(10)]
    backbone = pretrained_backbone("efficientnet-lite0", input_size=64)
    xs = [extract_features(backbone, ds, device=args.device) for ds in (train_raw, test_raw)]
    train, test = (LabelledTensorDataset(x, y) for x, y in xs)

    designer = CurriculumDesigner(max_per_class=500, seed=args.seed)
    designer.fit_features(train.data, train.targets)
    print(
        f"scoring all {math.factorial(len(designer.classes_)):,} orders of "
        f"{len(designer.classes_)} classes ..."
    )
    orders, scores = designer.rank(search="exhaustive", return_scores=True)
    picks = {"best": 0, "median": len(orders) // 2, "worst": len(orders) - 1}

    results = {}
    for label, idx in picks.items():
        order = orders[idx]
        print(
            f"\n{label} order (rank {idx + 1:,}, CD score {scores[idx]:.4f}): "
            + ", ".join(names[c] for c in order)
        )
        designer.plot(out / f"distances_{label}.png", order=order, class_names=names)
        for strat in args.strategies:
            r = run(order, train, test, strat, args.seed, args.device)
            results[(label, strat)] = r
            print(f"  {strat:5s}  alpha {r['Alpha']:.3f}  beta {r['Beta']:+.3f}  F {r['F']:.3f}")

    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    width = 0.8 / len(args.strategies)
    for k, strat in enumerate(args.strategies):
        ax.bar(
            [i + k * width for i in range(3)],
            [results[(label, strat)]["F"] for label in picks],
            width,
            label=strat,
        )
    ax.set_xticks([i + width * (len(args.strategies) - 1) / 2 for i in range(3)], list(picks))
    ax.set_ylabel("F")
    ax.set_title(f"Curriculum effectiveness, {args.dataset}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "effectiveness.png", dpi=100)
    print(f"\nplots saved under {out}/")
    print("\nF      " + "  ".join(f"{s:>6s}" for s in args.strategies))
    for label in picks:
        print(
            f"{label:6s} " + "  ".join(f"{results[(label, s)]['F']:6.3f}" for s in args.strategies)
        )
    return {f"{a}/{b}": v for (a, b), v in results.items()}


if __name__ == "__main__":
    main()
