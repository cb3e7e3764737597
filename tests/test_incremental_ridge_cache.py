"""IncrementalRidge's cached solution is never stale: reading ``weight`` between fits.

A solution read after one batch must not be served after the next one: each
``weight`` equals an independent ridge solve (numpy lstsq on the stacked system)
of every batch seen so far, for both methods.
"""

import numpy as np
import pytest
import torch

from neve.models import IncrementalRidge


def lstsq_ridge(x: np.ndarray, labels: np.ndarray, gamma: float, classes: int) -> np.ndarray:
    """``(X^T X + gamma I)^-1 X^T Y``: lstsq of ``[X; sqrt(g) I] W = [Y; 0]``."""
    y = np.eye(classes)[labels]
    a = np.vstack([x, np.sqrt(gamma) * np.eye(x.shape[1])])
    b = np.vstack([y, np.zeros((x.shape[1], classes))])
    return np.linalg.lstsq(a, b, rcond=None)[0]


@pytest.mark.parametrize("method", ["accumulate", "woodbury"])
def test_weight_read_between_fits_is_the_solution_of_everything_seen(method):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(90, 12, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (90,), generator=g)
    y[:4] = torch.arange(4)  # every class in the first batch: the same columns throughout
    head = IncrementalRidge(12, 0.5, method)
    for stop in (30, 60, 90):
        head.partial_fit(x[stop - 30:stop], y[stop - 30:stop])
        want = lstsq_ridge(x[:stop].numpy(), y[:stop].numpy(), 0.5, 4)
        np.testing.assert_allclose(head.weight.numpy(), want, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(head(x[:5]).numpy(), x[:5].numpy() @ want, rtol=1e-9,
                                   atol=1e-12)
