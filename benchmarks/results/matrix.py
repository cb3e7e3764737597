"""An accuracy matrix from what an Avalanche run reports.

:func:`accuracy_matrix_of` reads ``R[i, j]`` (accuracy on experience ``j`` after
training step ``i``) from any of:

* the results of ``strategy.eval`` after each training experience, in order (a
  list of dicts with Avalanche's ``Top1_Acc_Exp/eval_phase/<stream>_stream/
  Task<t>/Exp<j>`` keys, from ``accuracy_metrics(experience=True)``);
* an ``EvaluationPlugin``'s ``get_all_metrics()`` (``name -> (x positions,
  values)``): one row per distinct x position (training iteration) at which an
  experience was evaluated, in order, so evaluate after each training experience
  (and not periodically inside one);
* an ``EvaluationPlugin``, or one of its metrics: Avalanche's
  ``AccuracyMatrixPluginMetric`` (rows up to the last training step; Avalanche
  keeps 0, not NaN, where it did not evaluate) or neve's
  ``CurriculumEffectiveness`` (NaN where not evaluated).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
from avalanche.evaluation.metrics import AccuracyMatrixPluginMetric
from avalanche.training.plugins import EvaluationPlugin

from ...models.accuracy_matrix import accuracy_matrix_from_rows, check_accuracy_matrix
from ...models.core.checks import STREAM, validated

__all__ = ["EXPERIENCE_ACCURACY", "accuracy_matrix_of"]

#: Avalanche's per-experience accuracy key: stream name, task label and experience id.
EXPERIENCE_ACCURACY = re.compile(
    r"^Top1_Acc_Exp/eval_phase/(?P<stream>.+)_stream/Task(?P<task>\d+)/Exp(?P<exp>\d+)$")


def _experience_accuracies(results: Mapping, stream: str) -> dict[int, float]:
    """``{experience: accuracy}`` of one evaluation's results dict."""
    out = {}
    for name, value in results.items():
        match = EXPERIENCE_ACCURACY.match(str(name))
        if match and match["stream"] == stream:
            out[int(match["exp"])] = float(value)
    return out


def _from_all_metrics(history: Mapping, stream: str) -> np.ndarray:
    """One row per x position of ``get_all_metrics()``'s per-experience accuracies."""
    points: dict[int, dict[int, float]] = {}
    for name, (xs, values) in history.items():
        match = EXPERIENCE_ACCURACY.match(str(name))
        if match and match["stream"] == stream:
            for x, value in zip(xs, values, strict=True):
                points.setdefault(int(x), {})[int(match["exp"])] = float(value)
    return accuracy_matrix_from_rows({i: points[x] for i, x in enumerate(sorted(points))})


def _from_metric(metric, stream: str) -> np.ndarray | None:
    if isinstance(metric, AccuracyMatrixPluginMetric):
        steps = metric.num_training_steps
        matrix = metric.matrix.detach().cpu().double().numpy()
        return matrix[: (steps + 1 if steps is not None else matrix.shape[0])]
    if callable(getattr(metric, "accuracy_matrix", None)):  # neve's CurriculumEffectiveness
        return metric.accuracy_matrix(stream)
    return None


@validated(stream=STREAM)
def accuracy_matrix_of(source, stream: str = "test") -> np.ndarray:
    """``[T, E]`` accuracy matrix of ``source`` (see the module docstring) on ``stream``.

    Raises:
        TypeError: ``source`` is none of the kinds above.
        ValueError: it holds no per-experience accuracy of ``stream``, or values outside
            ``[0, 1]``.
    """
    matrix = None
    if isinstance(source, EvaluationPlugin):
        found = [m for m in (_from_metric(m, stream) for m in source.metrics) if m is not None]
        matrix = found[0] if found else _from_all_metrics(source.get_all_metrics(), stream)
    elif isinstance(source, Mapping):
        pairs = all(isinstance(v, tuple) and len(v) == 2 for v in source.values())
        matrix = _from_all_metrics(source, stream) if pairs and source else \
            accuracy_matrix_from_rows({0: _experience_accuracies(source, stream)})
    elif isinstance(source, Sequence) and not isinstance(source, str):
        if not all(isinstance(r, Mapping) for r in source):
            raise TypeError("source must be a list of strategy.eval results (dicts)")
        matrix = accuracy_matrix_from_rows(
            {i: _experience_accuracies(r, stream) for i, r in enumerate(source)})
    else:
        matrix = _from_metric(source, stream)
    if matrix is None:
        raise TypeError("source must be strategy.eval results (a dict or a list of them), "
                        "an EvaluationPlugin's get_all_metrics(), an EvaluationPlugin, an "
                        f"AccuracyMatrixPluginMetric or a CurriculumEffectiveness; got "
                        f"{type(source).__name__}")
    if matrix.size == 0 or np.isnan(matrix).all():
        raise ValueError(f"source holds no per-experience accuracy of stream {stream!r} "
                         "(Top1_Acc_Exp/eval_phase/<stream>_stream/...: add "
                         "accuracy_metrics(experience=True) to the evaluator)")
    return check_accuracy_matrix(matrix, "source's accuracies")
