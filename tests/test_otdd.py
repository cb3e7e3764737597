"""OTDD and W2, the Curriculum Designer's distances between classes' feature samples."""

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from neve.benchmarks import CurriculumDesigner
from neve.benchmarks.otdd import class_ot_distance, w2_distances


def brute_force_w2(x: np.ndarray, y: np.ndarray) -> float:
    """Equal-size uniform samples: the optimal plan is a permutation (Birkhoff)."""
    cost = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    r, c = linear_sum_assignment(cost)
    return float(np.sqrt(cost[r, c].mean()))


def test_exact_emd_equals_the_best_assignment_on_tiny_samples():
    rng = np.random.default_rng(0)
    for n, dim in [(3, 2), (7, 5), (12, 3)]:
        x, y = rng.normal(size=(n, dim)), rng.normal(1.0, 2.0, size=(n, dim))
        assert class_ot_distance(x, y) == pytest.approx(brute_force_w2(x, y), rel=1e-9)
    # and by enumerating every permutation for the smallest
    x, y = rng.normal(size=(4, 2)), rng.normal(size=(4, 2))
    best = min(((x - y[list(p)]) ** 2).sum(1).mean() for p in itertools.permutations(range(4)))
    assert class_ot_distance(x, y) == pytest.approx(np.sqrt(best), rel=1e-9)


def test_sinkhorn_for_large_samples_is_close_to_exact():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(60, 4)), rng.normal(0.5, 1.0, size=(60, 4))
    exact = class_ot_distance(x, y)
    approx = class_ot_distance(x, y, max_exact=10, reg=0.01)
    assert approx != exact and approx == pytest.approx(exact, rel=0.1)


def test_matrix_is_symmetric_with_zero_diagonal_and_translation_sized():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(20, 3))
    samples = [base, base + [3.0, 0, 0], rng.normal(size=(15, 3)) + [0, 5.0, 0]]
    d = w2_distances(samples)
    assert np.array_equal(d, d.T) and np.all(np.diag(d) == 0)
    assert np.all(d[~np.eye(3, dtype=bool)] > 0)
    assert d[0, 1] == pytest.approx(3.0, rel=1e-9)  # a shifted copy: W2 is the shift


def test_designer_w2_uses_per_class_samples():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(5).repeat_interleave(12)
    x = torch.randn(60, 6, generator=g) + y.float().view(-1, 1) * torch.linspace(0, 1, 6)
    designer = CurriculumDesigner(distance="w2", max_per_class=10, seed=0).fit_features(x, y)
    keep = designer._subsample(y, list(range(5)))
    expected = w2_distances([x[keep][y[keep] == c] for c in range(5)])
    assert np.allclose(designer.distances_.numpy(), expected)
    assert len(designer.rank()) == 120
    state = designer.state_dict()
    again = CurriculumDesigner()
    again.load_state_dict(state)
    assert again.distance == "w2" and torch.equal(again.distances_, designer.distances_)


@pytest.mark.parametrize("call,argument", [
    (lambda: class_ot_distance(np.zeros((3, 2)), np.zeros((3, 3))), "feature size"),
    (lambda: class_ot_distance(np.zeros((3, 2)), np.full((3, 2), np.nan)), "y"),
    (lambda: class_ot_distance(np.zeros((3, 2)), np.zeros((3, 2)), reg=0), "reg"),
    (lambda: w2_distances([np.zeros((3, 2))]), "samples"),
])
def test_bad_w2_input_is_refused(call, argument):
    from bad_input import assert_refused

    assert_refused(call, argument)
