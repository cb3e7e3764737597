"""The skeleton of a strategy that learns in closed form, and the plugins it cannot honour.

:class:`ClosedFormStrategy` is Avalanche's ``SupervisedTemplate`` without an
optimizer: one pass over each experience, each mini-batch *absorbed* into
statistics (sums, Gram matrices), the experience *finished* (a solve, new
means) at its end. :class:`~neve.strategies.AnalyticCIL` and
:class:`~neve.strategies.NearestPrototype` are two; a new one supplies
:meth:`~ClosedFormStrategy.absorb`, :meth:`~ClosedFormStrategy.finish_experience`
and its ``state_dict`` (the pattern of Avalanche's ``StreamingLDA``).

A gradient-free strategy runs Avalanche's gradient-time callbacks never, so a
plugin that acts there is a silent no-op (LwF, SI) or crashes on the missing
optimizer (EWC). :func:`needs_gradients` says why a plugin needs gradients:
its class overrides one of :data:`GRADIENT_CALLBACKS`, or it is one of
:data:`OPTIMIZER_PLUGINS`, which drive the optimizer from other callbacks. A
plugin that replays stored samples (:func:`replays_samples`) would make a
strategy that sums what it is given count a sample twice.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from avalanche.core import BaseSGDPlugin
from avalanche.evaluation.metric_definitions import PluginMetric
from avalanche.logging import BaseLogger
from avalanche.training.plugins import (
    EWCPlugin,
    FromScratchTrainingPlugin,
    GDumbPlugin,
    GSS_greedyPlugin,
    LRSchedulerPlugin,
    LwFPlugin,
    MASPlugin,
    RWalkPlugin,
    SynapticIntelligencePlugin,
)
from avalanche.training.plugins.evaluation import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate
from avalanche.training.templates.base import _experiences_parameter_as_iterable

from ..models.core.distributed import default_reduction, is_distributed
from ..plugins.distributed import ExactShardsPlugin
from ..plugins.experience_data import check_experience_data

GRADIENT_CALLBACKS = ("before_backward", "after_backward", "before_update", "after_update")
#: Plugins that use the optimizer or the gradients from other callbacks too.
OPTIMIZER_PLUGINS = (
    EWCPlugin, LwFPlugin, SynapticIntelligencePlugin, MASPlugin, RWalkPlugin,
    LRSchedulerPlugin, FromScratchTrainingPlugin,
)
# classes whose gradient-time callbacks are no-ops (metrics and loggers inherit them)
_NO_OP_BASES = (BaseSGDPlugin, PluginMetric, BaseLogger)


def needs_gradients(plugin: object) -> str | None:
    """The reason ``plugin`` needs gradients or an optimizer, or None when it does not."""
    if isinstance(plugin, EvaluationPlugin):
        return None  # forwards every callback to its metrics; none needs gradients
    if isinstance(plugin, OPTIMIZER_PLUGINS):
        return "it regularises or steps the gradients/optimizer"
    for name in GRADIENT_CALLBACKS:
        owner = next((base for base in type(plugin).__mro__ if name in vars(base)), None)
        if owner is not None and owner not in _NO_OP_BASES:
            return f"it acts in {name}"
    return None


def replays_samples(plugin: object) -> bool:
    """Whether ``plugin`` feeds stored exemplars (``ReplayPlugin``, GDumb, a storage policy)."""
    return isinstance(plugin, (GDumbPlugin, GSS_greedyPlugin)) or hasattr(plugin, "storage_policy")


def check_gradient_free(plugins: Iterable[object], strategy: str) -> None:
    """Raise a ValueError naming the first plugin that needs gradients."""
    for plugin in plugins:
        reason = needs_gradients(plugin)
        if reason is not None:
            raise ValueError(
                f"plugins: {type(plugin).__name__} needs gradients ({reason}), but "
                f"{strategy} is gradient-free (no loss, no optimizer); it would crash or "
                "do nothing. Remove it, or use a gradient strategy (e.g. Naive)")


def check_exemplar_free(plugins: Iterable[object] | None, strategy: str) -> None:
    """Raise a ValueError naming the first plugin that replays stored samples."""
    for plugin in plugins or ():
        if replays_samples(plugin):
            raise ValueError(
                f"plugins: {type(plugin).__name__} replays stored samples, but {strategy} "
                "counts every sample it is given, so replayed samples would be learned twice "
                "and it would no longer equal its solution on the stream's data; it is "
                "exemplar-free: remove the plugin")


class ClosedFormStrategy(SupervisedTemplate):
    """No optimizer, one pass, exact shards, whole evaluation, all-or-nothing experiences.

    What the skeleton does, so that a subclass only says how a batch is absorbed
    and how an experience is finished:

    * plugins are refused, with a ValueError naming them, at construction and
      again at :meth:`train`, when they need gradients or the optimizer
      (:func:`needs_gradients`: any of :data:`OPTIMIZER_PLUGINS`, e.g. EWC, LwF,
      SI, MAS, RWalk, ``LRSchedulerPlugin``, or any plugin acting in one of
      :data:`GRADIENT_CALLBACKS`) or when they replay stored samples
      (:func:`replays_samples`: ``ReplayPlugin``, GDumb, GSS, any plugin with a
      ``storage_policy``);
    * **an** :class:`~neve.plugins.ExactShardsPlugin` **is appended to the
      plugins** (unless one is given; ``strategy.plugins`` shows it): under
      ``torch.distributed`` each process absorbs its exact shard (every item
      once over the processes) and evaluates the whole experience; it does
      nothing in one process;
    * ``train_epochs`` is 1 (a second pass would count every item twice);
    * :meth:`check_experience` runs on every experience before any is trained
      (by default it refuses an experience without training samples);
    * an experience is learned whole or not at all: :meth:`snapshot` is taken
      before it and put back (:meth:`restore`) when anything raises; under
      ``torch.distributed`` an error of one process is raised on every process.

    Subclasses supply :meth:`absorb` and :meth:`finish_experience`, their state
    through :meth:`state_dict` / :meth:`load_state_dict` (what a checkpoint stores
    besides the model) and, in a class attribute ``checkpointed``, the names of the
    settings a checkpoint must match; they may override :meth:`check_experience`,
    :meth:`snapshot` / :meth:`restore` (default: a copy of ``state_dict()``) and
    :meth:`before_absorbing`. ``tests/test_closed_form_extension.py`` builds one.

    Args:
        model, criterion, train_mb_size, eval_mb_size, device, plugins, evaluator,
        eval_every, **base_kwargs: as ``SupervisedTemplate`` (``criterion``: the
            loss the metrics report; no gradient is taken).
        train_epochs: must be 1.
    """

    def __init__(self, *, model, criterion, train_mb_size: int = 256, train_epochs: int = 1,
                 eval_mb_size: int = 1024, device="cpu", plugins=None, evaluator=None,
                 eval_every: int = -1, **base_kwargs) -> None:
        if train_epochs != 1:
            raise ValueError(
                f"train_epochs is fixed to 1 in {type(self).__name__}, got {train_epochs!r}: "
                "it learns in one pass, and a second would count every item twice")
        plugins = list(plugins or [])
        check_gradient_free(plugins, type(self).__name__)
        check_exemplar_free(plugins, type(self).__name__)
        if not any(isinstance(p, ExactShardsPlugin) for p in plugins):
            plugins.append(ExactShardsPlugin())
        extra = {} if evaluator is None else {"evaluator": evaluator}
        super().__init__(model=model, optimizer=None, criterion=criterion,  # type: ignore[arg-type]
                         train_mb_size=train_mb_size, train_epochs=1, eval_mb_size=eval_mb_size,
                         device=device, plugins=plugins, eval_every=eval_every, **extra,
                         **base_kwargs)

    # -- what a subclass supplies --------------------------------------------------------
    def absorb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Add a mini-batch (inputs ``x``, labels ``y`` ``[n]``) to the statistics.

        Returns the ``[n, C]`` scores that Avalanche's training metrics read as
        ``mb_output``.
        """
        raise NotImplementedError

    def finish_experience(self) -> None:
        """Turn the experience's statistics into the learner (a solve, new means...)."""

    def check_experience(self, experience) -> None:
        """Refuse an experience before any training (a ValueError naming what is wrong).

        The skeleton's check refuses an experience without training samples, and one
        whose items' labels disagree with its ``.targets`` or reach :attr:`label_cap` (one
        pass over the data, see :func:`~neve.plugins.experience_data.check_experience_data`).
        """
        if len(experience.dataset) == 0:
            raise ValueError(
                f"experiences: experience {getattr(experience, 'current_experience', '?')} has "
                f"no training samples: {type(self).__name__} learns nothing from it; leave it "
                "out of the stream")
        try:
            check_experience_data(experience.dataset, self.train_mb_size,
                                  max_classes=self.label_cap[0], cap=self.label_cap[1],
                                  finite=False)  # absorb refuses NaN, on every process
        except (TypeError, ValueError) as error:
            where = getattr(experience, "current_experience", "?")
            raise type(error)(f"experiences: experience {where}: {error}") from error

    @property
    def label_cap(self) -> tuple[int, str]:
        """The bound every label must be under, and the argument that set it."""
        return 2**62, "max_classes"

    def before_absorbing(self) -> None:
        """Called once per experience before its first batch (e.g. a gradient base phase)."""

    def snapshot(self) -> object:
        """What :meth:`restore` puts back when an experience fails: a copy of ``state_dict()``."""
        return copy.deepcopy(self.state_dict())

    def restore(self, snapshot: object) -> None:
        self.load_state_dict(snapshot)

    def state_dict(self) -> dict:
        """The learner's own state (plain tensors); the model's is stored apart."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None

    # -- the skeleton ---------------------------------------------------------------------
    @property
    def reduction(self):
        """How per-process statistics are combined (identity in one process)."""
        return default_reduction()

    def train(self, experiences, eval_streams=None, **kwargs):
        """Avalanche's ``train``, after the plugin rules and every experience's check."""
        experiences = list(_experiences_parameter_as_iterable(experiences))
        check_gradient_free(self.plugins, type(self).__name__)
        check_exemplar_free(self.plugins, type(self).__name__)
        for experience in experiences:
            self.check_experience(experience)
        return super().train(experiences, eval_streams, **kwargs)

    def make_optimizer(self, **kwargs) -> None:
        """No optimizer: the learner is solved in closed form."""

    def _train_exp(self, experience, eval_streams=None, **kwargs) -> None:
        saved = self.snapshot()
        try:
            super()._train_exp(experience, eval_streams, **kwargs)
            self.finish_experience()
        except BaseException:
            self.restore(saved)
            raise

    def training_epoch(self, **kwargs) -> None:
        """One pass: every mini-batch absorbed; an error is raised on every process."""
        error = None
        try:
            self._absorb_epoch(**kwargs)
        except Exception as err:  # noqa: BLE001 - raised below, on every process
            error = err
        self.reduction.agree(error, "experiences: another process refused a batch of this "
                             "experience (see its error); nothing of it was learned")

    def _absorb_epoch(self, **kwargs) -> None:
        self.before_absorbing()
        fed = 0
        for batch in self.dataloader:
            self.mbatch = batch
            if self._stop_training:
                break
            self._unpack_minibatch()
            self._before_training_iteration(**kwargs)
            self.loss = self._make_empty_loss()
            self._before_forward(**kwargs)
            with torch.no_grad():
                self.mb_output = self.absorb(self.mb_x, self.mb_y)
            self._after_forward(**kwargs)
            fed += len(self.mb_y)
            self._after_training_iteration(**kwargs)
        expected = len(self.experience.dataset)
        if fed != expected and not is_distributed():
            raise ValueError(
                f"experiences: experience {self.experience.current_experience} holds {expected} "
                f"training samples, but {fed} were fed (a plugin replaced or stopped the data "
                "loader?): each sample must be absorbed once, so the experience is not learned")
