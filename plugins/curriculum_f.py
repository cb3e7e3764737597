"""Curriculum effectiveness F (Singh et al., "Learning to Learn", ICCV 2023, Sec. 4): the math.

For a class-incremental run over ``T`` experiences, with ``acc[t, j]`` the test
accuracy in ``[0, 1]`` on experience ``j`` after training experience ``t``:

* ``alpha = mean_j acc[T-1, j]`` -- final mean accuracy over the experiences, in ``[0, 1]``;
* ``beta = acc[0, 0] - acc[T-1, 0]`` -- how much of the first experience was
  forgotten between just after learning it and the end, in ``[-1, 1]``
  (negative when its accuracy rose);
* ``F = 2 * alpha / (beta * alpha + 1)`` (the authors' ``CurriculumUtils``
  computes the same from their logs). ``beta * alpha + 1`` is ``0`` only at
  ``alpha = 1, beta = -1``, where F is ``inf`` (its limit).

:class:`~neve.plugins.CurriculumEffectiveness` measures the matrix during an
Avalanche run and applies :func:`effectiveness_f`.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..models.accuracy_matrix import (
    check_accuracy_matrix,
    forgetting_per_experience,
    last_accuracy,
)


def _real(value, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
    out = float(value)
    if not low <= out <= high:  # also false for NaN
        raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {value!r}")
    return out


def effectiveness_f(alpha: float, beta: float) -> float:
    """``F = 2 * alpha / (beta * alpha + 1)`` (Singh et al. 2023, Sec. 4).

    Args:
        alpha: final mean accuracy, in ``[0, 1]``.
        beta: drop of the first experience's accuracy, in ``[-1, 1]``.

    Returns:
        F in ``[0, inf]``; ``inf`` only at ``alpha = 1, beta = -1``.

    Raises:
        TypeError, ValueError: ``alpha`` or ``beta`` not a number in its range (NaN included).
    """
    alpha = _real(alpha, "alpha", 0.0, 1.0)
    beta = _real(beta, "beta", -1.0, 1.0)
    denominator = beta * alpha + 1.0
    if denominator == 0.0:
        return math.inf
    return 2.0 * alpha / denominator


def curriculum_effectiveness(accuracy: np.ndarray) -> tuple[float, float, float]:
    """``(alpha, beta, F)`` from an accuracy matrix.

    Args:
        accuracy: ``[T, E]`` (usually ``T = E``), ``accuracy[t, j]`` the accuracy
            in ``[0, 1]`` (not percent) on experience ``j`` after training
            experience ``t``; entries of experiences not yet seen may be NaN.

    Returns:
        ``alpha`` = mean of the last row (NaNs ignored), ``beta`` =
        ``accuracy[0, 0] - accuracy[-1, 0]``, and ``F``: alpha is the last accuracy
        and beta the forgetting of experience 0 (reference: right after learning
        it) of :mod:`neve.models.accuracy_matrix`.

    Raises:
        TypeError: ``accuracy`` is not numeric.
        ValueError: not a non-empty 2-d matrix, a value outside ``[0, 1]`` (e.g.
            percentages) or infinite, or ``accuracy[0, 0]``, ``accuracy[-1, 0]``
            or the whole last row NaN.
    """
    acc = check_accuracy_matrix(accuracy)
    if np.isnan(acc[0, 0]) or np.isnan(acc[-1, 0]) or np.all(np.isnan(acc[-1])):
        raise ValueError("accuracy[0, 0], accuracy[-1, 0] and the last row must be measured")
    alpha = last_accuracy(acc)
    beta = float(forgetting_per_experience(acc, reference="first")[0])
    return alpha, beta, effectiveness_f(alpha, beta)
