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

from neve.benchmarks import (
    BackboneFeatures,
    LabelledTensorDataset,
    Occlusion,
    PixelNoise,
    cfsl_episodes,
    class_balanced_subset,
    digits,
    encode_episodes,
    episode_benchmark,
    fashion_mnist,
    instance_test_episodes,
    make_corruption,
    mean_confidence_interval,
    paired_conditions,
    run_episodes,
)
from neve.benchmarks.datasets import balanced_indices
from neve.strategies import (
    NearestPrototype,
    RecentSetsBuffer,
    paper_replay_settings,
    pretrain_tune,
)


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


def test_plugins_without_gradients_are_accepted_and_replay_is_refused():
    x, y = _features()

    class _Counter(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def after_training_exp(self, strategy, **kwargs):
            self.calls += 1

    counter = _Counter()
    strategy = NearestPrototype(num_classes=6, feature_dim=5, plugins=[counter],
                                evaluator=default_evaluator())
    for exp in _class_split(x, y, 3).train_stream:
        strategy.train(exp)
    assert counter.calls == 3 and int(strategy.class_counts.sum()) == len(y)
    # replayed items would be counted twice in the class means: refused by name
    assert_refused(lambda: NearestPrototype(num_classes=6, feature_dim=5,
                                            plugins=[ReplayPlugin(mem_size=10)]), "ReplayPlugin")


# ----------------------------------------------------------------------------- bad inputs
_X = torch.rand(8, 1, 4, 4)
_Y = torch.arange(8) % 4


def _labelled(n=30):
    return LabelledTensorDataset(torch.rand(n, 1, 8, 8), torch.arange(n) % 3)


class _Backbone(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.transform = lambda x: x

    def forward(self, x):
        return x.flatten(1)


def _tiny_episodes():
    return instance_test_episodes(_labelled(), 1, 4, 2, seed=0)


NO_DEVICE = "cuda:99"  # past the last GPU, or no GPU at all

BAD_CALLS = {
    # benchmarks.episodes
    "mci_nan": (lambda: mean_confidence_interval([0.5, float("nan")]), "values"),
    "mci_inf": (lambda: mean_confidence_interval([0.5, float("inf"), 0.2]), "values"),
    "mci_str": (lambda: mean_confidence_interval(["a", "b"]), "values"),
    "mci_level": (lambda: mean_confidence_interval([0.5, 0.6], level=1.5), "level"),
    "run_factory": (lambda: run_episodes(5, []), "make_strategy"),
    "run_total": (lambda: run_episodes(lambda: None, [], total=-1), "total"),
    "paired_not_iterable": (lambda: list(paired_conditions(a=5)), "a"),
    # benchmarks.instance
    "ite_seed_str": (lambda: instance_test_episodes(_labelled(), 1, 4, 2, seed="x"), "seed"),
    "ite_seed_neg": (lambda: instance_test_episodes(_labelled(), 1, 4, 2, seed=-1), "seed"),
    "ite_severity_str": (lambda: instance_test_episodes(_labelled(), 1, 4, 2, "noise", "high"),
                         "severity"),
    "ite_severity_unused": (lambda: instance_test_episodes(_labelled(), 1, 4, 2, None, 0.3),
                            "severity"),
    "ite_episodes_float": (lambda: instance_test_episodes(_labelled(), 2.5, 4, 2), "n_episodes"),
    "ite_no_targets": (lambda: instance_test_episodes([(torch.zeros(1, 2, 2), 0)], 1, 1, 1),
                       "dataset"),
    "ite_float_targets": (lambda: instance_test_episodes(
        LabelledTensorDataset(torch.rand(4, 1, 2, 2), torch.tensor([0.0, 0.5, 1.0, 1.5])), 1, 2, 1),
        "targets"),
    "cfsl_query": (lambda: cfsl_episodes(_labelled(), 1, 2, 2, 1, query_shots=0), "query_shots"),
    "cfsl_seed": (lambda: cfsl_episodes(_labelled(), 1, 2, 2, 1, seed="x"), "seed"),
    "cfsl_severity": (lambda: cfsl_episodes(_labelled(), 1, 2, 2, 1, severity=0.1),
                      "severity"),
    "eb_sets_zero": (lambda: episode_benchmark(_X, _Y, _X, _Y, 0), "support_sets"),
    "eb_sets_str": (lambda: episode_benchmark(_X, _Y, _X, _Y, "2"), "support_sets"),
    "eb_float_y": (lambda: episode_benchmark(_X, _Y + 0.5, _X, _Y, 2), "support_y"),
    "eb_query_len": (lambda: episode_benchmark(_X, _Y, _X[:3], _Y, 2), "query_x"),
    "eb_support_x": (lambda: episode_benchmark(_X.numpy(), _Y, _X, _Y, 2), "support_x"),
    # benchmarks.corruptions
    "occ_str": (lambda: Occlusion("high"), "radius_fraction"),
    "occ_nan": (lambda: Occlusion(float("nan")), "radius_fraction"),
    "occ_seed": (lambda: Occlusion(0.1, seed="x"), "seed"),
    "occ_generator": (lambda: Occlusion(0.1, generator=5), "generator"),
    "noise_big": (lambda: PixelNoise(1.5), "fraction"),
    "noise_seed_neg": (lambda: PixelNoise(0.1, seed=-1), "seed"),
    "mc_name": (lambda: make_corruption("blur", 0.1), "corruption"),
    "mc_severity": (lambda: make_corruption("noise", "high"), "severity"),
    "mc_unused": (lambda: make_corruption(None, 0.5), "severity"),
    # benchmarks.episode_features
    "bf_device": (lambda: BackboneFeatures(_Backbone(), device=NO_DEVICE), "device"),
    "bf_device_name": (lambda: BackboneFeatures(_Backbone(), device="gpu"), "device"),
    "bf_batch": (lambda: BackboneFeatures(_Backbone(), batch_size=0), "batch_size"),
    "bf_items": (lambda: BackboneFeatures(_Backbone(), max_items=-1), "max_items"),
    "bf_transform": (lambda: BackboneFeatures(torch.nn.Flatten()), "backbone"),
    "ee_device": (lambda: next(encode_episodes(_tiny_episodes(), _Backbone(), device=NO_DEVICE)),
                  "device"),
    "ee_batch": (lambda: next(encode_episodes(_tiny_episodes(), _Backbone(), batch_size=0)),
                 "batch_size"),
    # benchmarks.datasets
    "digits_seed_neg": (lambda: digits(seed=-1), "seed"),
    "digits_seed_str": (lambda: digits(seed="x"), "seed"),
    "digits_fraction": (lambda: digits(test_fraction="x"), "test_fraction"),
    "fmnist_download": (lambda: fashion_mnist(download="yes"), "download"),
    "fmnist_root": (lambda: fashion_mnist(root=5), "root"),
    "fmnist_transform": (lambda: fashion_mnist(transform=5), "transform"),
    "cbs_per_class": (lambda: class_balanced_subset(_labelled(), 2.5), "per_class"),
    "cbs_seed": (lambda: class_balanced_subset(_labelled(), 2, seed="x"), "seed"),
    "cbs_no_targets": (lambda: class_balanced_subset([1, 2], 2), "dataset"),
    "bi_targets": (lambda: balanced_indices(torch.tensor([0.5, 1.0]), 1), "targets"),
    "bi_per_class": (lambda: balanced_indices(_Y, 0), "per_class"),
    "bi_classes": (lambda: balanced_indices(_Y, 1, classes=[0, 9]), "classes"),
    "bi_seed": (lambda: balanced_indices(_Y, 1, seed=-1), "seed"),
    "ltd_float": (lambda: LabelledTensorDataset(_X, _Y + 0.5), "targets"),
    "ltd_data": (lambda: LabelledTensorDataset(_X.numpy(), _Y), "data"),
    "ltd_length": (lambda: LabelledTensorDataset(_X[:3], _Y), "targets"),
    # strategies
    "pt_lr_nan": (lambda: pretrain_tune(4, 3, lr=float("nan")), "lr"),
    "pt_lr_neg": (lambda: pretrain_tune(4, 3, lr=-1), "lr"),
    "pt_lr_str": (lambda: pretrain_tune(4, 3, lr="0.1"), "lr"),
    "pt_classes": (lambda: pretrain_tune(0, 3), "num_classes"),
    "pt_dim": (lambda: pretrain_tune(4, "x"), "feature_dim"),
    "pt_steps": (lambda: pretrain_tune(4, 3, steps_per_set=2.5), "steps_per_set"),
    "pt_replay": (lambda: pretrain_tune(4, 3, replay_sets=-1), "replay_sets"),
    "pt_samples": (lambda: pretrain_tune(4, 3, replay_sets=1, replay_samples=0),
                   "replay_samples"),
    "pt_train_mb": (lambda: pretrain_tune(4, 3, train_mb_size=0), "train_mb_size"),
    "pt_eval_mb": (lambda: pretrain_tune(4, 3, eval_mb_size=-1), "eval_mb_size"),
    "pt_device": (lambda: pretrain_tune(4, 3, device=NO_DEVICE), "device"),
    "pt_eval_every": (lambda: pretrain_tune(4, 3, eval_every=-2), "eval_every"),
    "np_train_mb": (lambda: NearestPrototype(num_classes=4, train_mb_size=0), "train_mb_size"),
    "np_eval_mb": (lambda: NearestPrototype(num_classes=4, eval_mb_size=-1), "eval_mb_size"),
    "np_device": (lambda: NearestPrototype(num_classes=4, device=NO_DEVICE), "device"),
    "np_classes": (lambda: NearestPrototype(num_classes="x"), "num_classes"),
    "np_normalize": (lambda: NearestPrototype(num_classes=4, normalize="yes"), "normalize"),
    "rsb_sets": (lambda: RecentSetsBuffer(0), "max_sets"),
    "rsb_sets_float": (lambda: RecentSetsBuffer(2.5), "max_sets"),
    "rsb_size": (lambda: RecentSetsBuffer(2, max_size=0), "max_size"),
    "prs_zero": (lambda: paper_replay_settings(0), "support_sets"),
    "prs_str": (lambda: paper_replay_settings("4"), "support_sets"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_input_is_refused_by_name(case):
    call, argument = BAD_CALLS[case]
    assert_refused(call, argument)


def _trained_prototype():
    x, y = _features()
    strategy = NearestPrototype(num_classes=6, feature_dim=5, train_mb_size=4)
    strategy.train(_class_split(x, y, 3).train_stream[0])
    return strategy


def _bad_experience(kind):
    x, y = _features()
    x, y = x[:12], y[:12] % 4
    if kind == "empty":
        x, y = x[:0], y[:0]
    elif kind == "label":
        y = y.clone()
        y[7] = 6
    elif kind == "nan":
        x = x.clone()
        x[9, 2] = float("nan")  # in the third mini-batch: the first two are fine
    elif kind == "dim":
        x = torch.cat([x, x[:, :1]], dim=1)
    return episode_benchmark(x, y, x, y, 1).train_stream[0]


@pytest.mark.parametrize("kind", ["empty", "label", "nan", "dim"])
def test_nearest_prototype_refuses_a_bad_experience_unchanged(kind):
    strategy = _trained_prototype()
    experience = _bad_experience(kind)
    assert_refused(lambda: strategy.train(experience), "experiences",
                   state=lambda: (strategy.class_sums, strategy.class_counts,
                                  strategy.model.state_dict()))
    # and it still learns a good experience afterwards, counted once
    before = strategy.class_counts.sum().item()
    strategy.train(_bad_experience("good"))
    assert strategy.class_counts.sum().item() == before + 12
