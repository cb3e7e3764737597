"""Curriculum effectiveness F as an Avalanche metric (Singh et al., "Learning to Learn", ICCV 2023).

:class:`CurriculumEffectiveness` is a ``PluginMetric`` that measures the
accuracy matrix ``acc[t, j]`` (accuracy on experience ``j`` after training
experience ``t``) during evaluation and reports alpha, beta and F of
:mod:`neve.plugins.curriculum_f` after every evaluation that follows a training
experience, beside Avalanche's own metrics in an ``EvaluationPlugin``.
:func:`curriculum_effectiveness` computes them from a matrix.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.training.supervised import JointTraining

from ..models.accuracy_matrix import accuracy_matrix_from_rows, last_accuracy
from ..models.core.checks import STREAM
from ..models.core.distributed import default_reduction
from .curriculum_f import curriculum_effectiveness, effectiveness_f
from .curriculum_state import parse_curriculum_state

__all__ = ["CurriculumEffectiveness", "curriculum_effectiveness", "effectiveness_f"]


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
    streams, the origin experience of the last mini-experience). Only an
    evaluation after a training experience counts: one between experiences
    (``strategy.eval`` after ``train``, or Avalanche's final evaluation of
    ``eval_every >= 0``), or a periodic evaluation inside an experience with no
    training iteration after it (``eval_every=k`` evaluating after the last
    epoch). Periodic evaluations followed by more training are ignored. After
    each evaluation that counts it emits, when at least one experience was trained:

    * ``CurriculumAlpha/eval_phase/<stream>``: mean accuracy over the
      experiences trained so far (at the end: over all experiences);
    * ``CurriculumBeta/eval_phase/<stream>``: accuracy on experience 0 at the
      last evaluation while experience 0 was the latest trained, minus now;
    * ``CurriculumF/eval_phase/<stream>``: ``2 alpha / (beta alpha + 1)``.

    If experience 0 was not evaluated right after it was trained, beta and F
    are undefined: a ``UserWarning`` says so (once per stream) and only alpha
    is emitted.

    State is plain Python numbers (checkpoint-safe); see :meth:`state_dict`.
    """

    supports_distributed = True  # counts summed over processes in after_eval

    def __init__(self) -> None:
        super().__init__()
        self.trained_upto = -1
        self.first_after_learning: dict[str, float] = {}
        self.rows: dict[str, dict[int, dict[int, float]]] = {}
        self._correct: dict[tuple[str, int], int] = {}
        self._total: dict[tuple[str, int], int] = {}
        self._in_experience = False
        self._pending: dict[str, dict[int, float]] | None = None
        self._warned: set[str] = set()

    # -- Metric API
    def reset(self) -> None:
        self._correct, self._total = {}, {}

    def result(self) -> dict:
        """Accuracy of each ``(stream name, experience)`` of the evaluation in progress."""
        return {k: self._correct[k] / self._total[k] for k in self._total if self._total[k]}

    # -- training callbacks: which evaluations count
    def before_training(self, strategy):
        if isinstance(strategy, JointTraining):
            raise ValueError(
                "CurriculumEffectiveness: F is undefined under JointTraining, which learns "
                "all experiences in one training phase (there is no accuracy right after "
                "the first experience); use it with a strategy that trains experience by "
                "experience"
            )
        self._in_experience, self._pending = False, None

    def before_training_exp(self, strategy):
        self._in_experience, self._pending = True, None

    def after_training_iteration(self, strategy):
        self._pending = None  # the model changed after the last periodic evaluation

    def after_training_exp(self, strategy):
        self.trained_upto = max(self.trained_upto, _trained_experience_index(strategy))
        self._in_experience = False
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        # a periodic evaluation after the experience's last iteration is its final one
        return self._record(pending, strategy)

    # -- evaluation callbacks
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
        self._reduce_counts()
        per_stream: dict[str, dict[int, float]] = {}
        for (stream, j), acc in self.result().items():
            per_stream.setdefault(stream, {})[j] = acc
        if self._in_experience:  # periodic: counts only if no training follows
            self._pending = per_stream
            return None
        if self.trained_upto < 0:
            return None
        return self._record(per_stream, strategy)

    def _reduce_counts(self) -> None:
        """Under ``torch.distributed``: sum the counts of every process (sharded evaluation).

        Every process evaluates the same experiences, so the keys agree. When every
        process evaluated the whole experience (:class:`~neve.plugins.WholeEvaluationPlugin`,
        SLCA, NearestPrototype, AnalyticCIL), numerator and denominator are both
        multiplied by the number of processes and the accuracy is unchanged. On
        Avalanche's own shards the sums count the items that its ``DistributedSampler``
        repeats to pad the shards twice.
        """
        reduction = default_reduction()
        if not reduction.active:
            return
        keys = sorted(self._total)
        counts = torch.tensor([[self._correct[k], self._total[k]] for k in keys],
                              dtype=torch.long).reshape(-1, 2)
        reduction.sum([counts])
        for k, (correct, total) in zip(keys, counts.tolist(), strict=True):
            self._correct[k], self._total[k] = correct, total

    def _record(self, per_stream: dict[str, dict[int, float]], strategy):
        """Store the accuracies as row ``trained_upto``; alpha, beta, F as MetricValues.

        Alpha and beta are those of the matrix whose last row is this one (columns of the
        experiences trained so far) and whose ``[0, 0]`` is the accuracy on experience 0
        right after it was learned (:func:`curriculum_effectiveness`).
        """
        values, t = [], self.trained_upto
        x = strategy.clock.train_iterations
        for stream, accs in per_stream.items():
            self.rows.setdefault(stream, {})[t] = accs
            if 0 not in accs:
                continue
            if t == 0:
                self.first_after_learning[stream] = accs[0]
            acc = accuracy_matrix_from_rows({t: accs}, (t + 1, t + 1))
            acc[0, 0] = self.first_after_learning.get(stream, np.nan)
            name = f"eval_phase/{stream}_stream"
            values.append(MetricValue(self, f"CurriculumAlpha/{name}", last_accuracy(acc), x))
            if stream not in self.first_after_learning:
                self._warn_missing_first(stream)
                continue
            _, beta, f = curriculum_effectiveness(acc)
            values += [MetricValue(self, f"CurriculumBeta/{name}", beta, x),
                       MetricValue(self, f"CurriculumF/{name}", f, x)]
        return values or None

    def _warn_missing_first(self, stream: str) -> None:
        if stream in self._warned:
            return
        self._warned.add(stream)
        warnings.warn(
            f"CurriculumEffectiveness: stream {stream!r} was not evaluated on experience 0 "
            "right after training experience 0, so beta and F are undefined and not reported "
            "(only alpha is); evaluate after every training experience (strategy.eval after "
            "train, or eval_every >= 0)",
            UserWarning,
            stacklevel=2,
        )

    def accuracy_matrix(self, stream: str = "test") -> np.ndarray:
        """``[T, E]`` accuracies measured on ``stream`` (NaN where not evaluated): the input of
        every figure of :mod:`neve.models.accuracy_matrix`."""
        stream = STREAM.check(stream, "stream")
        rows = self.rows.get(stream, {})
        return accuracy_matrix_from_rows(rows) if rows else np.zeros((0, 0))

    # -- state
    def state_dict(self) -> dict:
        return {
            "trained_upto": self.trained_upto,
            "first_after_learning": dict(self.first_after_learning),
            "rows": {s: {i: dict(r) for i, r in rows.items()} for s, rows in self.rows.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output; checked whole before anything changes."""
        trained_upto, first, rows = parse_curriculum_state(state)
        self.trained_upto, self.first_after_learning, self.rows = trained_upto, first, rows
        self._in_experience, self._pending = False, None
        self.reset()

    def __str__(self) -> str:
        return "CurriculumEffectiveness"

