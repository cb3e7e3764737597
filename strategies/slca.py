"""SLCA (Zhang et al., ICCV 2023) as Avalanche's ``Naive`` plus neve's two SLCA plugins."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.supervised import Naive
from avalanche.training.templates.base import BasePlugin
from avalanche.training.templates.strategy_mixin_protocol import CriterionType
from torch.nn import CrossEntropyLoss, Module
from torch.optim import Optimizer

from ..models.classifier import check_single_head, model_part
from ..models.core.checks import Bool, Instance, Int, validated
from ..plugins.alignment import ClassifierAlignmentPlugin
from ..plugins.checkpoint_state import (
    load_model,
    model_state,
)
from ..plugins.distributed import WholeEvaluationPlugin
from ..plugins.experience_data import experience_classes
from ..plugins.slow_learner import SlowLearnerPlugin
from .slca_settings import PAPER_SETTINGS, SLCASettings, paper_parts

__all__ = ["SLCA", "experience_classes"]


class SLCA(Naive):
    """Slow Learner with Classifier Alignment: ``Naive`` + :class:`SlowLearnerPlugin`
    + :class:`ClassifierAlignmentPlugin` (Zhang et al., ICCV 2023, Sec. 4).

    The model must meet neve's contract (``model.features``, ``model.classifier``;
    other names are given to the plugins), e.g.
    :class:`neve.models.PretrainedClassifier`. The optimizer may be any
    ``torch.optim`` optimizer over the model's parameters; its learning rate is
    the head's, the representation gets ``backbone_lr_scale`` times it. Paper
    setting: ``SGD(lr=0.01, momentum=0.9, weight_decay=5e-4)`` with the plugins'
    defaults.

    The two plugins carry SLCA's options, e.g.
    ``SLCA(model=..., optimizer=..., slow_learner=SlowLearnerPlugin(0.01),
    alignment=ClassifierAlignmentPlugin(samples_per_class=256, epochs=5))``.

    Plugin order: the slow learner first, then the ``plugins`` given, then the
    alignment (so e.g. LwF's teacher copy is the unaligned model), then a
    :class:`~neve.plugins.WholeEvaluationPlugin` unless one is given (under
    ``torch.distributed`` every process evaluates the whole experience, so the
    metrics are the one-process metrics; nothing in one process).

    Args:
        criterion: as ``Naive``; ``None`` means ``CrossEntropyLoss()``.
        model, optimizer, train_mb_size, train_epochs, eval_mb_size: as ``Naive``.
        device, plugins, evaluator, eval_every: as ``Naive``.
        **base_kwargs: passed on to ``Naive``.
        slow_learner: the :class:`SlowLearnerPlugin` (default: its defaults).
        alignment: the :class:`ClassifierAlignmentPlugin` (default: its defaults).
        current_classes_loss: as the authors' code (each task's head is trained on
            that task's logits only), the training loss is ``criterion`` over the
            logits of the current experience's classes, targets re-indexed, and
            samples of other classes ignored (target ``-100``, the default
            ``ignore_index`` of ``CrossEntropyLoss``; a mini-batch with none of the
            current classes, e.g. only replayed samples, gives a zero loss). The
            current classes are :func:`experience_classes` (from the targets when
            the benchmark has no class timeline).
            Without it (False) the loss is ``Naive``'s, over all logits, which
            pushes old classes' logits down and leaves the alignment a much
            larger bias to undo. Evaluation always uses all logits.

    Single-head class-incremental models only: a ``MultiTaskModule`` head (e.g.
    ``MultiHeadClassifier``) is refused at construction. An experience is learned
    whole or not at all: the alignment refuses bad data before the head can grow
    (:class:`ClassifierAlignmentPlugin`), and when anything raises during the
    experience (e.g. features that stop being finite), the model, the optimizer,
    the two plugins and the clock are put back as they were.

    Attributes:
        slow_learner: the slow-learner plugin.
        alignment: the classifier-alignment plugin.
    """

    checkpointed = ("train_mb_size", "train_epochs", "eval_mb_size", "current_classes_loss")

    @validated(model=Instance(Module, what="a torch.nn.Module"),
               optimizer=Instance(Optimizer, what="a torch.optim.Optimizer"),
               train_mb_size=Int(1), train_epochs=Int(1), eval_mb_size=Int(1, optional=True),
               slow_learner=Instance(SlowLearnerPlugin, optional=True),
               alignment=Instance(ClassifierAlignmentPlugin, optional=True),
               current_classes_loss=Bool())
    def __init__(
        self,
        *,
        model: Module,
        optimizer: Optimizer,
        criterion: CriterionType | None = None,
        train_mb_size: int = 1,
        train_epochs: int = 1,
        eval_mb_size: int | None = None,
        device: str | torch.device = "cpu",
        plugins: list[BasePlugin] | None = None,
        evaluator: EvaluationPlugin | Callable[[], EvaluationPlugin] = default_evaluator,
        eval_every: int = -1,
        slow_learner: SlowLearnerPlugin | None = None,
        alignment: ClassifierAlignmentPlugin | None = None,
        current_classes_loss: bool = True,
        **base_kwargs,
    ) -> None:
        self.current_classes_loss = current_classes_loss
        self._current_classes: list[int] = []
        self.slow_learner = SlowLearnerPlugin() if slow_learner is None else slow_learner
        self.alignment = ClassifierAlignmentPlugin() if alignment is None else alignment
        model_part(model, self.alignment.features, "feature extractor")
        check_single_head(model_part(model, self.alignment.head, "head"), self.alignment.head)
        model_part(model, self.slow_learner.head, "head")
        super().__init__(
            model=model,
            optimizer=optimizer,
            criterion=CrossEntropyLoss() if criterion is None else criterion,
            train_mb_size=train_mb_size,
            train_epochs=train_epochs,
            eval_mb_size=eval_mb_size,
            device=device,
            plugins=_with_whole_evaluation([self.slow_learner, *(plugins or []),
                                            self.alignment]),
            evaluator=evaluator,
            eval_every=eval_every,
            **base_kwargs,
        )

    def _before_training_exp(self, **kwargs) -> None:
        self._current_classes = experience_classes(self.experience)
        optimizer = self.optimizer  # its groups may hold a grown head's old parameters
        self._saved = (copy.deepcopy((model_state(self.model), optimizer.state_dict(),
                                      self.slow_learner.state_dict(), self.alignment.state_dict(),
                                      dict(vars(self.clock)))),
                       [list(g["params"]) for g in optimizer.param_groups],
                       dict(self.optimized_param_id or {}))
        self._whole(super()._before_training_exp, **kwargs)

    def _train_exp(self, experience, eval_streams=None, **kwargs) -> None:
        self._whole(super()._train_exp, experience, eval_streams, **kwargs)

    def _after_training_exp(self, **kwargs) -> None:
        self._whole(super()._after_training_exp, **kwargs)
        self._saved = None

    def _whole(self, step, *args, **kwargs) -> None:
        """Run a step of the experience; when it raises, put SLCA's state back as it was."""
        try:
            step(*args, **kwargs)
        except BaseException:
            (model, optimizer, slow, align, clock), groups, ids = self._saved
            load_model(self.model, model)
            self.optimizer.param_groups[:] = [
                {**{k: v for k, v in group.items() if k != "params"}, "params": params}
                for group, params in zip(optimizer["param_groups"], groups, strict=True)]
            self.optimizer.load_state_dict(optimizer)
            self.optimized_param_id = ids
            self.slow_learner.load_state_dict(slow)
            self.alignment.load_state_dict(align)
            vars(self.clock).update(clock)
            raise

    def state_dict(self) -> dict:
        """SLCA's own state: none (the slow learner's and the alignment's are their plugins')."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None

    def criterion(self):
        """``criterion`` over the current experience's classes while training (see above)."""
        if not (self.is_training and self.current_classes_loss):
            return super().criterion()
        classes = self._current_classes
        index = torch.tensor(classes, device=self.mb_output.device)
        lookup = torch.full(
            (max(self.mb_output.shape[1], max(classes) + 1),),
            -100,
            dtype=torch.long,
            device=self.mb_output.device,
        )
        lookup[index] = torch.arange(len(classes), device=self.mb_output.device)
        logits, targets = self.mb_output.index_select(1, index), lookup[self.mb_y]
        if not bool((targets >= 0).any()):  # no sample of the current classes: no signal
            return logits.sum() * 0.0
        return self._criterion(logits, targets)

    @classmethod
    def paper(cls, model: Module, settings: SLCASettings | None = None, *,
              head: str = "classifier", slow_learner_options: dict | None = None,
              alignment_options: dict | None = None, plugins: list | None = None,
              **kwargs) -> SLCA:
        """An SLCA with the paper's settings (:data:`~neve.strategies.slca_settings.PAPER_SETTINGS`)
        or ``settings``; the arguments are :func:`~neve.strategies.slca_settings.paper_parts`'s,
        ``kwargs`` go to the constructor (``device``, ``evaluator``, ``eval_mb_size``, ...).
        The step-decay scheduler plugin is ``strategy.lr_scheduler`` (None without milestones).
        """
        parts, scheduler = paper_parts(
            model, PAPER_SETTINGS if settings is None else settings, head=head,
            slow_learner_options=slow_learner_options, alignment_options=alignment_options,
            plugins=plugins)
        strategy = cls(**parts, **kwargs)
        strategy.lr_scheduler = scheduler
        return strategy


def _with_whole_evaluation(plugins: list) -> list:
    if not any(isinstance(p, WholeEvaluationPlugin) for p in plugins):
        plugins.append(WholeEvaluationPlugin())
    return plugins


def paper_slca(model: Module, settings: SLCASettings | None = None, **kwargs) -> SLCA:
    """:meth:`SLCA.paper` as a function."""
    return SLCA.paper(model, settings, **kwargs)
