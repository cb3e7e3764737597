"""Evaluation metrics under torch.distributed equal one process's (#14).

Avalanche 0.6.0 evaluates each process on its ``DistributedSampler`` shard of the
experience and does not reduce its metrics, so rank 0 (which logs) reported the
accuracy of half the test set; CurriculumEffectiveness summed the shards' counts,
which the sampler pads with repeated items. Two gloo processes run examples/
distributed.py's SLCA recipe (GlobalBatchPlugin, DDPPlugin), and Avalanche's
Naive with the same plugins, with and without WholeEvaluationPlugin, and evaluate
the test stream after each experience.
"""

import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive
from gloo_harness import run_on_processes
from test_distributed_methods import example

from neve.benchmarks import digits
from neve.models import PretrainedClassifier
from neve.plugins import (
    ClassifierAlignmentPlugin,
    CurriculumEffectiveness,
    DDPPlugin,
    GlobalBatchPlugin,
    WholeEvaluationPlugin,
)
from neve.strategies import SLCA

EXPERIENCES = 3


def evaluate(kind: str) -> dict:
    """``kind``: "slca", "naive_whole" (with WholeEvaluationPlugin) or "naive_sharded"."""
    train, test = digits(seed=0)
    bm = nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)
    sizes = [len(e.dataset) for e in bm.test_stream]
    model = PretrainedClassifier(example().backbone(0), num_classes=10, feature_dim=32)
    model.features.requires_grad_(False)
    metric = CurriculumEffectiveness()
    common = dict(
        model=model, optimizer=torch.optim.SGD(model.classifier.parameters(), lr=0.05),
        train_mb_size=16, train_epochs=1, eval_mb_size=50,
        evaluator=EvaluationPlugin(accuracy_metrics(experience=True, stream=True), metric,
                                   loggers=[]),
    )
    plugins = [GlobalBatchPlugin(seed=0), DDPPlugin()]
    if kind == "slca":
        strategy = SLCA(**common, plugins=plugins, alignment=ClassifierAlignmentPlugin(
            samples_per_class=16, epochs=1, seed=0))
    else:
        whole = [WholeEvaluationPlugin()] if kind == "naive_whole" else []
        strategy = Naive(**common, plugins=plugins + whole)
    stream = []
    for exp in bm.train_stream[:EXPERIENCES]:
        strategy.train(exp)
        results = strategy.eval(bm.test_stream)
        stream.append(results["Top1_Acc_Stream/eval_phase/test_stream/Task000"])
    per_exp = [results[f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{j:03d}"]
               for j in range(5)]
    return {"stream": torch.tensor(stream, dtype=torch.float64),
            "experiences": torch.tensor(per_exp, dtype=torch.float64),
            "matrix": torch.as_tensor(metric.accuracy_matrix("test"), dtype=torch.float64),
            "odd_sizes": torch.tensor([n % 2 for n in sizes])}


KINDS = ("slca", "naive_whole", "naive_sharded")


def on_process(rank: int, world: int) -> dict:
    return {f"{kind}/{k}": v for kind in KINDS for k, v in evaluate(kind).items()}


def test_metrics_on_two_processes_are_the_one_process_metrics(tmp_path):
    ranks = run_on_processes(on_process, tmp_path)
    for kind in KINDS:
        one = evaluate(kind)
        assert one["matrix"][0, 0] > 0.6, kind  # it learned: the comparison means something
        assert one["odd_sizes"].any()  # some experience's shards are padded by the sampler
        for rank, res in enumerate(ranks):
            differs = []
            for key, ref in one.items():
                got = res[f"{kind}/{key}"]
                assert got.shape == ref.shape, (kind, rank, key)
                if not torch.allclose(got, ref, rtol=0, atol=1e-12):
                    differs.append(key)
            if kind == "naive_sharded":  # the finding: Avalanche's metrics are per shard
                assert {"stream", "experiences", "matrix"} <= set(differs), (rank, differs)
            else:
                assert differs == [], (kind, rank, differs)
