"""Optimal Transport Dataset Distance between classes (the Curriculum Designer's OTDD).

Alvarez-Melis & Fusi, "Geometric Dataset Distances via Optimal Transport"
(NeurIPS 2020), Sec. 3: a dataset is a distribution over pairs ``z = (x, y)``;
a label ``y`` is represented by the distribution ``alpha_y`` of its features, and
two pairs are compared with the label-augmented ground cost (p = 2)

    c((x, y), (x', y')) = |x - x'|^2 / 2 + W(alpha_y, alpha_y') / 2,

the 1/2 being the geomloss convention ``|.|^p / p`` that the authors' code
(``microsoft/otdd``, ``DatasetDistance``) applies to both terms. The OTDD is the
optimal-transport problem with that cost between the two datasets' uniform
samples. No square root is taken.

Between two classes ``i`` and ``j``, each its own single-label dataset (as the
Learning2Learn authors call it), the label term is one constant ``W_ij / 2``
for every pair of points, so the plan is the feature problem's and

    OTDD_ij = F(X_i, X_j) + W_ij / 2,

with the feature part ``F``:

- ``method="exact"``: ``OT_0`` with cost ``|x - x'|^2 / 2`` (``ot.emd2``), i.e.
  ``W2^2(X_i, X_j) / 2``;
- ``method="debiased"``: the Sinkhorn divergence ``S_eps`` with that cost
  (the reference's ``debiased_loss=True``; ``eps = entreg = 0.1`` absolute).
  Within one dataset the label term is ``0``, so the debiasing removes no
  label term.

and the label term ``W_ij``:

- ``label="entropic"``: ``OT_eps`` between the two classes' samples with cost
  ``|x - x'|^2`` and no debiasing (the reference's ``inner_ot_method='exact'``
  with its default inner Sinkhorn, as Learning2Learn calls it). It is positive
  on the diagonal (``W_ii`` is the entropic bias), so the matrix's diagonal is
  ``W_ii / 2 > 0``;
- ``label="exact"``: ``OT_0`` with cost ``|x - x'|^2`` (the ``eps -> 0`` limit of
  the entropic term); zero diagonal;
- ``label="gaussian"``: the squared Bures-Wasserstein distance between the
  classes' Gaussian fits (the library's default ``gaussian_approx``, Sec. 4);
  zero diagonal.

How far the entropic forms are from the exact ones: with uniform weights
``OT_0 <= OT_eps <= OT_0 + eps log min(n, m)`` (the KL term of a plan is at most
``log min(n, m)``), so the reference's value (debiased, entropic label) is within
``1.5 eps log max(n, m)`` of ``method="exact", label="exact"``, which is
``W2^2(X_i, X_j)``; its diagonal is at most ``eps log n / 2``. When ``eps`` is
small against the features' squared distances (deep features: thousands against
``eps = 0.1``) the exact forms give the reference's matrix to that bound at the
cost of two EMDs, where Sinkhorn needs of the order of ``max C / eps`` iterations.

``w2_distances`` keeps the 2-Wasserstein distance ``sqrt(OT_0)`` with cost
``|x - x'|^2`` and no label term, as its own distance.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..models.core.checks import OneOf, Real, check_int, validated
from .optimal_transport import (
    bures_wasserstein_squared,
    entropic_ot,
    exact_ot,
    gaussian_fit,
    sinkhorn_divergence,
    squared_distances,
)

REFERENCE_EPSILON = 0.1
METHODS = ("debiased", "exact")
LABEL_TERMS = ("entropic", "exact", "gaussian")


def _check_samples(x: object, name: str) -> torch.Tensor:
    arr = torch.as_tensor(np.asarray(torch.as_tensor(x).detach().cpu())).double()
    if arr.dim() != 2 or arr.shape[0] < 1:
        raise ValueError(
            f"{name} must be a non-empty [n, D] feature sample, got {tuple(arr.shape)}"
        )
    if not bool(torch.isfinite(arr).all()):
        raise ValueError(f"{name} must be finite (it holds NaN or inf)")
    return arr


def _check_class_samples(samples: Sequence, minimum: int) -> list[torch.Tensor]:
    if len(samples) < 2:
        raise ValueError(f"samples must hold at least 2 classes, got {len(samples)}")
    checked = [_check_samples(s, f"samples[{c}]") for c, s in enumerate(samples)]
    dims = {s.shape[1] for s in checked}
    if len(dims) != 1:
        raise ValueError(f"samples must share one feature size, got {sorted(dims)}")
    small = [c for c, s in enumerate(checked) if s.shape[0] < minimum]
    if small:
        raise ValueError(f"samples {small} need at least {minimum} points each (a covariance)")
    return checked


def label_distance(x: torch.Tensor, y: torch.Tensor, label: str, eps: float) -> float:
    """``W(alpha_x, alpha_y)`` between two classes' float64 samples ``[n, D]``, ``[m, D]``.

    ``"entropic"``: ``OT_eps`` with cost ``|x - x'|^2``, not debiased; ``"exact"``:
    ``OT_0`` with that cost; ``"gaussian"``: squared Bures-Wasserstein
    between the Gaussian fits (needs ``n, m >= 2``).
    """
    if label == "gaussian":
        return bures_wasserstein_squared(*gaussian_fit(x), *gaussian_fit(y))
    if label == "exact":
        return exact_ot(squared_distances(x, y))
    return entropic_ot(squared_distances(x, y), eps)


def _feature_part(x: torch.Tensor, y: torch.Tensor, method: str, eps: float) -> float:
    half = 0.5 * squared_distances(x, y)
    if method == "exact":
        return exact_ot(half)
    return sinkhorn_divergence(
        half, 0.5 * squared_distances(x, x), 0.5 * squared_distances(y, y), eps
    )


_OTDD_ARGS = {
    "method": OneOf(*METHODS),
    "label": OneOf(*LABEL_TERMS),
    "eps": Real(gt=0.0),
}


@validated(**_OTDD_ARGS)
def class_otdd(
    x: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    method: str = "debiased",
    label: str = "entropic",
    eps: float = REFERENCE_EPSILON,
) -> float:
    """``OTDD(X, Y) = F(X, Y) + W(X, Y) / 2`` between two single-label datasets (module docstring).

    Args:
        x, y: the two classes' features ``[n, D]``, ``[m, D]`` (uniform weights).
        method: ``"debiased"`` (Sinkhorn divergence) or ``"exact"`` feature part.
        label: ``"entropic"``, ``"exact"`` or ``"gaussian"`` label term.
        eps: the entropic regularisation, absolute (the reference's ``entreg``).
    """
    a, b = _check_class_samples([x, y], 2 if label == "gaussian" else 1)
    return _feature_part(a, b, method, eps) + 0.5 * label_distance(a, b, label, eps)


@validated(**_OTDD_ARGS)
def otdd_distances(
    samples: Sequence[torch.Tensor | np.ndarray],
    method: str = "debiased",
    label: str = "entropic",
    eps: float = REFERENCE_EPSILON,
) -> np.ndarray:
    """``[C, C]`` matrix of :func:`class_otdd` between classes' samples, diagonal included.

    The diagonal compares a class with itself: its feature part is ``0``
    (exactly, in both methods), its label term ``W_ii / 2`` (the entropic bias
    for ``label="entropic"``, ``0`` for the others).

    Args:
        samples: one ``[n_c, D]`` feature sample per class, in row order.
        method, label, eps: as :func:`class_otdd`.

    Returns:
        float64, symmetric.
    """
    classes = _check_class_samples(samples, 2 if label == "gaussian" else 1)
    c = len(classes)
    d = np.zeros((c, c))
    for i in range(c):
        if label == "entropic":
            d[i, i] = 0.5 * label_distance(classes[i], classes[i], label, eps)
        for j in range(i + 1, c):
            feature = _feature_part(classes[i], classes[j], method, eps)
            d[i, j] = d[j, i] = feature + 0.5 * label_distance(classes[i], classes[j], label, eps)
    return d


def class_ot_distance(
    x: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    max_exact: int = 1000,
    reg: float = 0.05,
) -> float:
    """2-Wasserstein distance ``sqrt(min_T <T, |x - y|^2>)`` between two feature samples.

    Exact EMD when ``n * m <= max_exact ** 2``, else POT's Sinkhorn with
    regularisation ``reg`` times the largest cost (scale-free). No label term.

    Args:
        x, y: the two classes' features ``[n, D]`` and ``[m, D]`` (uniform weights).
        max_exact: exact EMD when ``n * m <= max_exact ** 2``, Sinkhorn otherwise.
        reg: Sinkhorn's entropic regularisation, relative to the largest cost (> 0).
    """
    import ot

    a, b = _check_samples(x, "x"), _check_samples(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"x and y must have the same feature size, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    check_int(max_exact, "max_exact", minimum=1)
    if not (isinstance(reg, (int, float)) and reg > 0):
        raise ValueError(f"reg must be a number > 0, got {reg!r}")
    cost = squared_distances(a, b)
    if len(a) * len(b) <= max_exact**2:
        value = exact_ot(cost)
    else:
        c = cost.numpy()
        wa, wb = np.full(len(a), 1.0 / len(a)), np.full(len(b), 1.0 / len(b))
        scale = float(c.max()) or 1.0
        value = scale * float(ot.sinkhorn2(wa, wb, c / scale, reg, numItermax=2000))
    return float(np.sqrt(max(value, 0.0)))


def w2_distances(
    samples: Sequence[torch.Tensor | np.ndarray], max_exact: int = 1000, reg: float = 0.05
) -> np.ndarray:
    """``[C, C]`` matrix of :func:`class_ot_distance` (W2, no label term): symmetric, zero diagonal.

    Args:
        samples: one ``[n_c, D]`` feature sample per class, in row order.
        max_exact, reg: as :func:`class_ot_distance`.
    """
    if len(samples) < 2:
        raise ValueError(f"samples must hold at least 2 classes, got {len(samples)}")
    c = len(samples)
    d = np.zeros((c, c))
    for i in range(c):
        for j in range(i + 1, c):
            d[i, j] = d[j, i] = class_ot_distance(samples[i], samples[j], max_exact, reg)
    return d
