"""SLCA's slow learner: the representation learns much slower than the classifier.

Zhang, Wang, Kang, Chen, Wei, "SLCA: Slow Learner with Classifier Alignment for
Continual Learning on a Pre-trained Model", ICCV 2023 (Sec. 4.1). The math is
:func:`neve.models.param_groups.split_param_groups` (the optimizer groups) and
:mod:`neve.models.norm_stats` (batch-norm running statistics);
:class:`SlowLearnerPlugin` applies them before each training experience.
The head is found on the model by attribute name (neve's model contract,
:mod:`neve.models.classifier`).
"""

from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin
from torch import nn

from ..models.backbone_modes import backbone_to_eval, restore_modes
from ..models.classifier import init_class_rows, model_part
from ..models.core.checks import Bool, OneOf, Real, Seed, Text, validate, validated
from ..models.norm_stats import (
    SlowRunningStats,
    attach_slow_running_stats,
    restore_norm_momentum,
    scale_norm_momentum,
)
from ..models.param_groups import split_param_groups
from .experience_data import experience_classes

NORM_STATS_MODES = ("eval_slow", "eval", "slow", "frozen", "train")
HEAD_INITS = (None, "trunc_normal")

#: The plugin's options and their constraints.
OPTIONS = {
    "backbone_lr_scale": Real(ge=0.0), "head": Text("an attribute name of the model"),
    "norm_stats": OneOf(*NORM_STATS_MODES), "head_init": OneOf(*HEAD_INITS),
    "head_init_std": Real(gt=0.0), "reset_optimizer": Bool(), "seed": Seed(),
}

__all__ = ["NORM_STATS_MODES", "OPTIONS", "SlowLearnerPlugin", "restore_norm_momentum",
           "scale_norm_momentum", "split_param_groups"]


class SlowLearnerPlugin(SupervisedPlugin, supports_distributed=True):
    """SLCA's slow learner: the representation learns ``backbone_lr_scale`` times slower.

    Before each training experience (after Avalanche has adapted the model, e.g.
    grown an ``IncrementalClassifier``, and updated the optimizer), every
    optimizer parameter group is split into a head group (``model.<head>``'s
    parameters, the group's own rates) and a representation group (all other
    parameters, rates times ``backbone_lr_scale``); see :func:`split_param_groups`.
    Avalanche's ``update_optimizer`` swaps a grown head's parameters in place and
    puts new parameters in the group of their siblings, so the split stays right;
    the plugin checks and repairs it each experience anyway. Works with any
    ``torch.optim`` optimizer. An LR scheduler built before the split keeps
    working per group: the rates it stores in the groups (``initial_lr``, and
    ``OneCycleLR``'s ``max_lr`` / ``min_lr``) are scaled with ``lr``; one that
    keeps per-group lists of its own (``base_lrs``) should be built after the
    split (call :func:`split_param_groups` first, as :meth:`neve.strategies.SLCA.paper`).

    Normalisation handling (``norm_stats``): the paper's ViT has LayerNorm only,
    but a CNN's batch norm behaves differently in train mode (batch statistics,
    running statistics updated at full speed whatever the learning rate) and
    its dropout / stochastic depth are on, so the head learns on features other
    than those it is evaluated on (running statistics, no dropout) and that the
    stored class statistics of :class:`ClassifierAlignmentPlugin` describe.
    The representation is every module outside ``model.<head>`` and its parents.

    * ``"eval"`` (default): the representation is in eval mode while training:
      batch norm normalises with its running statistics and does not update
      them, dropout and drop-connect are off; its weights still learn at the slow
      rate. Training sees the evaluation's features, so each experience is
      learned on the features it is evaluated on.
    * ``"eval_slow"``: as ``"eval"``, and after each training step's backward
      pass the running statistics move towards the step's batch statistics at
      ``momentum * backbone_lr_scale`` (the batch statistics never enter the
      forward; :class:`~neve.models.norm_stats.SlowRunningStats`), so they follow
      the data as slowly as the weights learn.
    * ``"slow"``: train mode, but the batch-norm ``momentum`` is multiplied by
      ``backbone_lr_scale``; the train/eval mismatch of batch statistics and
      dropout stays (the head learns on batch-normalised features).
    * ``"frozen"``: train mode with batch-norm momentum 0 (running statistics
      fixed, batch statistics still used in training).
    * ``"train"``: plain fine-tuning, nothing changed.

    Modes, momenta and hooks are restored after each experience.
    ``bench/slca.py`` compares the modes on a batch-norm backbone (README).

    Two options of the authors' code (neither is in the paper's text), each off by default:

    * ``head_init="trunc_normal"``: the rows of the head for classes met for the
      first time are re-drawn from a truncated normal (std ``head_init_std``,
      authors 0.02) with zero bias before the experience, as the authors' new
      per-task linear head (:func:`~neve.models.classifier.init_class_rows`);
      experience k draws from ``torch.Generator().manual_seed(seed + k)``.
    * ``reset_optimizer=True``: the optimizer's state (momentum, Adam moments)
      is cleared before each experience, as a new optimizer per task.

    Paper: backbone lr 1e-4, head lr 1e-2 (scale 0.01), SGD momentum 0.9; all
    the paper's settings in :mod:`neve.strategies.slca_settings`.

    The constraints of the arguments are the table :data:`OPTIONS`.

    Args:
        backbone_lr_scale: factor (>= 0) on the representation's learning rate;
            0 freezes it in effect (gradients are still computed).
        head: attribute name of the classifier on the model.
        norm_stats: one of :data:`NORM_STATS_MODES`, see above.
        head_init: None (keep Avalanche's initialisation) or ``"trunc_normal"``.
        head_init_std: std of ``head_init`` (> 0).
        reset_optimizer: clear the optimizer state before each experience.
        seed: seeds ``head_init`` (:class:`~neve.models.core.checks.Seed`).

    Attributes:
        initialised_classes: classes whose head rows ``head_init`` has drawn.
    """

    @validated(**OPTIONS)
    def __init__(
        self,
        backbone_lr_scale: float = 0.01,
        *,
        head: str = "classifier",
        norm_stats: str = "eval",
        head_init: str | None = None,
        head_init_std: float = 0.02,
        reset_optimizer: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        vars(self).update({k: v for k, v in locals().items() if k in OPTIONS})
        self.initialised_classes: set[int] = set()
        self._norm_momenta: dict[nn.Module, float | None] = {}
        self._modes: dict[nn.Module, bool] = {}
        self._running_stats: SlowRunningStats | None = None

    def before_training_exp(self, strategy, **kwargs) -> None:
        head = model_part(strategy.model, self.head, "head")
        if self.head_init is not None:
            new = [c for c in experience_classes(strategy.experience)
                   if c not in self.initialised_classes]
            generator = torch.Generator().manual_seed(
                self.seed + strategy.clock.train_exp_counter)
            init_class_rows(head, new, self.head_init_std, generator)
            self.initialised_classes.update(new)
        if self.reset_optimizer:
            strategy.optimizer.state.clear()
        split_param_groups(strategy.optimizer, list(head.parameters()), self.backbone_lr_scale)
        self._restore()
        if self.norm_stats in ("slow", "frozen"):
            factor = self.backbone_lr_scale if self.norm_stats == "slow" else 0.0
            self._norm_momenta = scale_norm_momentum(strategy.model, head, factor)
        elif self.norm_stats == "eval_slow":
            self._running_stats = attach_slow_running_stats(strategy.model, head,
                                                            self.backbone_lr_scale)
        self._set_eval(strategy)

    def before_training_epoch(self, strategy, **kwargs) -> None:
        self._set_eval(strategy)

    def _set_eval(self, strategy) -> None:
        """``"eval"``/``"eval_slow"``: the representation to eval mode (again, if something
        set it to train)."""
        if self.norm_stats in ("eval", "eval_slow"):
            head = model_part(strategy.model, self.head, "head")
            for module, training in backbone_to_eval(strategy.model, head).items():
                self._modes.setdefault(module, training)

    def before_forward(self, strategy, **kwargs) -> None:
        """``"eval_slow"``: the training forward moves the running statistics."""
        if self._running_stats is not None:
            self._running_stats.active = True

    def after_forward(self, strategy, **kwargs) -> None:
        if self._running_stats is not None:
            self._running_stats.active = False

    def after_backward(self, strategy, **kwargs) -> None:
        if self._running_stats is not None:
            self._running_stats.commit()

    def after_training_exp(self, strategy, **kwargs) -> None:
        self._restore()

    def _restore(self) -> None:
        """Momenta, modes and hooks as they were before the experience."""
        restore_norm_momentum(self._norm_momenta)
        restore_modes(self._modes)
        if self._running_stats is not None:
            self._running_stats.detach()
        self._norm_momenta, self._modes, self._running_stats = {}, {}, None

    def state_dict(self) -> dict:
        return {**{key: getattr(self, key) for key in OPTIONS},
                "initialised_classes": sorted(self.initialised_classes)}

    def load_state_dict(self, state: dict) -> None:
        """Load a :meth:`state_dict` (options missing from it keep their values); checked
        before anything changes."""
        if not isinstance(state, dict) or "backbone_lr_scale" not in state or "head" not in state:
            raise ValueError("state must be a SlowLearnerPlugin.state_dict()")
        options = validate(OPTIONS, {**{k: getattr(self, k) for k in OPTIONS},
                                     **{k: state[k] for k in OPTIONS if k in state}})
        classes = state.get("initialised_classes", [])
        if not isinstance(classes, (list, tuple, set)) or not all(
                isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes):
            raise ValueError(f"initialised_classes must be class ids >= 0, got {classes!r}")
        vars(self).update(options, initialised_classes=set(classes))
