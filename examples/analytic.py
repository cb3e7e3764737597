"""Analytic class-incremental learning (ACIL / G-ACIL) with neve, three ways.

1. ``AnalyticCIL`` on Split Fashion-MNIST (5 x 2 classes) over cached
   EfficientNet-Lite0 features (``nn.Identity()`` backbone), and the joint
   closed-form solution on all data at once, which it equals.
2. The same learner on the online Si-Blurry stream (generalized CIL: classes
   recur across tasks, task sizes are uneven), mini-batches of 1 sample per
   update in experiences of 50.
3. ``AnalyticHeadPlugin`` on Avalanche's ``Naive``: the gradient-trained model's
   ``features`` sub-module feeds a closed-form head that answers evaluation.

    python examples/analytic.py                    # Fashion-MNIST (cached features)
    python examples/analytic.py --dataset digits   # small and quick
"""

from __future__ import annotations

import argparse

import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive
from torch import nn

from neve.benchmarks import (
    LabelledTensorDataset,
    class_balanced_subset,
    digits,
    fashion_mnist,
    si_blurry_benchmark,
)
from neve.models import PretrainedClassifier, extract_features, pretrained_backbone
from neve.models.ridge import joint_ridge_solution
from neve.plugins import AnalyticHeadPlugin, PhaseProgressLogger
from neve.strategies import AnalyticCIL

STREAM_ACC = "Top1_Acc_Stream/eval_phase/test_stream/Task000"


def features(dataset: str, device: str):
    train, test = fashion_mnist() if dataset == "fashion_mnist" else digits(seed=0)
    backbone = pretrained_backbone("efficientnet-lite0", input_size=64)
    out = [
        LabelledTensorDataset(*extract_features(backbone, d, device=device))
        for d in (train, test)
    ]
    return out[0], out[1], backbone.feature_dim


def evaluator() -> EvaluationPlugin:
    return EvaluationPlugin(accuracy_metrics(stream=True), loggers=[PhaseProgressLogger()])


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=["fashion_mnist", "digits"], default="fashion_mnist")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--buffer-size", type=int, default=2048)
    parser.add_argument("--gamma", type=float, default=1.0)
    args = parser.parse_args(argv)
    train, test, dim = features(args.dataset, args.device)
    results = {}

    # 1. class-incremental stream, compared with the joint solution
    bm = nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)
    acil = AnalyticCIL(backbone=nn.Identity(), feature_dim=dim,
                       buffer_size=args.buffer_size, gamma=args.gamma,
                       train_mb_size=1024, eval_mb_size=1024, device=args.device,
                       evaluator=evaluator())
    for exp in bm.train_stream:
        acil.train(exp)
        acc = acil.eval(bm.test_stream)[STREAM_ACC]
        print(f"AnalyticCIL after experience {exp.current_experience}: {100 * acc:.1f}%")
    results["analytic_cil"] = acc
    with torch.no_grad():
        buffer = acil.model.buffer
        w = joint_ridge_solution(buffer(train.data.to(args.device)),
                                 train.targets.to(args.device), args.gamma)
        pred = (buffer(test.data.to(args.device)) @ w).argmax(1).cpu()
    results["joint_closed_form"] = float((pred == test.targets).double().mean())
    rel = float((acil.head.weight - w).norm() / w.norm())
    print(f"joint solution on all data: {100 * results['joint_closed_form']:.1f}% "
          f"(relative weight difference {rel:.1e})")

    # 2. online Si-Blurry stream (mini-batches of 1)
    small = class_balanced_subset(train, per_class=100, seed=0)
    small = LabelledTensorDataset(train.data[small.indices], small.targets)
    blurry = si_blurry_benchmark(small, test, n_tasks=5, seed=0, online=True,
                                 experience_size=50)
    online = AnalyticCIL(backbone=nn.Identity(), feature_dim=dim,
                         buffer_size=args.buffer_size, gamma=args.gamma,
                         train_mb_size=1, eval_mb_size=1024, device=args.device,
                         evaluator=evaluator())
    for exp in blurry.train_stream:
        online.train(exp)
    results["online_si_blurry"] = online.eval(blurry.test_stream)[STREAM_ACC]
    print(f"online Si-Blurry ({len(small)} samples, batch 1): "
          f"{100 * results['online_si_blurry']:.1f}%")

    # 3. the plugin on Naive; PretrainedClassifier meets the contract (.features)
    torch.manual_seed(0)
    model = PretrainedClassifier(nn.Identity(), num_classes=10, feature_dim=dim)
    plugin = AnalyticHeadPlugin(buffer_size=args.buffer_size, gamma=args.gamma)
    naive = Naive(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
                  train_mb_size=64, eval_mb_size=1024, device=args.device, plugins=[plugin],
                  evaluator=evaluator())
    for exp in bm.train_stream:
        naive.train(exp)
    results["naive_with_analytic_head"] = naive.eval(bm.test_stream)[STREAM_ACC]
    print(f"Naive + AnalyticHeadPlugin: {100 * results['naive_with_analytic_head']:.1f}%")
    return results


if __name__ == "__main__":
    main()
