"""Optimal-transport primitives behind the OTDD, each against an independent computation."""

import numpy as np
import pytest
import scipy.linalg
import torch

from neve.benchmarks.optimal_transport import (
    bures_wasserstein_squared,
    entropic_ot,
    exact_ot,
    gaussian_fit,
    sinkhorn_divergence,
    squared_distances,
)


def _t(a):
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def _random_spd(rng, dim):
    a = rng.normal(size=(dim, dim))
    return a @ a.T + 0.1 * np.eye(dim)


def test_bures_wasserstein_of_commuting_covariances_is_the_square_root_gap():
    rng = np.random.default_rng(0)
    dim = 4
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))  # common eigenvectors: S1, S2 commute
    l1, l2 = rng.uniform(0.2, 3.0, dim), rng.uniform(0.2, 3.0, dim)
    s1, s2 = q @ np.diag(l1) @ q.T, q @ np.diag(l2) @ q.T
    m1, m2 = rng.normal(size=dim), rng.normal(size=dim)
    expected = ((m1 - m2) ** 2).sum() + ((np.sqrt(l1) - np.sqrt(l2)) ** 2).sum()
    got = bures_wasserstein_squared(_t(m1), _t(s1), _t(m2), _t(s2))
    assert got == pytest.approx(expected, rel=1e-10)
    # diagonal covariances: |sqrt(S1) - sqrt(S2)|_F^2
    d1, d2 = np.diag(l1), np.diag(l2)
    frob = ((scipy.linalg.sqrtm(d1) - scipy.linalg.sqrtm(d2)) ** 2).sum()
    assert bures_wasserstein_squared(_t(m1), _t(d1), _t(m2), _t(d2)) == pytest.approx(
        ((m1 - m2) ** 2).sum() + frob, rel=1e-10)


def test_bures_wasserstein_matches_scipy_sqrtm_and_is_symmetric():
    rng = np.random.default_rng(1)
    s1, s2 = _random_spd(rng, 5), _random_spd(rng, 5)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    r1 = scipy.linalg.sqrtm(s1).real
    cross = scipy.linalg.sqrtm(r1 @ s2 @ r1).real
    expected = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * cross)
    got = bures_wasserstein_squared(_t(m1), _t(s1), _t(m2), _t(s2))
    assert got == pytest.approx(expected, rel=1e-9)
    assert bures_wasserstein_squared(_t(m2), _t(s2), _t(m1), _t(s1)) == pytest.approx(got, rel=1e-9)
    assert bures_wasserstein_squared(_t(m1), _t(s1), _t(m1), _t(s1)) == pytest.approx(0, abs=1e-9)


def test_bures_wasserstein_matches_the_exact_ot_of_many_gaussian_samples():
    rng = np.random.default_rng(2)
    s1 = np.array([[2.0, 0.9], [0.9, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 1.5]])  # does not commute with s1
    m1, m2 = np.zeros(2), np.array([1.5, -1.0])
    x = rng.multivariate_normal(m1, s1, size=1200)
    y = rng.multivariate_normal(m2, s2, size=1200)
    closed = bures_wasserstein_squared(_t(m1), _t(s1), _t(m2), _t(s2))
    sampled = exact_ot(squared_distances(_t(x), _t(y)))
    assert sampled == pytest.approx(closed, rel=0.05)


def test_gaussian_fit_is_the_unbiased_sample_mean_and_covariance():
    x = np.random.default_rng(3).normal(size=(9, 3))
    mean, cov = gaussian_fit(_t(x))
    assert np.allclose(mean.numpy(), x.mean(0)) and np.allclose(cov.numpy(), np.cov(x.T, ddof=1))


def _primal_entropic_value(cost: np.ndarray, eps: float) -> float:
    """<T, C> + eps KL(T | a b^T) at POT's converged log-domain Sinkhorn plan."""
    import ot

    n, m = cost.shape
    a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    plan = ot.sinkhorn(a, b, cost, eps, method="sinkhorn_log", stopThr=1e-13, numItermax=100_000)
    kl = (plan * np.log(plan / np.outer(a, b))).sum()
    return float((plan * cost).sum() + eps * kl)


@pytest.mark.parametrize("eps", [0.5, 0.1])
def test_entropic_ot_is_the_regularised_primal_value(eps):
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(20, 3)), rng.normal(0.7, 1.2, size=(15, 3))
    cost = squared_distances(_t(x), _t(y))
    primal = _primal_entropic_value(cost.numpy(), eps)
    assert entropic_ot(cost, eps) == pytest.approx(primal, abs=1e-7)


def test_entropic_ot_converges_on_a_self_problem():
    """A nearly diagonal plan (points far apart against eps), where plain alternation stalls."""
    x = _t(np.random.default_rng(5).normal(size=(25, 4)))
    cost = squared_distances(x, x)
    primal = _primal_entropic_value(cost.numpy(), 0.2)
    assert entropic_ot(cost, 0.2) == pytest.approx(primal, abs=1e-7)


def test_sinkhorn_divergence_tends_to_exact_ot_as_eps_shrinks():
    rng = np.random.default_rng(6)
    x, y = _t(rng.normal(size=(30, 2))), _t(rng.normal(1.0, 1.0, size=(30, 2)))
    costs = (squared_distances(x, y), squared_distances(x, x), squared_distances(y, y))
    exact = exact_ot(costs[0])
    gaps = [abs(sinkhorn_divergence(*costs, eps) - exact) for eps in (2.0, 0.5, 0.05)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.02 * exact


def test_exact_ot_is_the_best_assignment():
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(7)
    cost = rng.uniform(size=(9, 9))
    r, c = linear_sum_assignment(cost)
    assert exact_ot(_t(cost)) == pytest.approx(cost[r, c].mean(), rel=1e-12)
