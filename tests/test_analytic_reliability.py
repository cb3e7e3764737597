"""ACIL / G-ACIL reliability and composition (issues #11, #12): refusals leave state as it was."""

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.training import JointTraining, Naive
from avalanche.training.plugins import (
    AGEMPlugin,
    EWCPlugin,
    LwFPlugin,
    MASPlugin,
    ReplayPlugin,
    SupervisedPlugin,
    SynapticIntelligencePlugin,
)
from bad_input import assert_refused
from conftest import silent_evaluator
from torch import nn
from torch.utils.data import DataLoader

from neve.benchmarks import LabelledTensorDataset, digits
from neve.models import AnalyticClassifier, BufferLayer, IncrementalRidge
from neve.plugins import AnalyticHeadPlugin
from neve.strategies import AnalyticCIL


def lstsq_ridge(x: np.ndarray, labels: np.ndarray, gamma: float, classes: int) -> np.ndarray:
    """Ridge solution by numpy lstsq on the augmented system [X; sqrt(gamma) I]."""
    y = np.eye(classes)[labels]
    a = np.vstack([x, np.sqrt(gamma) * np.eye(x.shape[1])])
    b = np.vstack([y, np.zeros((x.shape[1], classes))])
    return np.linalg.lstsq(a, b, rcond=None)[0]


def rel_err(w: torch.Tensor, ref: np.ndarray) -> float:
    w = w.detach().double().numpy()
    assert w.shape == ref.shape
    return float(np.linalg.norm(w - ref) / np.linalg.norm(ref))


def tensors(dataset):
    return torch.stack([dataset[i][0] for i in range(len(dataset))]), torch.as_tensor(
        [int(dataset[i][1]) for i in range(len(dataset))]
    )


@pytest.fixture(scope="module")
def bench():
    train, test = digits(seed=0)
    train = LabelledTensorDataset(train.data.flatten(1), train.targets)
    test = LabelledTensorDataset(test.data.flatten(1), test.targets)
    return train, test, nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)


def state(module: nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}


def analytic(**kwargs) -> AnalyticCIL:
    options = dict(backbone=nn.Identity(), feature_dim=64, buffer_size=64, gamma=1.0,
                   train_mb_size=16, evaluator=silent_evaluator(stream=True))
    options.update(kwargs)
    return AnalyticCIL(**options)


class FrozenNet(nn.Module):
    def __init__(self, trainable: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Linear(64, 32), nn.ReLU())
        self.classifier = nn.Linear(32, 10)
        for p in self.features.parameters():
            p.requires_grad_(trainable)

    def forward(self, x):
        return self.classifier(self.features(x))


def fitted_reference(model, plugin, dataset, gamma):
    x, y = tensors(dataset)
    with torch.no_grad():
        feats = plugin.buffer(model.features(x).double()).numpy()
    return lstsq_ridge(feats, y.numpy(), gamma, int(y.max()) + 1)


# ------------------------------------------------------------------ issue 11, finding 1
def test_plugin_with_joint_training_fits_the_whole_joint_set(bench):
    train, _, bm = bench
    model = FrozenNet()
    plugin = AnalyticHeadPlugin(buffer_size=96, gamma=0.5, seed=2)
    strategy = JointTraining(model=model, optimizer=torch.optim.SGD(
        model.classifier.parameters(), lr=0.01), criterion=nn.CrossEntropyLoss(),
        train_mb_size=64, train_epochs=1,
        eval_mb_size=256, plugins=[plugin], evaluator=silent_evaluator(stream=True))
    strategy.train(bm.train_stream)
    assert int(plugin.head.num_seen) == len(train)
    assert rel_err(plugin.head.weight, fitted_reference(model, plugin, train, 0.5)) <= 1e-8
    acc = strategy.eval(bm.test_stream)["Top1_Acc_Stream/eval_phase/test_stream/Task000"]
    assert acc > 0.8


# ------------------------------------------------------------------ issue 11, finding 7
@pytest.mark.parametrize("make", [
    lambda: EWCPlugin(ewc_lambda=1.0), lambda: LwFPlugin(), lambda: SynapticIntelligencePlugin(
        si_lambda=1.0), lambda: MASPlugin(), lambda: AGEMPlugin(10, 10)])
def test_gradient_plugins_are_refused_by_name(make):
    plugin = make()
    assert_refused(lambda: analytic(plugins=[plugin]), type(plugin).__name__)


def test_plugins_without_gradient_callbacks_are_accepted(bench):
    class Counter(SupervisedPlugin):
        calls = 0

        def after_training_exp(self, strategy, **kwargs):
            Counter.calls += 1

    strategy = analytic(plugins=[Counter()])
    strategy.train(bench[2].train_stream[0])
    assert Counter.calls == 1


# ------------------------------------------------------------------ issue 11, finding 8
def test_plugin_warns_when_the_features_it_reads_are_trained(bench):
    _, _, bm = bench
    for trainable in (True, False):
        model = FrozenNet(trainable)
        strategy = Naive(model=model, optimizer=torch.optim.SGD(
            [p for p in model.parameters() if p.requires_grad], lr=0.01), train_mb_size=64,
            plugins=[AnalyticHeadPlugin(32)], evaluator=silent_evaluator(stream=True))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            strategy.train(bm.train_stream[0])
        stale = [w for w in caught if "trainable" in str(w.message)]
        assert bool(stale) == trainable


# ------------------------------------------------------------------ issue 11, finding 10
def test_replay_is_refused_and_a_replaced_dataloader_rolls_back(bench):
    train, _, bm = bench
    assert_refused(lambda: analytic(plugins=[ReplayPlugin(mem_size=50)]), "ReplayPlugin")

    class Doubling(SupervisedPlugin):
        def before_training_exp(self, strategy, **kwargs):
            data = strategy.adapted_dataset
            strategy.dataloader = DataLoader(torch.utils.data.ConcatDataset([data, data]),
                                             batch_size=16)

    strategy = analytic()
    strategy.train(bm.train_stream[0])
    strategy.plugins.append(Doubling())
    assert_refused(lambda: strategy.train(bm.train_stream[1]), "experience",
                   state=lambda: strategy.model.state_dict())
    strategy.plugins.pop()
    for exp in bm.train_stream[1:]:
        strategy.train(exp)
    x = strategy.model.buffer(train.data.double()).numpy()
    ref = lstsq_ridge(x, train.targets.numpy(), 1.0, 10)
    assert rel_err(strategy.head.weight, ref) <= 1e-8


# ------------------------------------------------------------------ issue 12, finding 1
def with_nan(exp):
    x, y = tensors(exp.dataset)
    x[-1, 3] = float("nan")
    return LabelledTensorDataset(x, y)


def test_an_experience_with_a_nan_is_learned_not_at_all(bench):
    train, test, bm = bench
    strategy = analytic()
    strategy.train(bm.train_stream[0])
    nan_data = with_nan(bm.train_stream[1])
    bad = nc_benchmark(nan_data, nan_data, n_experiences=1, task_labels=False, seed=0)
    assert_refused(lambda: strategy.train(bad.train_stream[0]), "NaN",
                   state=lambda: strategy.model.state_dict())
    for exp in bm.train_stream[1:]:
        strategy.train(exp)
    assert int(strategy.head.num_seen) == len(train)
    x = strategy.model.buffer(train.data.double()).numpy()
    assert rel_err(strategy.head.weight, lstsq_ridge(x, train.targets.numpy(), 1.0, 10)) <= 1e-8


def test_plugin_learns_an_experience_with_a_nan_not_at_all(bench):
    _, test, bm = bench
    model = FrozenNet()
    plugin = AnalyticHeadPlugin(32)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.classifier.parameters(),
                     lr=0.01), train_mb_size=64, plugins=[plugin],
                     evaluator=silent_evaluator(stream=True))
    strategy.train(bm.train_stream[0])
    nan_data = with_nan(bm.train_stream[1])
    bad = nc_benchmark(nan_data, nan_data, n_experiences=1, task_labels=False, seed=0)
    assert_refused(lambda: strategy.train(bad.train_stream[0]), "NaN", state=plugin.state_dict)
    # the first experience refused also leaves no head at all
    fresh = AnalyticHeadPlugin(32)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.classifier.parameters(),
                     lr=0.01), train_mb_size=64, plugins=[fresh],
                     evaluator=silent_evaluator(stream=True))
    with pytest.raises(ValueError, match="NaN"):
        strategy.train(bad.train_stream[0])
    assert fresh.head is None and fresh.state_dict() == {}


# ------------------------------------------------------------------ issue 12, finding 2
def test_load_state_dict_of_another_size_changes_nothing():
    src = IncrementalRidge(5)
    src.partial_fit(torch.rand(6, 5, dtype=torch.float64), torch.arange(6) % 2)
    dst = IncrementalRidge(4)
    assert_refused(lambda: dst.load_state_dict(src.state_dict()), "in_features",
                   state=dst.state_dict)
    dst.partial_fit(torch.rand(3, 4, dtype=torch.float64), torch.arange(3))
    assert dst.num_classes == 3 and dst.gram.shape == (4, 4)


# ------------------------------------------------------------------ issue 12, findings 3, 10
def features(scale: float, rank_deficient: bool = False):
    gen = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(300, 40, generator=gen, dtype=torch.float64))
    if rank_deficient:
        x[:, 20:] = x[:, :20]
    return x * scale, torch.randint(0, 4, (300,), generator=gen)


@pytest.mark.parametrize("scale,gamma,deficient", [
    (1e6, 1.0, False), (1e9, 1.0, False), (1.0, 1e-12, True)])
def test_woodbury_refuses_badly_scaled_inputs(scale, gamma, deficient):
    x, y = features(scale, deficient)
    rls = IncrementalRidge(40, gamma, method="woodbury")
    if gamma == 1.0:
        rls.partial_fit(x[:2] / scale, y[:2])  # a well-scaled start
    for start in range(0, 300, 50):
        assert_refused(lambda s=start: rls.partial_fit(x[s:s + 50], y[s:s + 50]), "woodbury",
                       state=rls.state_dict)


def test_woodbury_within_its_range_equals_lstsq():
    x, y = features(1.0)
    rls = IncrementalRidge(40, 1.0, method="woodbury")
    for start in range(0, 300, 50):
        rls.partial_fit(x[start:start + 50], y[start:start + 50])
    assert rel_err(rls.weight, lstsq_ridge(x.numpy(), y.numpy(), 1.0, 4)) <= 1e-8


def test_accumulate_refuses_overflow_at_partial_fit_and_keeps_its_state():
    x, y = features(1.0)
    rls = IncrementalRidge(40, 1.0)
    rls.partial_fit(x[:100], y[:100])
    assert_refused(lambda: rls.partial_fit(x[100:150] * 1e160, y[100:150]), "overflow",
                   state=rls.state_dict)
    rls.partial_fit(x[100:], y[100:])
    assert rel_err(rls.weight, lstsq_ridge(x.numpy(), y.numpy(), 1.0, 4)) <= 1e-8
    # exact far from 1 as well (the default solver)
    big = IncrementalRidge(40, 1.0).partial_fit(x * 1e100, y)
    ref = lstsq_ridge(x.numpy() * 1e100, y.numpy(), 1.0, 4)
    assert rel_err(big.weight, ref) <= 1e-8


def test_rank_deficient_with_tiny_gamma_is_refused_when_committed(bench):
    x, y = features(1.0, rank_deficient=True)
    rls = IncrementalRidge(40, 1e-12)
    with pytest.raises(ValueError, match="gamma"):
        with rls.atomic():
            rls.partial_fit(x, y)
    assert int(rls.num_seen) == 0 and not rls.gram.any()
    # and in the strategy: a rank-deficient backbone with gamma 1e-12
    _, _, bm = bench
    dup = nn.Linear(64, 64, bias=False)  # every feature is the pixel sum: rank 1
    with torch.no_grad():
        dup.weight.fill_(1.0)
    strategy = analytic(backbone=dup, gamma=1e-12)
    assert_refused(lambda: strategy.train(bm.train_stream[0]), "gamma",
                   state=lambda: strategy.model.state_dict())


# ------------------------------------------------------------------ issue 12, finding 11
def test_an_empty_experience_gets_a_clear_error(bench):
    _, test, _ = bench
    four = LabelledTensorDataset(torch.rand(4, 64), torch.arange(4))
    exp = nc_benchmark(four, four, n_experiences=1, task_labels=False, seed=0).train_stream[0]
    strategy = analytic()
    exp.dataset = exp.dataset.subset([])
    assert_refused(lambda: strategy.train(exp), "no training samples",
                   state=lambda: strategy.model.state_dict())


# ------------------------------------------------------------------ issue 12, findings 13, 14
def trained_rls():
    rls = IncrementalRidge(8, 1.0)
    rls.partial_fit(torch.rand(10, 8, dtype=torch.float64), torch.arange(10) % 3)
    return rls


RLS = trained_rls()
BUFFER = BufferLayer(8, 16, seed=0, projection_dtype=torch.float32)


@pytest.mark.parametrize("call,argument,state", [
    (lambda: IncrementalRidge("abc"), "in_features", None),
    (lambda: IncrementalRidge(2.5), "in_features", None),
    (lambda: IncrementalRidge(True), "in_features", None),
    (lambda: IncrementalRidge(8, gamma="1"), "gamma", None),
    (lambda: IncrementalRidge(8, max_classes=0), "max_classes", None),
    (lambda: IncrementalRidge(8, method="lsqr"), "method", None),
    (lambda: BufferLayer("abc", 4), "in_features", None),
    (lambda: BufferLayer(4, 0), "buffer_size", None),
    (lambda: BufferLayer(4, 4, seed="x"), "seed", None),
    (lambda: RLS.partial_fit(torch.rand(2, 8), torch.tensor([0, 100000])), "labels",
     RLS.state_dict),
    (lambda: RLS.partial_fit(torch.rand(2, 8), torch.tensor([0.0, 1.5])), "labels",
     RLS.state_dict),
    (lambda: RLS.partial_fit(torch.rand(2, 8), torch.tensor([0, -1])), "labels",
     RLS.state_dict),
    (lambda: RLS.partial_fit([[0.0] * 8], torch.tensor([0])), "x", RLS.state_dict),
    (lambda: RLS.partial_fit(torch.full((2, 8), 1e200, dtype=torch.float64),
                             torch.tensor([0, 1])), "overflow", RLS.state_dict),
    (lambda: RLS.load_state_dict({**RLS.state_dict(), "gram": torch.zeros(3, 3)}), "gram",
     RLS.state_dict),
    (lambda: BUFFER(torch.full((2, 8), 1e39, dtype=torch.float64)), "projection_dtype",
     BUFFER.state_dict),
    (lambda: AnalyticHeadPlugin(buffer_size="big"), "buffer_size", None),
    (lambda: AnalyticHeadPlugin(batch_size=0), "batch_size", None),
    (lambda: AnalyticHeadPlugin(seed=None), "seed", None),
    (lambda: AnalyticHeadPlugin(max_classes=-1), "max_classes", None),
    (lambda: analytic(train_mb_size=0), "train_mb_size", None),
    (lambda: analytic(eval_mb_size=-1), "eval_mb_size", None),
    (lambda: analytic(feature_dim="abc"), "feature_dim", None),
    (lambda: analytic(buffer_size=0), "buffer_size", None),
    (lambda: analytic(device="tpu9"), "device", None),
    (lambda: analytic(device="cuda:7" if torch.cuda.is_available() else "cuda"), "device", None),
    (lambda: analytic(base_lr=float("nan")), "base_lr", None),
    (lambda: analytic(base_epochs="2"), "base_epochs", None),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_inputs_are_refused_by_name(call, argument, state):
    assert_refused(call, argument, state=state)


class FloatLabels(torch.utils.data.Dataset):
    """Features with float labels (a user's own data set, not neve's)."""

    def __init__(self, x, targets):
        self.x, self.targets = x, targets

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.targets[i]

    def eval(self):
        return self


def test_float_targets_are_refused_not_truncated():
    x, labels = torch.rand(6, 64), torch.tensor([0.0, 1.0, 1.5, 2.0, 0.0, 1.0])
    strategy = analytic()
    assert_refused(lambda: strategy.model.head.partial_fit(
        strategy.model.buffer(x.double()), labels), "labels",
        state=lambda: strategy.model.state_dict())
    # the plugin reads its data set's targets: floats are refused, not truncated
    model = FrozenNet()
    plugin = AnalyticHeadPlugin(16)
    naive = Naive(model=model, optimizer=torch.optim.SGD(model.classifier.parameters(), lr=0.1),
                  plugins=[plugin], evaluator=silent_evaluator(stream=True))
    naive.experience = SimpleNamespace(dataset=FloatLabels(x, labels))
    assert_refused(lambda: plugin.after_training_exp(naive), "labels", state=plugin.state_dict)


def test_to_float32_keeps_the_head_in_float64(bench):
    _, _, bm = bench
    strategy = analytic()
    strategy.model.to(torch.float32)
    assert strategy.head.gram.dtype == torch.float64
    assert strategy.model.buffer.weight.dtype == torch.float64
    strategy.train(bm.train_stream[0])
    reference = analytic()
    reference.train(bm.train_stream[0])
    assert rel_err(strategy.head.weight, reference.head.weight.numpy()) <= 1e-10


def test_labels_beyond_max_classes_refused_in_the_strategy_without_change():
    model = AnalyticClassifier(nn.Identity(), 8, buffer_size=16, max_classes=20)
    head = model.head
    feats = model.buffer(torch.rand(3, 8))
    assert_refused(lambda: head.partial_fit(feats, torch.tensor([0, 1, 20])), "max_classes",
                   state=head.state_dict)
    head.partial_fit(feats, torch.tensor([0, 1, 19]))
    assert head.num_classes == 20
