"""NearestPrototype in Avalanche (issue #11.3, #11.7) and bad inputs of the instance area (#12)."""

import numpy as np
import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import (
    EvaluationPlugin,
    EWCPlugin,
    GEMPlugin,
    LRSchedulerPlugin,
    LwFPlugin,
    MASPlugin,
    ReplayPlugin,
    SynapticIntelligencePlugin,
)
from avalanche.training.plugins.evaluation import default_evaluator
from bad_input import assert_refused

from neve.benchmarks import episode_benchmark
from neve.strategies import NearestPrototype


def _features(n_per_class=12, classes=6, dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centres[y] + 0.9 * torch.randn(len(y), dim, generator=g)
    perm = torch.randperm(len(y), generator=g)
    return x[perm], y[perm]


def _class_split(x, y, sets):
    """A benchmark whose experience k holds classes 2k, 2k+1 (sorted by label)."""
    order = torch.argsort(y, stable=True)
    return episode_benchmark(x[order], y[order], x, y, sets)


def _nearest_mean_predictions(seen_x, seen_y, x):
    """Independent nearest class mean (numpy, L2-normalised) over the classes seen."""
    unit = seen_x / np.linalg.norm(seen_x, axis=1, keepdims=True)
    classes = np.unique(seen_y)
    means = np.stack([unit[seen_y == c].mean(0) for c in classes])
    q = x / np.linalg.norm(x, axis=1, keepdims=True)
    return classes[((q[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)]


class _Batches(SupervisedPlugin):
    """Records each training mini-batch (inputs and labels) in order."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def after_training_iteration(self, strategy, **kwargs):
        self.batches.append((strategy.mb_x.numpy().copy(), strategy.mb_y.numpy().copy()))


def test_minibatch_and_epoch_training_accuracy_match_running_nearest_means():
    x, y = _features()
    bm = _class_split(x, y, 3)
    evaluator = EvaluationPlugin(accuracy_metrics(epoch=True, minibatch=True), loggers=[])
    record = _Batches()
    strategy = NearestPrototype(num_classes=6, feature_dim=5, train_mb_size=5,
                                evaluator=evaluator, plugins=[record])
    expected_epoch = []
    for exp in bm.train_stream:
        first = len(record.batches)
        strategy.train(exp)
        correct = total = 0
        for k in range(first, len(record.batches)):
            # the means after adding batch k: every item seen up to and including it
            seen_x = np.concatenate([b[0] for b in record.batches[: k + 1]])
            seen_y = np.concatenate([b[1] for b in record.batches[: k + 1]])
            bx, by = record.batches[k]
            correct += int((_nearest_mean_predictions(seen_x, seen_y, bx) == by).sum())
            total += len(by)
        expected_epoch.append(correct / total)
    expected_mb = []
    for k, (bx, by) in enumerate(record.batches):
        seen_x = np.concatenate([b[0] for b in record.batches[: k + 1]])
        seen_y = np.concatenate([b[1] for b in record.batches[: k + 1]])
        expected_mb.append(float((_nearest_mean_predictions(seen_x, seen_y, bx) == by).mean()))
    metrics = strategy.evaluator.get_all_metrics()
    epoch = metrics[next(k for k in metrics if k.startswith("Top1_Acc_Epoch/train_phase"))][1]
    mb = metrics[next(k for k in metrics if k.startswith("Top1_Acc_MB/train_phase"))][1]
    assert len(record.batches) == 3 * 5  # 24 items per experience, 5 per batch
    assert epoch == pytest.approx(expected_epoch)
    assert mb == pytest.approx(expected_mb)
    assert min(expected_mb) < 1.0


def test_one_minibatch_experiences_training_accuracy_equals_nearest_mean_on_seen_data():
    x, y = _features()
    bm = _class_split(x, y, 3)
    evaluator = EvaluationPlugin(accuracy_metrics(epoch=True, minibatch=True), loggers=[])
    strategy = NearestPrototype(num_classes=6, feature_dim=5, train_mb_size=1000,
                                evaluator=evaluator)
    seen_x, seen_y, expected = [], [], []
    for exp in bm.train_stream:
        strategy.train(exp)
        seen_x.append(torch.stack([i[0] for i in exp.dataset]).numpy())
        seen_y.append(np.array([int(i[1]) for i in exp.dataset]))
        pred = _nearest_mean_predictions(np.concatenate(seen_x), np.concatenate(seen_y),
                                         seen_x[-1])
        expected.append(float((pred == seen_y[-1]).mean()))
    metrics = strategy.evaluator.get_all_metrics()
    epoch = metrics[next(k for k in metrics if k.startswith("Top1_Acc_Epoch/train_phase"))][1]
    mb = metrics[next(k for k in metrics if k.startswith("Top1_Acc_MB/train_phase"))][1]
    assert epoch == pytest.approx(expected)
    assert mb == pytest.approx(expected)
    assert min(expected) < 1.0  # the data is not trivially separable


def test_default_evaluator_runs_with_nearest_prototype():
    x, y = _features()
    bm = _class_split(x, y, 3)
    strategy = NearestPrototype(num_classes=6, feature_dim=5, train_mb_size=7,
                                evaluator=default_evaluator())
    for exp in bm.train_stream:
        strategy.train(exp)
    results = strategy.eval(bm.test_stream)
    train_acc = [v for k, v in strategy.evaluator.get_last_metrics().items()
                 if k.startswith("Top1_Acc_Epoch/train_phase")]
    assert len(train_acc) == 1 and 0.0 < train_acc[0] <= 1.0
    assert 0.0 < results["Top1_Acc_Stream/eval_phase/test_stream"] <= 1.0


class _AfterUpdate(SupervisedPlugin):
    def after_update(self, strategy, **kwargs):
        pass


def _gradient_plugins():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return [
        EWCPlugin(ewc_lambda=1.0),
        LwFPlugin(),
        SynapticIntelligencePlugin(si_lambda=1.0),
        MASPlugin(),
        GEMPlugin(patterns_per_experience=2, memory_strength=0.5),
        LRSchedulerPlugin(torch.optim.lr_scheduler.StepLR(optimizer, 1)),
        _AfterUpdate(),
    ]


@pytest.mark.parametrize("plugin", _gradient_plugins(), ids=lambda p: type(p).__name__)
def test_gradient_plugins_are_refused_by_name(plugin):
    with pytest.raises(ValueError, match=type(plugin).__name__):
        NearestPrototype(num_classes=6, feature_dim=5, plugins=[plugin])
    # added later, the plugin is refused at train, before anything is learned
    x, y = _features()
    strategy = NearestPrototype(num_classes=6, feature_dim=5)
    strategy.plugins.append(plugin)
    assert_refused(lambda: strategy.train(_class_split(x, y, 3).train_stream[0]), "plugins",
                   state=lambda: (strategy.class_sums, strategy.class_counts,
                                  strategy.model.state_dict()))


def test_plugins_without_gradients_are_accepted():
    x, y = _features()
    replay = ReplayPlugin(mem_size=10)
    strategy = NearestPrototype(num_classes=6, feature_dim=5, plugins=[replay],
                                evaluator=default_evaluator())
    for exp in _class_split(x, y, 3).train_stream:
        strategy.train(exp)
    assert int(strategy.class_counts.sum()) > len(y)  # replayed items are counted again
    assert len(replay.storage_policy.buffer) == 10
