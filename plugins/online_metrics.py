"""A_auc and A_last of online class-incremental learning, on the classes seen so far.

The evaluation of Si-Blurry (Moon et al., ICCV 2023; also G-ACIL,
Zhuang et al., 2024): every ``every`` training samples of the stream the model is
evaluated on the test samples of the classes seen so far, its predictions
restricted to those classes; ``A_auc`` is the mean of those accuracies (with
points every ``every`` samples, the area under the accuracy-versus-samples curve
divided by its length), ``A_last`` the accuracy on the seen classes at the end.

* :class:`SeenClassesEvaluation` (a plugin) counts the stream's samples and runs
  ``strategy.eval`` on :func:`~neve.plugins.seen_classes_stream` when a
  point is due (the stream ``"anytime_test"``);
* :class:`AnytimeAccuracy` (``A_auc``) and :class:`LastAccuracy` (``A_last``) are
  Avalanche metrics for an ``EvaluationPlugin``: each measures the accuracy of
  every evaluation of its stream (``"anytime_test"``, resp. ``"seen_test"``: run
  ``strategy.eval(plugin.seen_stream())`` at the end).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue

from ..models.core.checks import Bool, Int, Text, validate
from ..models.core.data_checks import check_labelled
from ..models.core.distributed import default_reduction
from .seen_classes import SEEN_STREAM, as_classification_dataset, seen_classes_stream

__all__ = ["ANYTIME_STREAM", "AnytimeAccuracy", "LastAccuracy", "SeenClassesEvaluation",
           "anytime_accuracy", "evaluation_due", "seen_class_predictions"]

#: Name of the stream of :class:`SeenClassesEvaluation`'s periodic evaluations.
ANYTIME_STREAM = "anytime_test"
_NAME = Text("a stream name (a non-empty string)")


def evaluation_due(samples_seen: int, next_point: int, every: int) -> tuple[bool, int]:
    """``(due, next_point)`` after a step of training: the Si-Blurry authors' rule.

    An evaluation is due when ``samples_seen > next_point`` (strictly); the next
    point then moves on by ``every`` (once, even if the step crossed several).
    Preconditions: integers, ``every >= 1``.
    """
    if samples_seen > next_point:
        return True, next_point + every
    return False, next_point


def anytime_accuracy(accuracies: Sequence[float]) -> float:
    """``A_auc``: the mean of the accuracies measured at the stream's evaluation points
    (``[P]``, ``P >= 1``; the Si-Blurry authors' ``np.mean`` of their periodic test accuracies)."""
    return float(sum(accuracies) / len(accuracies))


def seen_class_predictions(logits: torch.Tensor, classes: Iterable[int]) -> torch.Tensor:
    """Predicted classes ``[B]`` of ``logits [B, K]`` with every column outside ``classes``
    excluded (set to ``-inf``, the authors' mask); columns ``>= K`` in ``classes`` are ignored.
    Precondition: at least one of ``classes`` is below ``K``."""
    keep = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
    cols = torch.as_tensor([c for c in classes if c < logits.shape[1]], dtype=torch.long)
    keep[cols.to(logits.device)] = True
    return logits.masked_fill(~keep, float("-inf")).argmax(dim=1)


class SeenClassesEvaluation(SupervisedPlugin, supports_distributed=True):
    """Evaluate on the classes seen so far every ``every`` samples of the training stream.

    After each training experience it adds the experience's size to the samples
    seen and its classes to the classes seen; when :func:`evaluation_due` says so
    it runs ``strategy.eval`` on the test samples of the classes seen so far, a
    stream named ``stream_name``. With online experiences of one mini-batch each
    this is the authors' check after every batch. Measure the evaluations with
    :class:`AnytimeAccuracy`.

    Args:
        test: the test dataset (integer ``.targets``).
        every: samples between two evaluation points (the authors' ``eval_period``).
        stream_name: name of the evaluated stream.
    """

    checkpointed = ("every", "stream_name")

    def __init__(self, test, every: int = 1000, *, stream_name: str = ANYTIME_STREAM) -> None:
        super().__init__()
        args = validate({"every": Int(1), "stream_name": _NAME},
                        {"every": every, "stream_name": stream_name})
        check_labelled(test, "test")
        self.test = as_classification_dataset(test)
        self.every, self.stream_name = args["every"], args["stream_name"]
        self.samples_seen, self.next_point, self.seen_classes = 0, self.every, []

    def after_training_exp(self, strategy, *args, **kwargs):
        exp = strategy.experience
        self.samples_seen += len(exp.dataset)
        self.seen_classes = sorted(set(self.seen_classes) | set(exp.dataset.targets.uniques))
        due, self.next_point = evaluation_due(self.samples_seen, self.next_point, self.every)
        if due:
            strategy.eval(seen_classes_stream(self.test, self.seen_classes,
                                              name=self.stream_name))

    def seen_stream(self, name: str = SEEN_STREAM):
        """The test samples of the classes seen so far, as a stream named ``name``."""
        return seen_classes_stream(self.test, self.seen_classes, name=name)

    def state_dict(self) -> dict:
        return {"samples_seen": self.samples_seen, "next_point": self.next_point,
                "seen_classes": list(self.seen_classes)}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict`'s output; checked whole before anything changes."""
        if not isinstance(state, Mapping) or set(state) != {"samples_seen", "next_point",
                                                            "seen_classes"}:
            raise ValueError("state must be a SeenClassesEvaluation.state_dict() mapping")
        counts = validate({"samples_seen": Int(0), "next_point": Int(1)}, dict(state))
        classes = [Int(0).check(c, "state's seen_classes") for c in state["seen_classes"]]
        self.samples_seen, self.next_point = counts["samples_seen"], counts["next_point"]
        self.seen_classes = sorted(classes)


class SeenClassesAccuracy(PluginMetric[float]):
    """Accuracy of each evaluation of the stream ``stream_name`` (all its samples together),
    predictions restricted to the evaluated experience's classes when ``restrict_to_seen``;
    the list of those accuracies is :attr:`accuracies`. Subclasses say what they report."""

    supports_distributed = True  # counts summed over processes in after_eval
    checkpointed = ("stream_name", "restrict_to_seen")
    metric_name = "SeenClassesAccuracy"

    def __init__(self, stream_name: str, *, restrict_to_seen: bool = True) -> None:
        super().__init__()
        args = validate({"stream_name": _NAME, "restrict_to_seen": Bool()},
                        {"stream_name": stream_name, "restrict_to_seen": restrict_to_seen})
        self.stream_name, self.restrict_to_seen = args["stream_name"], args["restrict_to_seen"]
        self.accuracies: list[float] = []
        self._counts = torch.zeros(2, dtype=torch.long)

    def reset(self) -> None:
        self._counts = torch.zeros(2, dtype=torch.long)

    def result(self) -> float | None:  # pragma: no cover - overridden
        raise NotImplementedError

    def before_eval(self, strategy):
        self.reset()

    def after_eval_iteration(self, strategy):
        exp = strategy.experience
        if exp.origin_stream.name != self.stream_name:
            return
        logits, y = torch.as_tensor(strategy.mb_output).detach(), torch.as_tensor(strategy.mb_y)
        classes = getattr(exp, "classes_in_this_experience", None)
        pred = (seen_class_predictions(logits, classes)
                if self.restrict_to_seen and classes is not None else logits.argmax(dim=1))
        self._counts += torch.tensor([int((pred.cpu() == y.cpu()).sum()), int(y.numel())])

    def after_eval(self, strategy):
        reduction = default_reduction()
        if reduction.active:
            reduction.sum([self._counts])
        correct, total = self._counts.tolist()
        if total == 0:
            return None
        self.accuracies.append(correct / total)
        name = f"{self.metric_name}/eval_phase/{self.stream_name}_stream"
        return [MetricValue(self, name, self.result(), strategy.clock.train_iterations)]

    def state_dict(self) -> dict:
        return {"accuracies": list(self.accuracies)}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict`'s output; checked whole before anything changes."""
        accs = state.get("accuracies") if isinstance(state, Mapping) else None
        if not isinstance(accs, (list, tuple)) or not all(
                isinstance(a, (int, float)) and not isinstance(a, bool) and 0 <= a <= 1
                for a in accs):
            raise ValueError(f"state must be a {type(self).__name__}.state_dict() mapping "
                             "with accuracies in [0, 1]")
        self.accuracies = [float(a) for a in accs]
        self.reset()

    def __str__(self) -> str:
        return self.metric_name


class AnytimeAccuracy(SeenClassesAccuracy):
    """``A_auc``: :func:`anytime_accuracy` of the evaluations of ``stream_name`` so far
    (by default :class:`SeenClassesEvaluation`'s), emitted after each as
    ``A_auc/eval_phase/<stream_name>_stream``; ``None`` before the first."""

    metric_name = "A_auc"

    def __init__(self, stream_name: str = ANYTIME_STREAM, *,
                 restrict_to_seen: bool = True) -> None:
        super().__init__(stream_name, restrict_to_seen=restrict_to_seen)

    def result(self) -> float | None:
        return anytime_accuracy(self.accuracies) if self.accuracies else None


class LastAccuracy(SeenClassesAccuracy):
    """``A_last``: the accuracy of the latest evaluation of ``stream_name`` (by default
    ``"seen_test"``: :meth:`SeenClassesEvaluation.seen_stream` at the end of the stream),
    emitted as ``A_last/eval_phase/<stream_name>_stream``; ``None`` before the first."""

    metric_name = "A_last"

    def __init__(self, stream_name: str = SEEN_STREAM, *, restrict_to_seen: bool = True) -> None:
        super().__init__(stream_name, restrict_to_seen=restrict_to_seen)

    def result(self) -> float | None:
        return self.accuracies[-1] if self.accuracies else None
