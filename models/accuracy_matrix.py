"""Figures of a continual-learning run from its accuracy matrix.

``R`` is a ``[T, E]`` float array (usually ``T = E``): ``R[i, j]`` is the
accuracy in ``[0, 1]`` on the test set of experience ``j`` after training
experiences ``0..i``; NaN where it was not measured. Every function here is
pure and trusts that shape and range (:func:`check_accuracy_matrix` checks
them, at a public entry).

Conventions (each function's docstring gives its formula):

* *last accuracy*: mean of the last row (Lopez-Paz & Ranzato 2017, Sec. 2, ACC);
* *average incremental accuracy*: mean over the steps ``i`` of the accuracy on
  the experiences seen so far, ``0..i`` (Rebuffi et al. 2017, iCaRL, Sec. 4);
* *forgetting* of experience ``j``: best (or first) accuracy on ``j`` before the
  last step, minus the last one (Chaudhry et al. 2018, RWalk, Eq. 4-5);
* *backward transfer*: mean of ``R[T-1, j] - R[j, j]`` over ``j < T-1``
  (Lopez-Paz & Ranzato 2017, Sec. 2, BWT).

With ``sizes`` (test samples per experience) the means over experiences are
weighted by them: the accuracy on the union of those test sets, what Avalanche's
``Top1_Acc_Stream`` reports; without, every experience weighs the same (equal
for balanced splits).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "check_test_sizes",
    "accuracy_matrix_from_rows",
    "average_forgetting",
    "average_incremental_accuracy",
    "backward_transfer",
    "check_accuracy_matrix",
    "forgetting_per_experience",
    "last_accuracy",
    "seen_accuracies",
    "summary",
]


def check_accuracy_matrix(values, name: str = "accuracy") -> np.ndarray:
    """``values`` as a ``[T, E]`` float64 array of fractions in ``[0, 1]`` (NaN: not measured).

    Raises:
        TypeError: not numeric.
        ValueError: not a non-empty 2-d matrix, or a value outside ``[0, 1]`` (e.g.
            percentages) or infinite.
    """
    try:
        acc = np.array(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a numeric [T, E] matrix, got {values!r}") from err
    if acc.ndim != 2 or acc.shape[0] < 1 or acc.shape[1] < 1:
        raise ValueError(f"{name} must be a non-empty [T, E] matrix, got shape {acc.shape}")
    measured = acc[~np.isnan(acc)]
    if measured.size and not ((measured >= 0.0) & (measured <= 1.0)).all():
        raise ValueError(
            f"{name} must hold fractions in [0, 1] (NaN where not measured), got values in "
            f"[{measured.min():g}, {measured.max():g}]; divide percentages by 100"
        )
    return acc


def check_test_sizes(sizes, experiences: int, name: str = "sizes") -> np.ndarray | None:
    """``sizes`` (test samples per experience, or ``None``) as ``[E]`` positive float64.

    Raises:
        ValueError: not ``experiences`` finite positive numbers.
    """
    if sizes is None:
        return None
    try:
        out = np.array(sizes, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be {experiences} test-set sizes, got {sizes!r}") from err
    if out.shape != (experiences,) or not (np.isfinite(out) & (out > 0)).all():
        raise ValueError(f"{name} must be {experiences} positive test-set sizes (one per "
                         f"experience), got {sizes!r}")
    return out


def accuracy_matrix_from_rows(rows: dict[int, dict[int, float]],
                              shape: tuple[int, int] | None = None) -> np.ndarray:
    """``R`` from ``{step i: {experience j: accuracy}}``; NaN where absent.

    ``shape`` defaults to ``(max i + 1, max j + 1)``; entries outside it are dropped.
    """
    if shape is None:
        t = max(rows, default=-1) + 1
        e = max((j for r in rows.values() for j in r), default=-1) + 1
        shape = (t, e)
    acc = np.full(shape, np.nan)
    for i, row in rows.items():
        for j, a in row.items():
            if i < shape[0] and j < shape[1]:
                acc[i, j] = a
    return acc


def _weighted_nanmean(values: np.ndarray, sizes: np.ndarray | None) -> float:
    """Mean of the measured (non-NaN) ``values``, weighted by ``sizes``; NaN if none."""
    keep = ~np.isnan(values)
    if not keep.any():
        return math.nan
    if sizes is None:
        return float(np.mean(values[keep]))
    return float(np.average(values[keep], weights=np.asarray(sizes, dtype=np.float64)[keep]))


def last_accuracy(acc: np.ndarray, sizes=None) -> float:
    """``mean_j R[T-1, j]`` over the measured entries of the last row (weighted by ``sizes``).

    Lopez-Paz & Ranzato 2017, Sec. 2 (ACC); with ``sizes``, the final stream accuracy.
    """
    return _weighted_nanmean(acc[-1], sizes)


def seen_accuracies(acc: np.ndarray, sizes=None) -> np.ndarray:
    """``[T]``: ``A_i = mean_{j <= i} R[i, j]``, the accuracy after step ``i`` on the
    experiences seen so far (weighted by ``sizes[:i + 1]``); NaN for a step not measured."""
    return np.array([_weighted_nanmean(acc[i, : i + 1],
                                       None if sizes is None else np.asarray(sizes)[: i + 1])
                     for i in range(acc.shape[0])])


def average_incremental_accuracy(acc: np.ndarray, sizes=None) -> float:
    """``(1 / T) sum_i A_i`` with ``A_i`` of :func:`seen_accuracies`, the first step included
    (Rebuffi et al. 2017, iCaRL, Sec. 4); steps not measured are left out."""
    return _weighted_nanmean(seen_accuracies(acc, sizes), None)


def forgetting_per_experience(acc: np.ndarray, reference: str = "max") -> np.ndarray:
    """``[min(T, E)]``: forgetting of each experience ``j`` at the last step ``T-1``.

    ``f_j = max_{j <= l <= T-2} R[l, j] - R[T-1, j]`` for ``reference="max"``
    (Chaudhry et al. 2018, RWalk, Eq. 4), or ``R[j, j] - R[T-1, j]`` for
    ``"first"`` (right after learning ``j``: Avalanche's ``ExperienceForgetting``,
    and beta of the curriculum F). ``f_{T-1} = 0``; NaN where the reference or
    the last accuracy was not measured.
    """
    t, n = acc.shape[0], min(acc.shape)
    out = np.full(n, np.nan)
    for j in range(n):
        before = acc[j: max(j + 1, t - 1), j] if reference == "max" else acc[j: j + 1, j]
        if not np.isnan(before).all() and not np.isnan(acc[-1, j]):
            out[j] = np.nanmax(before) - acc[-1, j]
    return out


def average_forgetting(acc: np.ndarray, reference: str = "max") -> float:
    """``(1 / (T-1)) sum_{j < T-1} f_j`` (Chaudhry et al. 2018, Eq. 5), NaN entries left out;
    NaN when only one step was trained."""
    return _weighted_nanmean(forgetting_per_experience(acc, reference)[: acc.shape[0] - 1], None)


def backward_transfer(acc: np.ndarray) -> float:
    """``BWT = (1 / (T-1)) sum_{j < T-1} (R[T-1, j] - R[j, j])`` (Lopez-Paz & Ranzato 2017,
    Sec. 2): minus the average ``"first"``-reference forgetting; NaN when ``T = 1``."""
    return -average_forgetting(acc, "first")


def summary(acc: np.ndarray, sizes=None) -> dict[str, float | list[float]]:
    """Every figure above, by name (lists for the per-experience ones)."""
    return {
        "last_accuracy": last_accuracy(acc, sizes),
        "average_incremental_accuracy": average_incremental_accuracy(acc, sizes),
        "average_forgetting": average_forgetting(acc, "max"),
        "backward_transfer": backward_transfer(acc),
        "seen_accuracies": seen_accuracies(acc, sizes).tolist(),
        "forgetting": forgetting_per_experience(acc, "max").tolist(),
    }
