"""SLCA bench: Split Fashion-MNIST (5 x 2 classes), EfficientNet-Lite0 fine-tuned at 32 px.

Methods, each over several seeds (class order and subset change with the seed):

* ``naive``: Avalanche ``Naive``, one learning rate for backbone and head (SGD 0.01,
  momentum 0.9, weight decay 5e-4, as the paper's head);
* ``naive_slow``: ``Naive`` + :class:`~neve.plugins.SlowLearnerPlugin` (backbone 0.01 x,
  batch-norm running statistics 0.01 x as fast: ``norm_stats="slow"``);
* ``slca``: :class:`~neve.strategies.SLCA` (slow learner + classifier alignment,
  training loss over the current experience's classes as the authors' code);
* ``slca_replay``: Avalanche ``Replay`` + both plugins (Replay's loss over all classes).

Images are resized to ``--input-size`` and normalised once (the model sees
preprocessed tensors); train and test sets are class-balanced subsets. Printed
JSON per method: last accuracy (all 10 test classes after the 5th experience),
average accuracy (mean over experiences of the accuracy on the test classes seen
so far, the paper's Inc-Acc), mean and std over seeds, train wall time, the
alignment step's wall time (feature pass + statistics + head re-training) and its
share of the training time (the share of the statistics alone, SLCA's step 2, and
of the head re-training, step 3, beside it), and the process's peak memory.

    nice -n 10 python bench/slca.py --quick      # small, minutes
    python bench/slca.py     # 500 train / 200 test images per class, 3 seeds: ~22 min on 2 cores
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import resource
import sys
import time

import numpy as np
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive, Replay

from neve.benchmarks import LabelledTensorDataset, class_balanced_subset, fashion_mnist
from neve.models import ImagePreprocess, PretrainedClassifier, pretrained_backbone
from neve.plugins import ClassifierAlignmentPlugin, SlowLearnerPlugin
from neve.strategies import SLCA

METHODS = ("naive", "naive_slow", "slca", "slca_replay")
STREAM = "Top1_Acc_Stream/eval_phase/test_stream/Task000"


def preprocessed(dataset, per_class: int, seed: int, input_size: int) -> LabelledTensorDataset:
    """Class-balanced subset, resized and normalised once: ``[N, 3, S, S]`` tensors."""
    subset = class_balanced_subset(dataset, per_class, seed=seed)
    prep = ImagePreprocess(input_size)
    x = torch.stack([subset[i][0] for i in range(len(subset))])
    y = torch.as_tensor(subset.targets).long()
    with torch.no_grad():
        x = torch.cat([prep(x[i : i + 512]) for i in range(0, len(x), 512)])
        x = x.expand(-1, 3, -1, -1).contiguous()
    return LabelledTensorDataset(x, y)


def build(method: str, backbone, args, device):
    model = PretrainedClassifier(copy.deepcopy(backbone), num_classes=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    common = dict(
        model=model,
        optimizer=optimizer,
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=args.batch_size,
        train_epochs=args.epochs,
        eval_mb_size=256,
        device=device,
        evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]),
    )
    align = dict(
        samples_per_class=args.samples_per_class,
        epochs=args.alignment_epochs,
        lr=0.01,
        temperature=0.1,
        covariance=args.covariance,
        batch_size=args.alignment_batch_size,
    )
    if method == "naive":
        return Naive(**common), None
    if method == "naive_slow":
        return Naive(plugins=[SlowLearnerPlugin(args.backbone_lr_scale)], **common), None
    if method == "slca":
        s = SLCA(
            slow_learner=SlowLearnerPlugin(args.backbone_lr_scale),
            alignment=ClassifierAlignmentPlugin(**align),
            **common,
        )
        return s, s.alignment
    alignment = ClassifierAlignmentPlugin(**align)
    plugins = [SlowLearnerPlugin(args.backbone_lr_scale), alignment]
    return Replay(mem_size=args.replay_memory, plugins=plugins, **common), alignment


def run(method: str, seed: int, backbone, train, test, args, device) -> dict:
    RNGManager.set_random_seeds(seed)
    bm = nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=seed)
    strategy, alignment = build(method, backbone, args, device)
    seen_acc, train_seconds = [], 0.0
    for k, exp in enumerate(bm.train_stream):
        start = time.perf_counter()
        strategy.train(exp)
        train_seconds += time.perf_counter() - start
        seen_acc.append(strategy.eval(bm.test_stream[: k + 1])[STREAM])
    out = {"last": seen_acc[-1], "average": float(np.mean(seen_acc)), "train_s": train_seconds}
    if alignment is not None:
        out["alignment_s"] = float(sum(alignment.alignment_seconds))
        out["statistics_s"] = float(sum(alignment.statistics_seconds))
    return out


def summarise(runs: list[dict]) -> dict:
    out = {}
    for key in runs[0]:
        values = np.array([r[key] for r in runs], dtype=float)
        out[key] = {"mean": round(float(values.mean()), 4), "std": round(float(values.std()), 4)}
    if "alignment_s" in runs[0]:
        share = [r["alignment_s"] / r["train_s"] for r in runs]
        out["alignment_share_of_train_time"] = round(float(np.mean(share)), 4)
        stats = [r["statistics_s"] / r["train_s"] for r in runs]
        out["of_which_statistics_share"] = round(float(np.mean(stats)), 4)
        out["of_which_head_retraining_share"] = round(float(np.mean(share) - np.mean(stats)), 4)
    out["per_seed_last"] = [round(r["last"], 4) for r in runs]
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small subsets, for a check")
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--backbone-lr-scale", type=float, default=0.01)
    parser.add_argument("--samples-per-class", type=int, default=256)
    parser.add_argument("--alignment-epochs", type=int, default=5)
    parser.add_argument("--alignment-batch-size", type=int, default=64)
    parser.add_argument("--covariance", default="full")
    parser.add_argument("--replay-memory", type=int, default=100)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_per_class, args.test_per_class, args.epochs = 20, 20, 2
        args.batch_size, args.replay_memory = 8, 20
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    wall = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the weights package prints a line
        backbone = pretrained_backbone("efficientnet-lite0", input_size=args.input_size)
    full_train, full_test = fashion_mnist()
    results: dict = {m: [] for m in args.methods}
    for seed in args.seeds:
        train = preprocessed(full_train, args.train_per_class, seed, args.input_size)
        test = preprocessed(full_test, args.test_per_class, seed, args.input_size)
        for method in args.methods:
            results[method].append(run(method, seed, backbone, train, test, args, device))
            print(f"seed {seed} {method}: {results[method][-1]}", file=sys.stderr, flush=True)
    report = {
        "benchmark": "Split Fashion-MNIST 5x2, class-balanced subsets",
        "backbone": f"efficientnet-lite0 (ImageNet), fine-tuned at {args.input_size} px",
        "settings": {k: v for k, v in vars(args).items() if k != "methods"},
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "methods": {m: summarise(r) for m, r in results.items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "wall_s": round(time.perf_counter() - wall, 1),
    }
    if device.type == "cuda":
        report["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
