"""The Curriculum Designer score of a class order (Singh et al., "Learning to Learn:
How to Continuously Teach Humans and Machines", ICCV 2023, Sec. 3).

The Curriculum Designer (CD) ranks the orders in which classes are taught from
the similarity of class prototypes under a frozen teacher network:

1. prototypes ``p_c``: mean teacher embedding of the training images of class
   ``c`` (:func:`class_prototypes`);
2. ``D[i, j]``: cosine (default) or Euclidean distance between prototypes
   (:func:`prototype_distances`);
3. ``d = D / D.sum(1)``: each row divided by its sum (:func:`normalize_rows`);
4. ``var[i] = Var(d[i, :])`` (population variance over the whole row, the zero
   diagonal included), rescaled so that ``sum(var) = 1`` (:func:`row_variances`);
5. the score of an order ``o = (o_0, ..., o_{n-1})`` (:func:`curriculum_score`,
   vectorised in :func:`score_orders`)::

       S(o) = (1 - var[o_0])
              + sum_{k=0}^{K-1} [ (1 - d[o_k, o_{n-1-k}]) + d[o_k, o_{k+1}] ],
       K = ceil((n - 1) / 2).

   A central first class (low variance) is rewarded; each early class is
   rewarded for being far from its successor and close to the class at the
   mirrored position from the end (late classes resemble early ones). For
   ``n = 5`` this is ``(1-var[a]) + d(a,b) + (1-d(a,e)) + d(b,c) + (1-d(b,d))``.

This is the form of the authors' ``ScoreCurriculum`` (Learning2Learn,
``continual baselines/utils/curriculum_utils.py``: the walk adds the mirrored and
successor terms for ``k = 0, 1, ...`` and stops once ``1 + 2(k+1) >= n``), with
their normalisation (``inter-dataset similarity.ipynb``: rows divided by their
sum, ``np.var`` of each full row, variances divided by their sum). For **even**
``n`` the last step (``k = n/2 - 1``) has ``o_{n-1-k} = o_{k+1}``, so it adds
``1 - d + d = 1``: a constant that does not change the ranking, and the middle
pair's adjacency is not rewarded. neve implements exactly this variant. ``d`` is
not symmetric (rows are normalised separately).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from ..models.core.checks import Constraint, OneOf, check_int, validated
from ..models.core.data_checks import check_labels

PROTOTYPE_DISTANCES = ("cosine", "euclidean")


def as_class_list(classes: Sequence[int], name: str) -> list[int]:
    """``classes`` as a list of ints, or a TypeError naming the argument ``name``.

    Integers (Python, numpy, 0-d integer tensors) only: a string, a float such as
    ``7.5`` or a bool is refused rather than converted.
    """
    if isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__"):
        raise TypeError(f"{name} must be a sequence of integer class labels, got {classes!r}")
    try:
        return [check_int(c, name) for c in classes]
    except TypeError as err:
        raise TypeError(
            f"{name} must be a sequence of integer class labels, got {classes!r}"
        ) from err


class ClassOrder(Constraint):
    """A class order (:func:`check_order`): at least 2 distinct integer labels, as a list."""

    def _expected(self) -> str:
        return "a class order (at least 2 distinct integer labels)"

    def _check(self, value: object, name: str) -> list[int]:
        return check_order(value, name=name)


def check_order(
    order: Sequence[int], classes: Sequence[int] | None = None, name: str = "order"
) -> list[int]:
    """Validate a class order and return it as a list of ints.

    Args:
        order: class labels in teaching order.
        classes: if given, ``order`` must be a permutation of exactly these classes.
        name: argument name used in error messages.

    Raises:
        ValueError: fewer than 2 classes, a repeated class, a missing class or a
            class outside ``classes`` -- naming them.
    """
    order = as_class_list(order, name)
    if len(order) < 2:
        raise ValueError(f"{name} must hold at least 2 classes, got {order}")
    repeated = sorted(c for c, k in Counter(order).items() if k > 1)
    if repeated:
        raise ValueError(f"{name} repeats classes {repeated}: {order}")
    if classes is not None:
        expected = set(as_class_list(classes, "classes"))
        missing = sorted(expected - set(order))
        extra = sorted(set(order) - expected)
        if missing or extra:
            raise ValueError(
                f"{name} must be a permutation of classes {sorted(expected)}: "
                + (f"it misses {missing}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"it has classes not among them {extra}" if extra else "")
            )
    return order


def features_and_targets(
    features: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """``features`` as a finite ``[N, D]`` tensor and ``targets`` as ``[N]`` int64.

    Raises:
        TypeError: ``features`` is not numeric, ``targets`` not integer labels.
        ValueError: wrong shapes, a NaN or inf feature, non-integer or negative labels.
    """
    try:
        features = torch.as_tensor(features)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"features must be a numeric [N, D] tensor or array, got {type(features).__name__}"
        ) from err
    if features.dtype == torch.bool or features.is_complex():
        raise TypeError(f"features must be real numbers, got dtype {features.dtype}")
    if features.dim() != 2:
        raise ValueError(f"features must be [N, D], got shape {tuple(features.shape)}")
    targets = check_labels(targets, "targets")
    if features.shape[0] != targets.shape[0]:
        raise ValueError(
            f"features [N, D] and targets [N] must have the same N, got {tuple(features.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if features.is_floating_point() and not bool(torch.isfinite(features).all()):
        bad = torch.nonzero(~torch.isfinite(features).all(dim=1)).flatten().tolist()
        raise ValueError(f"features must be finite: rows {bad[:10]} hold NaN or inf")
    return features, targets


def class_prototypes(
    features: torch.Tensor, targets: torch.Tensor, classes: Sequence[int]
) -> torch.Tensor:
    """Mean feature vector of each class (Singh et al. 2023, Sec. 3, CD step 1).

    Args:
        features: ``[N, D]`` embeddings.
        targets: ``[N]`` integer labels.
        classes: the ``C`` classes, in the row order of the result.

    Returns:
        ``[C, D]`` float64 prototypes.

    Raises:
        ValueError: a class of ``classes`` has no sample in ``targets``.
    """
    features, targets = features_and_targets(features, targets)
    counts = [int((targets == c).sum()) for c in classes]
    empty = [c for c, k in zip(classes, counts, strict=True) if k == 0]
    if empty:
        raise ValueError(f"classes {empty} have no samples in targets")
    return torch.stack([features[targets == c].double().mean(0) for c in classes])


@validated(distance=OneOf(*PROTOTYPE_DISTANCES, hints={
    "otdd": "otdd needs per-class samples: neve.benchmarks.otdd"}))
def prototype_distances(prototypes: torch.Tensor, distance: str = "cosine") -> np.ndarray:
    """Pairwise distances ``D[i, j]`` between prototypes (CD step 2).

    Args:
        prototypes: ``[C, D]``.
        distance: ``"cosine"`` (``1 - cos``, as ``scipy.spatial.distance.cosine``)
            or ``"euclidean"``.

    Returns:
        ``[C, C]`` float64 array, zero diagonal, symmetric.
    """
    p = torch.as_tensor(prototypes).double()
    if distance == "cosine":
        norms = p.norm(dim=1, keepdim=True)
        if bool((norms == 0).any()):
            raise ValueError("a prototype is the zero vector: cosine distance is undefined")
        u = p / norms
        d = 1.0 - u @ u.T
    else:
        d = torch.cdist(p, p)
    d = d.clamp_min(0.0).numpy().copy()
    np.fill_diagonal(d, 0.0)
    return d


def normalize_rows(distances: np.ndarray) -> np.ndarray:
    """Each row divided by its sum, so rows sum to 1 (CD step 3).

    Args:
        distances: ``[C, C]`` non-negative distances.

    Raises:
        ValueError: a row sums to zero (its class's prototype equals all others).
    """
    d = np.asarray(distances, dtype=np.float64)
    sums = d.sum(axis=1, keepdims=True)
    zero = np.flatnonzero(sums[:, 0] <= 0)
    if zero.size:
        raise ValueError(f"rows {zero.tolist()} of the distance matrix sum to zero")
    return d / sums


def row_variances(normalized: np.ndarray) -> np.ndarray:
    """Variance of each row of the normalised distances, rescaled to sum to 1 (CD step 4).

    Population variance (``ddof=0``) over the whole row, diagonal included, as in
    the authors' code.

    Returns:
        ``[C]`` float64, summing to 1.
    """
    v = np.var(np.asarray(normalized, dtype=np.float64), axis=1)
    total = v.sum()
    if total <= 0:
        raise ValueError("all rows of the normalised distances have zero variance")
    return v / total


def score_steps(n: int) -> int:
    """Number of walk steps ``K = ceil((n - 1) / 2)`` of the score for ``n`` classes."""
    return n // 2


def curriculum_score(order: Sequence[int], d: np.ndarray, var: np.ndarray) -> float:
    """CD score ``S(o)`` of one order (module docstring; Singh et al. 2023, Sec. 3).

    Args:
        order: ``n`` distinct indices into ``d`` / ``var`` (positions, not labels).
        d: ``[n, n]`` row-normalised distances.
        var: ``[n]`` rescaled row variances.
    """
    o = list(order)
    n = len(o)
    s = 1.0 - float(var[o[0]])
    for k in range(score_steps(n)):
        s += (1.0 - float(d[o[k], o[n - 1 - k]])) + float(d[o[k], o[k + 1]])
    return s


def score_orders(orders: np.ndarray, d: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Vectorised :func:`curriculum_score` over many orders.

    Args:
        orders: ``[M, n]`` integer array, each row a permutation of ``range(n)``.
        d: ``[n, n]`` row-normalised distances.
        var: ``[n]`` rescaled row variances.

    Returns:
        ``[M]`` float64 scores.
    """
    orders = np.asarray(orders)
    n = orders.shape[1]
    s = 1.0 - var[orders[:, 0]]
    for k in range(score_steps(n)):
        s = s + (1.0 - d[orders[:, k], orders[:, n - 1 - k]]) + d[orders[:, k], orders[:, k + 1]]
    return s
