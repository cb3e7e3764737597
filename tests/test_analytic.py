"""ACIL / G-ACIL: the closed-form head equals the joint ridge solution, computed independently."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from avalanche.benchmarks import class_incremental_benchmark, nc_benchmark
from avalanche.training.supervised import Naive
from conftest import silent_evaluator
from resume_harness import run_full_and_resumed
from torch import nn

from neve.benchmarks import LabelledTensorDataset, class_balanced_subset, digits
from neve.benchmarks.si_blurry import si_blurry_benchmark
from neve.models import BufferLayer, IncrementalRidge
from neve.models.ridge import add_lower_gram, symmetric_from_lower
from neve.plugins.analytic import AnalyticHeadPlugin
from neve.strategies import AnalyticCIL

RUN = Path(__file__).with_name("analytic_digits_run.py")


def scipy_ridge(x: np.ndarray, labels: np.ndarray, gamma: float) -> np.ndarray:
    """(X^T X + gamma I)^-1 X^T Y on all data at once, with scipy."""
    y = np.eye(int(labels.max()) + 1)[labels]
    return scipy.linalg.solve(x.T @ x + gamma * np.eye(x.shape[1]), x.T @ y, assume_a="pos")


def rel_err(w: torch.Tensor, ref: np.ndarray) -> float:
    w = w.detach().cpu().double().numpy()
    assert w.shape == ref.shape
    return float(np.linalg.norm(w - ref) / np.linalg.norm(ref))


@pytest.fixture(scope="module")
def digit_features():
    """Digits as 64-d pixel vectors (an ``nn.Identity()`` backbone sees features)."""
    train, test = digits(seed=0)
    return (
        LabelledTensorDataset(train.data.flatten(1), train.targets),
        LabelledTensorDataset(test.data.flatten(1), test.targets),
    )


def test_accumulate_and_woodbury_both_equal_joint_solution_with_growing_classes():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(700, 24, generator=gen, dtype=torch.float64)
    labels = torch.cat([torch.randint(0, 3, (300,), generator=gen),
                        torch.randint(0, 9, (400,), generator=gen)])
    buffer = BufferLayer(24, 96, seed=3)
    feats = buffer(x)
    forms = [IncrementalRidge(96, 0.3), IncrementalRidge(96, 0.3, method="woodbury")]
    for start in range(0, 700, 53):
        for f in forms:
            f.partial_fit(feats[start : start + 53], labels[start : start + 53])
    ref = scipy_ridge(torch.relu(x @ buffer.weight).numpy(), labels.numpy(), 0.3)
    for f in forms:
        assert f.num_classes == 9
        assert rel_err(f.weight, ref) <= 1e-8
    assert rel_err(forms[0].weight, forms[1].weight.numpy()) <= 1e-8
    # logits are x W
    np.testing.assert_allclose(forms[0](feats[:5]).numpy(), feats[:5].numpy() @ ref, rtol=1e-8)
    # buffer weights are buffers, not parameters, and seeded
    assert not list(buffer.parameters()) and "weight" in buffer.state_dict()
    assert torch.equal(BufferLayer(24, 96, seed=3).weight, buffer.weight)


def test_five_experience_stream_equals_joint_ridge(digit_features):
    train, test = digit_features
    bm = nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)
    strategy = AnalyticCIL(backbone=nn.Identity(), feature_dim=64,
                           buffer_size=256, gamma=1.0, train_mb_size=37,
                           eval_mb_size=500,
                           evaluator=silent_evaluator(stream=True, experience=True))
    for exp in bm.train_stream:
        strategy.train(exp)
    acc = strategy.eval(bm.test_stream)["Top1_Acc_Stream/eval_phase/test_stream/Task000"]
    w_b = strategy.model.buffer.weight.numpy()
    ref = scipy_ridge(np.maximum(train.data.double().numpy() @ w_b, 0), train.targets.numpy(), 1.0)
    assert rel_err(strategy.head.weight, ref) <= 1e-8
    # accuracy of the joint solution, computed independently
    pred = (np.maximum(test.data.double().numpy() @ w_b, 0) @ ref).argmax(1)
    assert acc == pytest.approx(float((pred == test.targets.numpy()).mean()), abs=1e-12)
    assert acc > 0.85


def test_class_incremental_benchmark_and_woodbury_strategy(digit_features):
    train, test = digit_features
    bm = class_incremental_benchmark({"train": train, "test": test}, num_experiences=2, seed=1)
    strategy = AnalyticCIL(backbone=nn.Identity(), feature_dim=64,
                           buffer_size=128, gamma=2.0, method="woodbury",
                           train_mb_size=64, train_predictions=True,
                           evaluator=silent_evaluator(stream=True, experience=True))
    for exp in bm.train_stream:
        strategy.train(exp)  # train_predictions: a prediction per mini-batch, W unchanged
    ref = scipy_ridge(
        np.maximum(train.data.double().numpy() @ strategy.model.buffer.weight.numpy(), 0),
        train.targets.numpy(), 2.0,
    )
    assert rel_err(strategy.head.weight, ref) <= 1e-8


def test_online_si_blurry_with_recurring_classes_equals_joint_ridge(digit_features):
    train, test = digit_features
    small = class_balanced_subset(train, per_class=30, seed=0)
    small = LabelledTensorDataset(train.data[small.indices], small.targets)
    bm = si_blurry_benchmark(small, test, n_tasks=5, disjoint_class_ratio=0.5,
                             blurry_sample_ratio=0.3, seed=2)
    recurring = [c for c in range(10)
                 if sum(c in e.classes_in_this_experience for e in bm.train_stream) > 1]
    assert recurring  # some class appears in more than one task
    assert {len(e.dataset) for e in bm.train_stream} != {60}
    online = si_blurry_benchmark(small, test, n_tasks=5, disjoint_class_ratio=0.5,
                                 blurry_sample_ratio=0.3, seed=2, online=True,
                                 experience_size=12)
    strategy = AnalyticCIL(backbone=nn.Identity(), feature_dim=64,
                           buffer_size=200, gamma=1.0, train_mb_size=1,
                           evaluator=silent_evaluator(stream=True, experience=True))
    n = 0
    for exp in online.train_stream:
        n += len(exp.dataset)
        strategy.train(exp)
    assert n == len(small) == int(strategy.head.num_seen)
    ref = scipy_ridge(
        np.maximum(small.data.double().numpy() @ strategy.model.buffer.weight.numpy(), 0),
        small.targets.numpy(), 1.0,
    )
    assert rel_err(strategy.head.weight, ref) <= 1e-8
    res = strategy.eval(online.test_stream)
    assert res["Top1_Acc_Stream/eval_phase/test_stream/Task000"] > 0.8


def _state(module: nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_add_lower_gram_matches_the_full_product_below_the_diagonal():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(30, 11, generator=gen, dtype=torch.float64)
    full = x.T @ x
    for blocks in (None, 1, 2, 3, 5, 11, 40):
        gram = torch.full((11, 11), 7.0, dtype=torch.float64)
        add_lower_gram(gram, x, blocks)
        torch.testing.assert_close(torch.tril(gram), torch.tril(full + 7.0), rtol=1e-12, atol=0)
        torch.testing.assert_close(symmetric_from_lower(gram), full + 7.0, rtol=1e-12, atol=0)


def test_float32_projection_stays_exact_for_its_own_features(digit_features):
    train, test = digit_features
    bm = nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)
    strategy = AnalyticCIL(backbone=nn.Identity(), feature_dim=64,
                           buffer_size=256, gamma=1.0, train_mb_size=41,
                           projection_dtype=torch.float32,
                           evaluator=silent_evaluator(stream=True, experience=True))
    for exp in bm.train_stream:
        strategy.train(exp)
    buffer = strategy.model.buffer
    x = train.data.double()
    feats = buffer(x)
    assert feats.dtype == torch.float64
    # the product is float32: close to, but not bitwise, the float64 one
    exact = torch.relu(x @ buffer.weight)
    assert 0 < rel_err(feats, exact.numpy()) <= 1e-6
    # the incremental head is the joint ridge solution on the features it was given
    ref = scipy_ridge(feats.numpy(), train.targets.numpy(), 1.0)
    assert rel_err(strategy.head.weight, ref) <= 1e-8
    # and predicts like the float64 head
    w64 = scipy_ridge(exact.numpy(), train.targets.numpy(), 1.0)
    pred32 = strategy.model(test.data).argmax(1).numpy()
    pred64 = (torch.relu(test.data.double() @ buffer.weight).numpy() @ w64).argmax(1)
    assert (pred32 == pred64).mean() >= 0.99
    for bad in (torch.float16, torch.int64, "float32"):
        with pytest.raises(ValueError, match="projection_dtype"):
            BufferLayer(4, 4, projection_dtype=bad)
        with pytest.raises(ValueError, match="projection_dtype"):
            AnalyticHeadPlugin(projection_dtype=bad)


def test_bad_inputs_raise_and_leave_state_unchanged(digit_features):
    for gamma in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="gamma"):
            IncrementalRidge(8, gamma=gamma)
    for method in ("accumulate", "woodbury"):
        rls = IncrementalRidge(8, 1.0, method=method)
        rls.partial_fit(torch.rand(20, 8, dtype=torch.float64), torch.arange(20) % 3)
        before, w_before = _state(rls), rls.weight.clone()
        bad_x = torch.rand(4, 8, dtype=torch.float64)
        bad_x[1, 2] = float("nan")
        inf_x = bad_x.nan_to_num(nan=float("inf"))
        cases = [
            ((bad_x, torch.zeros(4, dtype=torch.long)), "NaN or inf"),
            ((inf_x, torch.zeros(4, dtype=torch.long)), "NaN or inf"),
            ((torch.rand(4, 8), torch.tensor([0, 1, -1, 5])), "labels.*>= 0"),
            ((torch.rand(4, 7), torch.zeros(4, dtype=torch.long)), "in_features=8"),
            ((torch.rand(4, 8), torch.zeros(3, dtype=torch.long)), "labels"),
            ((torch.rand(4, 8), torch.zeros(4)), "integer"),
        ]
        for (x, y), msg in cases:
            with pytest.raises(ValueError, match=msg):
                rls.partial_fit(x, y)
            assert _same(_state(rls), before)
            assert torch.equal(rls.weight, w_before)
            assert rls.num_classes == 3  # the bad label 5 did not grow the head
    # a backbone whose output size differs from feature_dim
    train, test = digit_features
    bm = nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)
    strategy = AnalyticCIL(backbone=nn.Identity(), feature_dim=64,
                           buffer_size=32, evaluator=silent_evaluator(stream=True, experience=True))
    strategy.train(bm.train_stream[0])
    before = _state(strategy.model)
    strategy.model.backbone = nn.Linear(64, 10)
    with pytest.raises(ValueError, match="feature_dim=64"):
        strategy.train(bm.train_stream[1])
    assert _same(_state(strategy.head), {k[5:]: v for k, v in before.items()
                                         if k.startswith("head.")})


def test_base_epochs_trains_backbone_once_then_freezes(digit_features):
    train, test = digit_features
    bm = nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(64, 32), nn.ReLU())
    initial = _state(backbone)
    strategy = AnalyticCIL(backbone=backbone, feature_dim=32,
                           buffer_size=64, base_epochs=2, base_lr=0.05,
                           train_mb_size=32,
                           evaluator=silent_evaluator(stream=True, experience=True))
    strategy.train(bm.train_stream[0])
    after_base = _state(backbone)
    assert not _same(after_base, initial)
    strategy.train(bm.train_stream[1])
    assert _same(_state(backbone), after_base)
    assert not any(p.requires_grad for p in backbone.parameters())
    seen = torch.cat([torch.as_tensor(bm.train_stream[i].dataset.targets) for i in (0, 1)])
    xs = torch.cat([torch.stack([bm.train_stream[i].dataset[j][0] for j in
                                 range(len(bm.train_stream[i].dataset))]) for i in (0, 1)])
    with torch.no_grad():
        feats = np.maximum(backbone(xs).double().numpy() @ strategy.model.buffer.weight.numpy(), 0)
    assert rel_err(strategy.head.weight, scipy_ridge(feats, seen.numpy(), 1.0)) <= 1e-8


def test_checkpoint_resume_ends_where_uninterrupted_run_ends(tmp_path):
    a, b = run_full_and_resumed(RUN, tmp_path)
    assert sorted(b["accs"]) == [3, 4]
    assert torch.equal(a["weight"], b["weight"])
    for k, v in a["state"].items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, b["state"][k]), k
    assert a["accs"][4] == b["accs"][4] and a["accs"][4] > 0.8


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU())
        self.classifier = nn.Linear(32, 10)

    def forward(self, x):
        return self.classifier(self.features(x))


def test_plugin_on_naive_fits_joint_ridge_on_each_experiences_features():
    train, test = digits(seed=0)
    bm = nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)
    torch.manual_seed(0)
    model = SmallNet()
    plugin = AnalyticHeadPlugin(buffer_size=128, gamma=0.7, seed=1)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                     train_mb_size=32, train_epochs=1, eval_mb_size=128, plugins=[plugin],
                     evaluator=silent_evaluator(stream=True, experience=True))
    feats, labels = [], []
    for exp in bm.train_stream[:3]:
        strategy.train(exp)
        xs = torch.stack([exp.dataset[j][0] for j in range(len(exp.dataset))])
        with torch.no_grad():
            feats.append(model.features(xs).double())
        labels.append(torch.as_tensor(exp.dataset.targets))
    w_b = plugin.buffer.weight.numpy()
    x = np.maximum(torch.cat(feats).numpy() @ w_b, 0)
    y = torch.cat(labels).numpy()
    ref = scipy_ridge(x, y, 0.7)
    assert rel_err(plugin.head.weight, ref) <= 1e-8
    # evaluation answers with the analytic head
    test_exp = bm.test_stream[2]
    xt = torch.stack([test_exp.dataset[j][0] for j in range(len(test_exp.dataset))])
    yt = np.asarray(test_exp.dataset.targets)
    with torch.no_grad():
        pred = (np.maximum(model.features(xt).double().numpy() @ w_b, 0) @ ref).argmax(1)
    res = strategy.eval(bm.test_stream[2:3])
    assert res["Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp002"] == pytest.approx(
        float((pred == yt).mean()), abs=1e-12)
    # state round-trip
    other = AnalyticHeadPlugin(buffer_size=128, gamma=0.7, seed=1)
    other.load_state_dict(plugin.state_dict())
    assert torch.equal(other.head.weight, plugin.head.weight)


def test_plugin_contract_error_names_features():
    train, test = digits(seed=0)
    bm = nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                     plugins=[AnalyticHeadPlugin(32)],
                     evaluator=silent_evaluator(stream=True, experience=True))
    with pytest.raises(ValueError, match="no submodule 'features'"):
        strategy.train(bm.train_stream[0])
    # a callable works instead
    plugin = AnalyticHeadPlugin(32, features=lambda x: model[0](x))
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                     plugins=[plugin], evaluator=silent_evaluator(stream=True, experience=True))
    strategy.train(bm.train_stream[0])
    assert plugin.head.num_classes == max(bm.train_stream[0].classes_in_this_experience) + 1


def test_strategy_takes_avalanche_keywords_without_warnings_and_refuses_a_second_epoch():
    evaluator = silent_evaluator(stream=True, experience=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no PositionalArgumentsDeprecatedWarning
        strategy = AnalyticCIL(backbone=nn.Identity(), feature_dim=8, buffer_size=16,
                               train_mb_size=7, train_epochs=1, eval_mb_size=9, device="cpu",
                               plugins=[], evaluator=evaluator, eval_every=-1)
    assert (strategy.train_mb_size, strategy.train_epochs, strategy.eval_mb_size) == (7, 1, 9)
    with pytest.raises(ValueError, match="train_epochs is fixed to 1"):
        AnalyticCIL(backbone=nn.Identity(), feature_dim=8, train_epochs=2, evaluator=evaluator)
    with pytest.raises(TypeError):
        AnalyticHeadPlugin(16, 1.0)  # gamma and the rest are keyword-only
