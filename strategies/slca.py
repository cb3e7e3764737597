"""SLCA (Zhang et al., ICCV 2023) as Avalanche's ``Naive`` plus neve's two SLCA plugins."""

from __future__ import annotations

from collections.abc import Callable

import torch
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.supervised import Naive
from avalanche.training.templates.base import BasePlugin
from avalanche.training.templates.strategy_mixin_protocol import CriterionType
from torch.nn import CrossEntropyLoss, Module
from torch.optim import Optimizer

from neve.plugins.slca import ClassifierAlignmentPlugin, SlowLearnerPlugin, get_submodule


class SLCA(Naive):
    """Slow Learner with Classifier Alignment: ``Naive`` + :class:`SlowLearnerPlugin`
    + :class:`ClassifierAlignmentPlugin`.

    The model must meet neve's contract (``model.features``, ``model.classifier``;
    names changeable with ``features=`` / ``head=``), e.g.
    :class:`neve.models.PretrainedClassifier`. The optimizer may be any
    ``torch.optim`` optimizer over the model's parameters; its learning rate is
    the head's, the representation gets ``backbone_lr_scale`` times it. Paper
    setting: ``SGD(lr=0.01, momentum=0.9, weight_decay=5e-4)`` with the defaults.

    Plugin order: the slow learner first, then the ``plugins`` given, then the
    alignment (so e.g. LwF's teacher copy is the unaligned model).

    Args:
        model, optimizer, criterion, train_mb_size, train_epochs, eval_mb_size,
        device, plugins, evaluator, eval_every, **base_kwargs: as ``Naive``
        (``criterion=None`` means ``CrossEntropyLoss()``).
        backbone_lr_scale, norm_stats: see :class:`SlowLearnerPlugin`.
        samples_per_class, alignment_epochs, alignment_lr, temperature, covariance,
        keep_aligned, alignment_batch_size, ridge, logit_norm, alignment_seed: the
        :class:`ClassifierAlignmentPlugin`'s ``samples_per_class``, ``epochs``,
        ``lr``, ``temperature``, ``covariance``, ``keep_aligned``, ``batch_size``,
        ``ridge``, ``logit_norm``, ``seed``.
        features, head: attribute names on the model.
        current_classes_loss: as the authors' code (each task's head is trained on
            that task's logits only), the training loss is ``criterion`` over the
            logits of the current experience's classes, targets re-indexed, and
            samples of other classes ignored (target ``-100``, the default
            ``ignore_index`` of ``CrossEntropyLoss``; a mini-batch with none of the
            current classes, e.g. only replayed samples, gives a zero loss).
            Without it (False) the loss is ``Naive``'s, over all logits, which
            pushes old classes' logits down and leaves the alignment a much
            larger bias to undo. Evaluation always uses all logits.

    Attributes:
        slow_learner, alignment: the two plugins.
    """

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
        backbone_lr_scale: float = 0.01,
        norm_stats: str = "slow",
        samples_per_class: int = 256,
        alignment_epochs: int = 5,
        alignment_lr: float = 0.01,
        temperature: float = 0.1,
        covariance: str = "full",
        keep_aligned: bool = False,
        alignment_batch_size: int = 256,
        ridge: float = 1e-4,
        logit_norm: bool = True,
        alignment_seed: int = 0,
        features: str = "features",
        head: str = "classifier",
        current_classes_loss: bool = True,
        **base_kwargs,
    ) -> None:
        self.current_classes_loss = bool(current_classes_loss)
        self.slow_learner = SlowLearnerPlugin(
            backbone_lr_scale=backbone_lr_scale, head=head, norm_stats=norm_stats
        )
        self.alignment = ClassifierAlignmentPlugin(
            samples_per_class=samples_per_class,
            epochs=alignment_epochs,
            lr=alignment_lr,
            temperature=temperature,
            covariance=covariance,
            keep_aligned=keep_aligned,
            batch_size=alignment_batch_size,
            ridge=ridge,
            logit_norm=logit_norm,
            features=features,
            head=head,
            seed=alignment_seed,
        )
        get_submodule(model, features, "feature extractor")
        get_submodule(model, head, "head")
        super().__init__(
            model=model,
            optimizer=optimizer,
            criterion=CrossEntropyLoss() if criterion is None else criterion,
            train_mb_size=train_mb_size,
            train_epochs=train_epochs,
            eval_mb_size=eval_mb_size,
            device=device,
            plugins=[self.slow_learner, *(plugins or []), self.alignment],
            evaluator=evaluator,
            eval_every=eval_every,
            **base_kwargs,
        )

    def criterion(self):
        """``criterion`` over the current experience's classes while training (see above)."""
        if not (self.is_training and self.current_classes_loss):
            return super().criterion()
        classes = sorted(self.experience.classes_in_this_experience)
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
