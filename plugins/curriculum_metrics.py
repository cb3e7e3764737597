"""Curriculum effectiveness F (Singh et al., "Learning to Learn", ICCV 2023).

For a class-incremental run over ``T`` experiences, with ``acc[t, j]`` the test
accuracy on experience ``j`` after training experience ``t``:

* ``alpha = mean_j acc[T-1, j]`` -- final mean accuracy over the experiences;
* ``beta = acc[0, 0] - acc[T-1, 0]`` -- how much of the first experience was
  forgotten between just after learning it and the end;
* ``F = 2 * alpha / (beta * alpha + 1)`` (Singh et al. 2023, Sec. 4; the
  authors' ``CurriculumUtils`` computes the same from their logs).

:func:`curriculum_effectiveness` computes them from an accuracy matrix;
:class:`CurriculumEffectiveness` is an Avalanche ``PluginMetric`` that measures
the matrix during evaluation and reports alpha, beta and F after every
evaluation of a stream, beside Avalanche's own metrics in an
``EvaluationPlugin``.
"""

from __future__ import annotations

import numpy as np
import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue


def effectiveness_f(alpha: float, beta: float) -> float:
    """``F = 2 * alpha / (beta * alpha + 1)`` (Singh et al. 2023)."""
    return 2.0 * float(alpha) / (float(beta) * float(alpha) + 1.0)


def curriculum_effectiveness(accuracy: np.ndarray) -> tuple[float, float, float]:
    """``(alpha, beta, F)`` from an accuracy matrix.

    Args:
        accuracy: ``[T, E]`` (usually ``T = E``), ``accuracy[t, j]`` the accuracy
            in ``[0, 1]`` on experience ``j`` after training experience ``t``;
            entries of experiences not yet seen may be NaN.

    Returns:
        ``alpha`` = mean of the last row (NaNs ignored), ``beta`` =
        ``accuracy[0, 0] - accuracy[-1, 0]``, and ``F``.
    """
    acc = np.asarray(accuracy, dtype=np.float64)
    if acc.ndim != 2 or acc.shape[0] < 1 or acc.shape[1] < 1:
        raise ValueError(f"accuracy must be a non-empty [T, E] matrix, got shape {acc.shape}")
    if np.isnan(acc[0, 0]) or np.isnan(acc[-1, 0]) or np.all(np.isnan(acc[-1])):
        raise ValueError("accuracy[0, 0], accuracy[-1, 0] and the last row must be measured")
    alpha = float(np.nanmean(acc[-1]))
    beta = float(acc[0, 0] - acc[-1, 0])
    return alpha, beta, effectiveness_f(alpha, beta)


def _trained_experience_index(strategy) -> int:
    """Index of the (origin) experience just trained; online sub-experiences map to their origin."""
    exp = strategy.experience
    try:
        origin = exp.origin_experience
        return int(origin.current_experience)
    except (AttributeError, ValueError):  # not online, or masked (MaskedAttributeError)
        return int(exp.current_experience)


class CurriculumEffectiveness(PluginMetric[dict]):
    """Avalanche metric reporting alpha, beta and F of the curriculum so far.

    Each evaluation measures the accuracy on every evaluated experience; rows of
    the accuracy matrix are indexed by the last trained experience (for online
    streams, the origin experience of the last mini-experience). After each
    evaluation of a stream it emits, when at least one experience was trained:

    * ``CurriculumAlpha/eval_phase/<stream>``: mean accuracy over the
      experiences trained so far (at the end: over all experiences);
    * ``CurriculumBeta/eval_phase/<stream>``: accuracy on experience 0 at the
      last evaluation while experience 0 was the latest trained, minus now;
    * ``CurriculumF/eval_phase/<stream>``: ``2 alpha / (beta alpha + 1)``.

    State is plain Python numbers (checkpoint-safe); see :meth:`state_dict`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.trained_upto = -1
        self.first_after_learning: dict[str, float] = {}
        self.rows: dict[str, dict[int, dict[int, float]]] = {}
        self._correct: dict[int, int] = {}
        self._total: dict[int, int] = {}

    # -- Metric API
    def reset(self) -> None:
        self._correct, self._total = {}, {}

    def result(self) -> dict:
        """Accuracy of each ``(stream name, experience)`` of the evaluation in progress."""
        return {k: self._correct[k] / self._total[k] for k in self._total if self._total[k]}

    # -- callbacks
    def after_training_exp(self, strategy):
        self.trained_upto = max(self.trained_upto, _trained_experience_index(strategy))

    def before_eval(self, strategy):
        self.reset()

    def after_eval_iteration(self, strategy):
        exp = strategy.experience
        key = (exp.origin_stream.name, int(exp.current_experience))
        pred = torch.as_tensor(strategy.mb_output).argmax(dim=1)
        y = torch.as_tensor(strategy.mb_y)
        self._correct[key] = self._correct.get(key, 0) + int((pred == y).sum())
        self._total[key] = self._total.get(key, 0) + int(y.numel())

    def after_eval(self, strategy):
        if self.trained_upto < 0:
            return None
        per_stream: dict[str, dict[int, float]] = {}
        for (stream, j), acc in self.result().items():
            per_stream.setdefault(stream, {})[j] = acc
        values = []
        x = strategy.clock.train_iterations
        for stream, accs in per_stream.items():
            self.rows.setdefault(stream, {})[self.trained_upto] = accs
            if 0 not in accs:
                continue
            if self.trained_upto == 0:
                self.first_after_learning[stream] = accs[0]
            if stream not in self.first_after_learning:
                continue
            seen = [accs[j] for j in range(self.trained_upto + 1) if j in accs]
            alpha = float(np.mean(seen))
            beta = self.first_after_learning[stream] - accs[0]
            f = effectiveness_f(alpha, beta)
            values += [
                MetricValue(self, f"CurriculumAlpha/eval_phase/{stream}_stream", alpha, x),
                MetricValue(self, f"CurriculumBeta/eval_phase/{stream}_stream", beta, x),
                MetricValue(self, f"CurriculumF/eval_phase/{stream}_stream", f, x),
            ]
        return values or None

    def accuracy_matrix(self, stream: str = "test") -> np.ndarray:
        """``[T, E]`` accuracies measured on ``stream`` (NaN where not evaluated)."""
        rows = self.rows.get(stream, {})
        if not rows:
            return np.zeros((0, 0))
        t = max(rows) + 1
        e = max(max(r) for r in rows.values() if r) + 1
        acc = np.full((t, e), np.nan)
        for i, r in rows.items():
            for j, a in r.items():
                acc[i, j] = a
        return acc

    # -- state
    def state_dict(self) -> dict:
        return {
            "trained_upto": self.trained_upto,
            "first_after_learning": dict(self.first_after_learning),
            "rows": {s: {i: dict(r) for i, r in rows.items()} for s, rows in self.rows.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.trained_upto = int(state["trained_upto"])
        self.first_after_learning = dict(state["first_after_learning"])
        self.rows = {s: {i: dict(r) for i, r in rows.items()} for s, rows in state["rows"].items()}
        self.reset()

    def __str__(self) -> str:
        return "CurriculumEffectiveness"
