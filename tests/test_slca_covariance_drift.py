"""Drift compensation of the stored covariances (issue #13 item 3, beyond SDC)."""

import numpy as np
import pytest
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin
from bad_input import assert_refused
from sklearn.linear_model import Ridge

from neve.benchmarks import digits
from neve.models import PretrainedClassifier
from neve.models.drift import drift_jacobian
from neve.plugins import ClassGaussianStats, ClassifierAlignmentPlugin, SlowLearnerPlugin
from neve.strategies import SLCA


def test_drift_jacobian_is_scikit_learns_ridge_fit_of_the_displacements():
    gen = torch.Generator().manual_seed(0)
    before = torch.randn(50, 6, generator=gen, dtype=torch.float64) * 2 + 1
    after = before @ (torch.eye(6, dtype=torch.float64) + 0.2 * torch.randn(
        6, 6, generator=gen, dtype=torch.float64)) + 0.1 * torch.randn(
        50, 6, generator=gen, dtype=torch.float64)
    x, v = before.numpy(), (after - before).numpy()
    for ridge in (1e-3, 1.0):
        lam = ridge * np.trace(np.cov(x.T, bias=True) * len(x)) / 6
        coef = Ridge(alpha=lam, fit_intercept=True, solver="cholesky").fit(x, v).coef_
        np.testing.assert_allclose(drift_jacobian(before, after, ridge).numpy(),
                                   np.eye(6) + coef.T, rtol=1e-8, atol=1e-10)


def test_drift_jacobian_recovers_an_exact_linear_drift_and_refuses_bad_input():
    gen = torch.Generator().manual_seed(1)
    before = torch.randn(200, 5, generator=gen, dtype=torch.float64)
    a = torch.eye(5, dtype=torch.float64) + 0.3 * torch.randn(5, 5, generator=gen,
                                                              dtype=torch.float64)
    torch.testing.assert_close(drift_jacobian(before, before @ a + 2.0, 1e-10), a, rtol=1e-7,
                               atol=1e-7)
    # directions the data does not span are left alone: B = 0 there
    flat = before.clone()
    flat[:, 4] = 0.0
    got = drift_jacobian(flat, flat @ a, 1e-6)
    torch.testing.assert_close(got[4], torch.eye(5, dtype=torch.float64)[4])
    assert_refused(lambda: drift_jacobian(before, before[:, :4]), "before and after")
    assert_refused(lambda: drift_jacobian(before[:1], before[:1]), "2 samples")
    assert_refused(lambda: drift_jacobian(before, before, 0.0), "ridge")


@pytest.mark.parametrize("covariance", ["full", "diagonal", "shared"])
def test_map_covariances_equals_statistics_of_the_mapped_features(covariance):
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(60, 4, generator=gen, dtype=torch.float64), torch.arange(60) % 3
    x[y == 2] = x[y == 2][:, :1].repeat(1, 4)  # class 2: few rows, kept as low rank
    a = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    stats, mapped = ClassGaussianStats(covariance), ClassGaussianStats(covariance)
    stats.update(x[:3], y[:3], group=0)  # 1 row a class: low rank in "full"
    stats.map_covariances(a, [0, 1, 2])
    mapped.update(x[:3] @ a, y[:3], group=0)
    for c in (0, 1, 2):  # a single row: zero scatter either way
        torch.testing.assert_close(stats.covariance_of(c), mapped.covariance_of(c))
    stats, mapped = ClassGaussianStats(covariance), ClassGaussianStats(covariance)
    stats.update(x, y, group=0)
    mapped.update(x @ a, y, group=0)
    stats.map_covariances(a, [0, 1])
    for c in (0, 1):
        expected = mapped.covariance_of(c) - 1e-4 * torch.eye(4, dtype=torch.float64)
        got = stats.covariance_of(c) - 1e-4 * torch.eye(4, dtype=torch.float64)
        if covariance == "diagonal":  # only the diagonal of S is known: A^T diag(s) A's
            s = torch.diagonal(torch.cov(x[y == c].T) * (int((y == c).sum()) - 1))
            expected = torch.diag(torch.diagonal(a.T @ torch.diag(s) @ a)) / (
                int((y == c).sum()) - 1)
        elif covariance == "shared":  # classes 0, 1 mapped, class 2 not
            s = sum(torch.cov(z.T) * (len(z) - 1) for z in (x[y == 0] @ a, x[y == 1] @ a,
                                                             x[y == 2]))
            expected = s / (60 - 3)
        torch.testing.assert_close(got, expected)
    torch.testing.assert_close(stats.means[0], x[y == 0].mean(0))  # means are kept
    assert_refused(lambda: stats.map_covariances(a[:3]), "transform", state=stats.state_dict)
    assert_refused(lambda: stats.map_covariances(a, [9]), "classes", state=stats.state_dict)


class LinearDrift(SupervisedPlugin):
    """After the training of experience ``when``, the linear backbone's features become ``f A``."""

    def __init__(self, a: torch.Tensor, when: int) -> None:
        super().__init__()
        self.a, self.when, self.seen = a, when, 0

    def after_training_epoch(self, strategy, **kwargs):
        if self.seen == self.when:
            layer = strategy.model.features[1]
            with torch.no_grad():
                layer.weight.copy_(self.a.T.float() @ layer.weight)

    def after_training_exp(self, strategy, **kwargs):
        self.seen += 1


def run_linear_drift(drift_covariance: bool) -> tuple[ClassifierAlignmentPlugin, dict]:
    """Two experiences of split digits; the backbone's features become ``f A`` in the second.

    Returns the plugin and, per class of the first experience, its covariance under
    the final backbone (+ ridge), computed from the data."""
    train, test = digits(seed=0)
    bm = nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)
    gen = torch.Generator().manual_seed(3)
    a = torch.eye(8) + 0.3 * torch.randn(8, 8, generator=gen)
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8, bias=False))
    model = PretrainedClassifier(backbone, num_classes=2, feature_dim=8)
    alignment = ClassifierAlignmentPlugin(epochs=1, samples_per_class=8,
                                          drift_compensation=True,
                                          drift_covariance=drift_covariance, drift_ridge=1e-9)
    strategy = SLCA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                    train_mb_size=64, evaluator=EvaluationPlugin(loggers=[]),
                    slow_learner=SlowLearnerPlugin(1.0), alignment=alignment,
                    plugins=[LinearDrift(a, when=1)])
    for exp in bm.train_stream[:2]:
        strategy.train(exp)
    old = bm.train_stream[0].dataset.eval()
    x = torch.stack([old[i][0] for i in range(len(old))])
    y = torch.as_tensor(old.targets)
    with torch.no_grad():
        feats = model.features(x).double()
    return alignment, {c: torch.cov(feats[y == c].T) + 1e-4 * torch.eye(8, dtype=torch.float64)
                       for c in torch.unique(y).tolist()}


def test_plugin_moves_old_covariances_to_those_under_the_new_backbone():
    alignment, actual = run_linear_drift(True)
    for c, expected in actual.items():
        torch.testing.assert_close(alignment.stats.covariance_of(c), expected, rtol=1e-4,
                                   atol=1e-5)
    # without drift_covariance, the old covariances stay those of the first backbone
    alignment, actual = run_linear_drift(False)
    for c, expected in actual.items():
        gap = (alignment.stats.covariance_of(c) - expected).norm() / expected.norm()
        assert gap > 0.1
    assert_refused(lambda: ClassifierAlignmentPlugin(drift_covariance=True), "drift_covariance")
    assert_refused(lambda: ClassifierAlignmentPlugin(drift_compensation=True, drift_ridge=0.0),
                   "drift_ridge")
    assert_refused(lambda: ClassifierAlignmentPlugin(drift_compensation=True,
                                                     drift_covariance="yes"), "drift_covariance")
