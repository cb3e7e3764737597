"""neve quickstart: Split Fashion-MNIST on pretrained EfficientNet-Lite0 features.

Five experiences of two classes each. The images go once through the frozen
ImageNet EfficientNet-Lite0 (cached on disk), and each continual learner is
trained on the 1280-d features with Avalanche. The baseline is Avalanche's
``Naive`` on a linear head. Prints, for each method, the accuracy on each
experience's test set after each training experience, and the final stream
accuracy. Writes each method's accuracy-matrix heatmap (PNG, SVG), its matrix
and figures (JSON, CSV) and the methods' accuracy curves to
``outputs/quickstart-<dataset>/`` (git-ignored; ``--outputs`` to change).

    python examples/quickstart.py                     # Fashion-MNIST
    python examples/quickstart.py --dataset digits    # seconds, for a check
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive

from neve.benchmarks import LabelledTensorDataset, digits, fashion_mnist
from neve.benchmarks.results import (
    accuracy_matrix_of,
    export_results,
    save_accuracy_curves,
    save_accuracy_heatmap,
)
from neve.models import PretrainedClassifier, extract_features, pretrained_backbone
from neve.plugins import ClassifierAlignmentPlugin, PhaseProgressLogger
from neve.strategies import SLCA, AnalyticCIL


def feature_benchmark(dataset: str, device: str, seed: int, input_size: int):
    """Split benchmark (5 x 2 classes) over cached backbone features."""
    train, test = fashion_mnist() if dataset == "fashion_mnist" else digits(seed=seed)
    backbone = pretrained_backbone("efficientnet-lite0", input_size=input_size)
    feats = []
    for part in (train, test):
        x, y = extract_features(backbone, part, device=device)
        feats.append(LabelledTensorDataset(x, y))
    bm = nc_benchmark(
        feats[0], feats[1], n_experiences=5, task_labels=False, seed=seed
    )
    return bm, backbone.feature_dim


def naive_linear(feature_dim: int, num_classes: int, args, evaluator) -> Naive:
    """Baseline: Avalanche ``Naive`` fine-tuning of a linear head (Adam, lr 1e-3)."""
    head = torch.nn.Linear(feature_dim, num_classes)
    return Naive(
        model=head,
        optimizer=torch.optim.Adam(head.parameters(), lr=1e-3),
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=64,
        train_epochs=args.epochs,
        eval_mb_size=1024,
        device=args.device,
        evaluator=evaluator,
    )


def analytic(feature_dim: int, num_classes: int, args, evaluator):
    """ACIL / G-ACIL (neve): frozen features, 2048-unit random buffer, closed-form ridge head."""
    return AnalyticCIL(
        backbone=torch.nn.Identity(),
        feature_dim=feature_dim,
        buffer_size=2048,
        gamma=1.0,
        train_mb_size=1024,
        eval_mb_size=1024,
        device=args.device,
        evaluator=evaluator,
    )


def slca(feature_dim: int, num_classes: int, args, evaluator):
    """SLCA (neve): classifier alignment on the frozen features (SGD 0.01 head).

    The features here are fixed, so the model's ``features`` is ``nn.Identity``
    and the slow learner has no backbone to slow down; examples/slca.py and
    bench/slca.py fine-tune the backbone itself.
    """
    model = PretrainedClassifier(torch.nn.Identity(), num_classes=2, feature_dim=feature_dim)
    return SLCA(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
        train_mb_size=64,
        train_epochs=args.epochs,
        eval_mb_size=1024,
        device=args.device,
        evaluator=evaluator,
        alignment=ClassifierAlignmentPlugin(batch_size=64),
    )


METHODS: dict[str, Callable] = {"naive": naive_linear, "analytic": analytic, "slca": slca}
OUTPUTS = Path(__file__).resolve().parents[1] / "outputs"


def run(method: str, bm, feature_dim: int, args) -> list[dict]:
    """Train ``method`` on the stream; the results of ``eval`` after each training experience."""
    RNGManager.set_random_seeds(args.seed)
    evaluator = EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True), loggers=[PhaseProgressLogger()]
    )
    strategy = METHODS[method](feature_dim, bm.n_classes, args, evaluator)
    print(f"== {method}: " + ", ".join(str(e.classes_in_this_experience) for e in bm.train_stream))
    results = []
    for exp in bm.train_stream:
        strategy.train(exp)
        results.append(strategy.eval(bm.test_stream))
    return results


def table_of(results: list[dict]) -> list[list[float]]:
    """Row i: the accuracy on each experience after training i, then the stream accuracy."""
    return [[*accuracy_matrix_of([res])[0],
             res["Top1_Acc_Stream/eval_phase/test_stream/Task000"]] for res in results]


def write_outputs(runs: dict[str, list[dict]], bm, folder: Path) -> Path:
    """Each method's heatmap (PNG, SVG) and matrix with its figures (JSON, CSV), and the
    methods' accuracy curves, in ``folder``; figures over experiences weighted by test sizes."""
    labels = [",".join(map(str, sorted(e.classes_in_this_experience))) for e in bm.train_stream]
    sizes = [len(e.dataset) for e in bm.test_stream]
    matrices = {m: accuracy_matrix_of(results) for m, results in runs.items()}
    for method, acc in matrices.items():
        title = f"{method}: test accuracy (%), classes of each experience"
        save_accuracy_heatmap(acc, folder / f"{method}_accuracy", labels, title)
        export_results(acc, folder / method, sizes, labels)
    save_accuracy_curves({m: [acc] for m, acc in matrices.items()}, folder / "curves", labels,
                         sizes)
    return folder


def print_table(method: str, table: list[list[float]]) -> None:
    print(f"\n{method}: test accuracy (%) on each experience after training")
    print("after  " + " ".join(f" exp{j}" for j in range(5)) + "  stream")
    for i, row in enumerate(table):
        cells = " ".join(f"{100 * a:5.1f}" for a in row[:5])
        print(f"exp{i}   {cells}  {100 * row[5]:5.1f}")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=["fashion_mnist", "digits"], default="fashion_mnist")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--epochs", type=int, default=None, help="default: 1 (fashion_mnist), 20 (digits)"
    )
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument(
        "--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS)
    )
    parser.add_argument("--outputs", type=Path, default=None,
                        help="folder of the figures (default: outputs/quickstart-<dataset>)")
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = 1 if args.dataset == "fashion_mnist" else 20
    bm, feature_dim = feature_benchmark(args.dataset, args.device, args.seed, args.input_size)
    final = {}
    runs = {m: run(m, bm, feature_dim, args) for m in args.methods}
    for m, results in runs.items():
        table = table_of(results)
        print_table(m, table)
        final[m] = table[-1][5]
    folder = write_outputs(runs, bm, args.outputs or OUTPUTS / f"quickstart-{args.dataset}")
    print(f"\nheatmaps, tables and curves in {folder}/ (<method>_accuracy.png/.svg, "
          "<method>.json/_matrix.csv/_figures.csv, curves.png/.svg)")
    print("\nfinal stream accuracy: " + ", ".join(f"{m} {100 * a:.1f}%" for m, a in final.items()))
    return final


if __name__ == "__main__":
    main()
