"""The OTDD as its authors define it, against independent computations written here.

Ground cost |x - x'|^2 / 2 + W(y, y') / 2 (microsoft/otdd's DatasetDistance, as
Learning2Learn calls it: one class per dataset, debiased Sinkhorn, eps 0.1).
"""

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.optimize import linear_sum_assignment

from neve.benchmarks import CurriculumDesigner
from neve.benchmarks.class_distances import CLASS_DISTANCES, register_distance
from neve.benchmarks.otdd import class_otdd, otdd_distances


def assignment_ot(cost: np.ndarray) -> float:
    """Equal-size uniform samples: the optimal plan is a permutation (Birkhoff)."""
    r, c = linear_sum_assignment(cost)
    return float(cost[r, c].mean())


def sqdist(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


def gaussian_w2_squared(x: np.ndarray, y: np.ndarray) -> float:
    """Closed form between the two samples' Gaussian fits, with scipy's sqrtm."""
    s1, s2 = np.cov(x.T), np.cov(y.T)
    r1 = scipy.linalg.sqrtm(s1).real
    cross = scipy.linalg.sqrtm(r1 @ s2 @ r1).real
    return float(((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * cross))


def test_exact_otdd_with_the_gaussian_label_term_is_assignment_plus_bures():
    rng = np.random.default_rng(0)
    for n, dim in [(6, 2), (10, 3), (14, 4)]:
        x, y = rng.normal(size=(n, dim)), rng.normal(1.0, 2.0, size=(n, dim))
        expected = assignment_ot(sqdist(x, y) / 2) + gaussian_w2_squared(x, y) / 2
        got = class_otdd(x, y, method="exact", label="gaussian")
        assert got == pytest.approx(expected, rel=1e-9)


def test_the_label_term_changes_with_the_classes_spread_not_only_their_means():
    """Today's W2 drops the label term: two pairs with the same W2 but different spreads."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 2))
    tight, wide = x * 0.5, x * 2.0
    value_tight = class_otdd(x, tight, method="exact", label="gaussian")
    value_wide = class_otdd(x, wide, method="exact", label="gaussian")
    assert value_tight == pytest.approx(
        assignment_ot(sqdist(x, tight) / 2) + gaussian_w2_squared(x, tight) / 2, rel=1e-9)
    assert value_wide > value_tight + 0.5


def test_no_square_root_a_shifted_copy_costs_the_squared_shift():
    x = np.random.default_rng(2).normal(size=(15, 3))
    y = x + [3.0, 0.0, 0.0]
    # feature part 9 / 2, label term (same covariance, means 3 apart) 9 / 2
    assert class_otdd(x, y, method="exact", label="gaussian") == pytest.approx(9.0, rel=1e-9)


def test_debiased_otdd_is_zero_on_identical_data_and_symmetric():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(20, 3)), rng.normal(0.5, 1.5, size=(16, 3))
    assert class_otdd(x, x, label="gaussian") == pytest.approx(0.0, abs=1e-9)
    assert class_otdd(x, y) == pytest.approx(class_otdd(y, x), rel=1e-7)
    assert class_otdd(x, y, label="gaussian") == pytest.approx(
        class_otdd(y, x, label="gaussian"), rel=1e-7)


def test_debiased_otdd_is_close_to_the_exact_one_for_a_small_eps():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(30, 2)) * 4, rng.normal(2.0, 4.0, size=(30, 2))
    exact = class_otdd(x, y, method="exact", label="gaussian")
    assert class_otdd(x, y, label="gaussian", eps=0.1) == pytest.approx(exact, rel=0.01)
    assert abs(class_otdd(x, y, label="gaussian", eps=5.0) - exact) > 0.01 * exact


def test_entropic_label_term_is_the_biased_entropic_ot_and_fills_the_diagonal():
    import ot

    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(12, 2)), rng.normal(1.0, 1.0, size=(12, 2))

    def biased(a, b, eps=0.1):  # <T, C> + eps KL(T | ab^T) at POT's converged plan
        c = sqdist(a, b)
        w = np.full(len(a), 1 / len(a))
        plan = ot.sinkhorn(w, w, c, eps, method="sinkhorn_log", stopThr=1e-13, numItermax=100_000)
        return float((plan * c).sum() + eps * (plan * np.log(plan / np.outer(w, w))).sum())

    exact_feature = assignment_ot(sqdist(x, y) / 2)
    assert class_otdd(x, y, method="exact") == pytest.approx(
        exact_feature + biased(x, y) / 2, abs=1e-6)
    d = otdd_distances([x, y])
    assert d[0, 0] == pytest.approx(biased(x, x) / 2, abs=1e-6) and d[0, 0] > 0
    assert d[1, 1] == pytest.approx(biased(y, y) / 2, abs=1e-6)
    assert d[0, 1] == d[1, 0] == pytest.approx(class_otdd(x, y), rel=1e-9)


def test_digits_classes_0_and_1_read_as_the_reference_reads_them():
    """Order of magnitude of the reference figures (8x8 digits / 16, 50 per class).

    The reference reports about W2^2 in total (feature part and label part each
    about half of it) and a diagonal of about 0.196; the draw of the 50 images
    moves the total by a few percent, so only the structure is asserted.
    """
    from sklearn.datasets import load_digits

    data, target = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    x0 = data[rng.choice(np.flatnonzero(target == 0), 50, replace=False)] / 16.0
    x1 = data[rng.choice(np.flatnonzero(target == 1), 50, replace=False)] / 16.0
    d = otdd_distances([x0, x1])
    exact_w2_squared = assignment_ot(sqdist(x0, x1))
    assert 9.0 < exact_w2_squared < 13.0
    assert d[0, 1] == pytest.approx(exact_w2_squared, rel=0.01)
    feature = class_otdd(x0, x1, label="gaussian") - gaussian_w2_squared(x0, x1) / 2
    assert feature == pytest.approx(exact_w2_squared / 2, rel=0.03)
    assert d[0, 0] == pytest.approx(0.196, abs=0.01) and d[1, 1] > 0


def test_designer_otdd_is_the_reference_matrix_normalised_with_its_diagonal():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat_interleave(10)
    x = 0.3 * torch.randn(40, 3, generator=g) + y.float().view(-1, 1) * torch.tensor([0.4, 0.2, 0])
    designer = CurriculumDesigner(distance="otdd_entropic", max_per_class=8, seed=0)
    designer.fit_features(x, y)
    keep = designer._subsample(y, list(range(4)))
    raw = otdd_distances([x[keep][y[keep] == c].numpy() for c in range(4)])
    assert np.allclose(designer.distances_.numpy(), raw, rtol=1e-9)
    assert np.all(np.diag(raw) > 0)
    d, var = designer.normalized_distances()
    hand = raw / raw.sum(1, keepdims=True)
    row_var = np.var(hand, axis=1)
    assert np.allclose(d, hand) and np.allclose(var, row_var / row_var.sum())


def test_entropic_otdd_is_within_its_bound_of_the_exact_one_and_designer_otdd_is_exact():
    rng = np.random.default_rng(6)
    samples = [0.4 * rng.normal(size=(10, 2)) + s for s in ([0, 0], [0.8, 0], [0, 1.0])]
    exact = otdd_distances(samples, method="exact", label="exact")
    w2sq = np.array([[assignment_ot(sqdist(a, b)) for b in samples] for a in samples])
    assert np.allclose(exact, w2sq, rtol=1e-9, atol=1e-12)  # both halves are W2^2 / 2
    for eps in (0.1, 0.05):
        entropic = otdd_distances(samples, eps=eps)
        assert np.all(np.abs(entropic - exact) <= 1.5 * eps * np.log(10) + 1e-6)
        assert np.all(np.diag(entropic) <= eps * np.log(10) / 2 + 1e-6)
    y = torch.arange(3).repeat_interleave(10)
    x = torch.from_numpy(np.concatenate(samples))
    designer = CurriculumDesigner(distance="otdd", max_per_class=None).fit_features(x, y)
    assert np.allclose(designer.distances_.numpy(), w2sq, rtol=1e-9, atol=1e-12)


def test_designer_distances_come_from_a_registry():
    assert {"cosine", "euclidean", "otdd", "otdd_entropic", "otdd_gaussian", "w2"} <= set(
        CLASS_DISTANCES)

    @register_distance("test_manhattan")
    def manhattan(prototypes, samples):
        return torch.cdist(prototypes, prototypes, p=1).numpy()

    try:
        x = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, 0.0]]).repeat_interleave(2, 0)
        y = torch.arange(3).repeat_interleave(2)
        designer = CurriculumDesigner(distance="test_manhattan", max_per_class=None)
        designer.fit_features(x, y)
        expected = np.array([[0, 3, 3], [3, 0, 4], [3, 4, 0]], dtype=float)
        assert np.allclose(designer.distances_.numpy(), expected)
        with pytest.raises(ValueError, match="already registered"):
            register_distance("test_manhattan")(manhattan)
    finally:
        CLASS_DISTANCES.pop("test_manhattan")


@pytest.mark.parametrize("call,argument", [
    (lambda: class_otdd(np.zeros((3, 2)), np.ones((3, 2)), method="sinkhorn"), "method"),
    (lambda: class_otdd(np.zeros((3, 2)), np.ones((3, 2)), label="bures"), "label"),
    (lambda: class_otdd(np.zeros((3, 2)), np.ones((3, 2)), eps=0), "eps"),
    (lambda: class_otdd(np.zeros((3, 2)), np.ones((3, 3))), "feature size"),
    (lambda: class_otdd(np.zeros((1, 2)), np.ones((3, 2)), label="gaussian"), "at least 2"),
    (lambda: otdd_distances([np.zeros((3, 2)), np.full((3, 2), np.nan)]), "samples[1]"),
    (lambda: otdd_distances([np.zeros((3, 2))]), "samples"),
])
def test_bad_otdd_input_is_refused(call, argument):
    from bad_input import assert_refused

    assert_refused(call, argument)
