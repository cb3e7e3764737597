"""Optimal-transport distance between classes' feature samples (the Curriculum Designer's OTDD).

Alvarez-Melis & Fusi, "Geometric Dataset Distances via Optimal Transport"
(NeurIPS 2020) compare datasets by optimal transport over (feature, label)
pairs. Between two classes, each a one-label dataset, the label term is the same
for every pair, so what is left is the 2-Wasserstein distance between the two
empirical feature distributions (uniform weights, squared-Euclidean ground cost):

    W2(P_i, P_j) = sqrt( min_{T in U(a, b)} sum_{k,l} T_kl ||x_k - y_l||^2 )

computed with POT: exact (network simplex, ``ot.emd2``) when ``n_i * n_j <=
max_exact ** 2``, else entropic Sinkhorn (``ot.sinkhorn2``) with regularisation
``reg`` times the largest cost (so ``reg`` is scale-free). The matrix is
symmetric with a zero diagonal by construction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..models.core.checks import check_int


def _check_samples(x: object, name: str) -> np.ndarray:
    arr = np.asarray(torch.as_tensor(x).detach().cpu().double())
    if arr.ndim != 2 or arr.shape[0] < 1:
        raise ValueError(f"{name} must be a non-empty [n, D] feature sample, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite (it holds NaN or inf)")
    return arr


def class_ot_distance(
    x: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    max_exact: int = 1000,
    reg: float = 0.05,
) -> float:
    """2-Wasserstein distance between two feature samples ``[n, D]`` and ``[m, D]``.

    Args:
        x, y: the two classes' features (uniform weights).
        max_exact: exact EMD when ``n * m <= max_exact ** 2``, Sinkhorn otherwise.
        reg: Sinkhorn's entropic regularisation, relative to the largest cost (> 0).
    """
    import ot

    a, b = _check_samples(x, "x"), _check_samples(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x and y must have the same feature size, got {a.shape} and {b.shape}")
    check_int(max_exact, "max_exact", minimum=1)
    if not (isinstance(reg, (int, float)) and reg > 0):
        raise ValueError(f"reg must be a number > 0, got {reg!r}")
    cost = ot.dist(a, b, metric="sqeuclidean")
    wa, wb = np.full(len(a), 1.0 / len(a)), np.full(len(b), 1.0 / len(b))
    if len(a) * len(b) <= max_exact**2:
        value = float(ot.emd2(wa, wb, cost, numItermax=10_000_000))
    else:
        scale = float(cost.max()) or 1.0
        value = scale * float(ot.sinkhorn2(wa, wb, cost / scale, reg, numItermax=2000))
    return float(np.sqrt(max(value, 0.0)))


def otdd_distances(
    samples: Sequence[torch.Tensor | np.ndarray], max_exact: int = 1000, reg: float = 0.05
) -> np.ndarray:
    """``[C, C]`` matrix of :func:`class_ot_distance` between classes' samples.

    Args:
        samples: one ``[n_c, D]`` feature sample per class, in row order.
        max_exact, reg: as :func:`class_ot_distance`.

    Returns:
        float64, symmetric, zero diagonal.
    """
    if len(samples) < 2:
        raise ValueError(f"samples must hold at least 2 classes, got {len(samples)}")
    c = len(samples)
    d = np.zeros((c, c))
    for i in range(c):
        for j in range(i + 1, c):
            d[i, j] = d[j, i] = class_ot_distance(samples[i], samples[j], max_exact, reg)
    return d
