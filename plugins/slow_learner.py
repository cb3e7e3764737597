"""SLCA's slow learner: the representation learns much slower than the classifier.

Zhang, Wang, Kang, Chen, Wei, "SLCA: Slow Learner with Classifier Alignment for
Continual Learning on a Pre-trained Model", ICCV 2023 (Sec. 4.1). The optimizer
math is :func:`split_param_groups` and the batch-norm helpers
:func:`scale_norm_momentum` / :func:`restore_norm_momentum`;
:class:`SlowLearnerPlugin` applies them before each training experience.
The head is found on the model by attribute name (neve's model contract,
:mod:`neve.models.classifier`).
"""

from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin
from torch import nn

from ..models.classifier import model_part
from ..models.core.checks import check_int, check_number
from .training_modes import (
    backbone_to_eval,
    experience_classes,
    init_class_rows,
    restore_modes,
)

NORM_STATS_MODES = ("eval", "slow", "frozen", "train")
HEAD_INITS = (None, "trunc_normal")

# keys neve adds to an optimizer's param_groups (torch keeps extra keys)
_ROLE = "neve_slow_learner_role"
_PAIR = "neve_slow_learner_pair"


def split_param_groups(
    optimizer: torch.optim.Optimizer, head_params: list[nn.Parameter], backbone_lr_scale: float
) -> None:
    """Put head and non-head parameters in separate groups; non-head lr = head lr * scale.

    SLCA Sec. 4.1 (slow learner): the representation gets a learning rate
    ``backbone_lr_scale`` times the classifier's. Each of the optimizer's groups
    ``g`` (any optimizer class; all its hyper-parameters kept) becomes a pair:
    a head group with ``g``'s lr and a representation group with ``g['lr'] *
    backbone_lr_scale``. On later calls, the pairs are kept and parameters that
    sit in the wrong member of a pair (e.g. added by Avalanche's
    ``update_optimizer``) are moved; unpaired groups (added since) are split.
    Optimizer state (momentum, Adam moments) is keyed by parameter and survives.
    """
    head_ids = {id(p) for p in head_params}
    pairs: dict[int, dict[str, dict]] = {}
    unpaired = []
    for group in optimizer.param_groups:
        if _PAIR in group:
            pairs.setdefault(group[_PAIR], {})[group[_ROLE]] = group
        else:
            unpaired.append(group)
    new_groups = []
    for index in sorted(pairs):
        pair = pairs[index]
        head_group, backbone_group = pair.get("head"), pair.get("backbone")
        if head_group is None or backbone_group is None:
            raise ValueError("optimizer param_groups carry a broken slow-learner pair")
        params = list(head_group["params"]) + list(backbone_group["params"])
        head_group["params"] = [p for p in params if id(p) in head_ids]
        backbone_group["params"] = [p for p in params if id(p) not in head_ids]
        backbone_group["lr"] = head_group["lr"] * backbone_lr_scale
        new_groups += [head_group, backbone_group]
    next_index = max(pairs, default=-1) + 1
    for group in unpaired:
        hyper = {k: v for k, v in group.items() if k != "params"}
        params = list(group["params"])
        head_group = dict(hyper, params=[p for p in params if id(p) in head_ids])
        backbone_group = dict(hyper, params=[p for p in params if id(p) not in head_ids])
        backbone_group["lr"] = group["lr"] * backbone_lr_scale
        if "initial_lr" in backbone_group:  # set by torch LR schedulers
            backbone_group["initial_lr"] = group["initial_lr"] * backbone_lr_scale
        head_group.update({_PAIR: next_index, _ROLE: "head"})
        backbone_group.update({_PAIR: next_index, _ROLE: "backbone"})
        next_index += 1
        new_groups += [head_group, backbone_group]
    optimizer.param_groups[:] = new_groups


def scale_norm_momentum(
    model: nn.Module, exclude: nn.Module, factor: float
) -> dict[nn.Module, float | None]:
    """Multiply the ``momentum`` of ``model``'s batch-norm layers (outside ``exclude``).

    A batch-norm layer's running mean and variance follow the data with
    ``momentum`` per training step whatever the learning rate; scaling it by the
    slow learner's factor makes them drift as slowly as the weights (``factor=0``
    freezes them). Layers with ``momentum=None`` (cumulative average) are left as
    they are.

    Returns:
        The layers changed and their previous momentum, for
        :func:`restore_norm_momentum`.
    """
    skip = set(exclude.modules())
    changed: dict[nn.Module, float | None] = {}
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module not in skip:
            if module.momentum is not None:
                changed[module] = module.momentum
                module.momentum = module.momentum * factor
    return changed


def restore_norm_momentum(changed: dict[nn.Module, float | None]) -> None:
    """Undo :func:`scale_norm_momentum`."""
    for module, momentum in changed.items():
        module.momentum = momentum


def _check_options(backbone_lr_scale: object, head: object, norm_stats: object,
                   head_init: object = None, head_init_std: object = 0.02,
                   reset_optimizer: object = False, seed: object = 0) -> None:
    """A ValueError/TypeError naming the first bad option of :class:`SlowLearnerPlugin`."""
    if head_init not in HEAD_INITS:
        raise ValueError(f"head_init must be one of {HEAD_INITS}, got {head_init!r}")
    check_number(head_init_std, "head_init_std", positive=True)
    if not isinstance(reset_optimizer, bool):
        raise TypeError(f"reset_optimizer must be True or False, got {reset_optimizer!r}")
    check_int(seed, "seed", minimum=0)
    check_number(backbone_lr_scale, "backbone_lr_scale", positive=False)
    if not isinstance(head, str) or not head:
        raise ValueError(f"head must be an attribute name, got {head!r}")
    if not isinstance(norm_stats, str) or norm_stats not in NORM_STATS_MODES:
        raise ValueError(f"norm_stats must be one of {NORM_STATS_MODES}, got {norm_stats!r}")


class SlowLearnerPlugin(SupervisedPlugin, supports_distributed=True):
    """SLCA's slow learner: the representation learns ``backbone_lr_scale`` times slower.

    Before each training experience (after Avalanche has adapted the model, e.g.
    grown an ``IncrementalClassifier``, and updated the optimizer), every
    optimizer parameter group is split into a head group (``model.<head>``'s
    parameters, the group's own lr) and a representation group (all other
    parameters, lr times ``backbone_lr_scale``); see :func:`split_param_groups`.
    Avalanche's ``update_optimizer`` swaps a grown head's parameters in place and
    puts new parameters in the group of their siblings, so the split stays right;
    the plugin checks and repairs it each experience anyway. Works with any
    ``torch.optim`` optimizer. LR schedulers built on the optimizer before the
    first experience see the groups before the split: split first (call
    :func:`split_param_groups`, as :meth:`neve.strategies.SLCA.paper` does) or
    schedule per group.

    Normalisation handling (``norm_stats``): the paper's ViT has LayerNorm only,
    but a CNN's batch norm behaves differently in train mode (batch statistics,
    running statistics updated at full speed whatever the learning rate) and
    its dropout / stochastic depth are on, so the head learns on features other
    than those it is evaluated on (running statistics, no dropout) and that the
    stored class statistics of :class:`ClassifierAlignmentPlugin` describe.

    * ``"eval"``: the representation (every module outside ``model.<head>`` and
      its parents) is in eval mode while training: batch norm uses its running
      statistics and does not update them, dropout and drop-connect are off;
      its weights still learn at the slow rate and the head trains as usual.
      Training then sees the evaluation's features. The modes are restored
      after the experience.
    * ``"slow"`` (default): train mode, but the batch-norm ``momentum`` is
      multiplied by ``backbone_lr_scale``, so the running statistics drift as
      slowly as the weights; the train/eval mismatch of batch statistics and
      dropout stays.
    * ``"frozen"``: train mode with batch-norm momentum 0 (running statistics
      fixed, batch statistics still used in training).
    * ``"train"``: plain fine-tuning, nothing changed.

    Momenta are restored after each experience. Which mode ends best depends on
    how far the representation drifts; ``bench/slca.py`` measures the modes on
    a batch-norm backbone (results in the README). ``"slow"`` is the default
    because, over 3 seeds at two input sizes, it ends with the higher last
    accuracy (the paper's headline metric): its representation drifts less, so
    the stored class statistics stay valid. ``"eval"`` has the higher average
    accuracy and learns each experience as well as a frozen backbone does.

    Two options of the authors' code (neither is in the paper's text), each off by default:

    * ``head_init="trunc_normal"``: the rows of the head for classes met for the
      first time are re-drawn from a truncated normal (std ``head_init_std``,
      authors 0.02) with zero bias before the experience, as the authors' new
      per-task linear head (:func:`~neve.plugins.training_modes.init_class_rows`);
      experience k draws from ``torch.Generator().manual_seed(seed + k)``.
    * ``reset_optimizer=True``: the optimizer's state (momentum, Adam moments)
      is cleared before each experience, as a new optimizer per task.

    Paper: backbone lr 1e-4, head lr 1e-2 (scale 0.01), SGD momentum 0.9; all
    the paper's settings in :mod:`neve.strategies.slca_settings`.

    Args:
        backbone_lr_scale: factor (>= 0) on the representation's learning rate;
            0 freezes it in effect (gradients are still computed).
        head: attribute name of the classifier on the model.
        norm_stats: ``"eval"``, ``"slow"``, ``"frozen"`` or ``"train"``, see above.
        head_init: None (keep Avalanche's initialisation) or ``"trunc_normal"``.
        head_init_std: std of ``head_init`` (> 0).
        reset_optimizer: clear the optimizer state before each experience.
        seed: seeds ``head_init`` (int >= 0).

    Attributes:
        initialised_classes: classes whose head rows ``head_init`` has drawn.
    """

    def __init__(
        self,
        backbone_lr_scale: float = 0.01,
        *,
        head: str = "classifier",
        norm_stats: str = "slow",
        head_init: str | None = None,
        head_init_std: float = 0.02,
        reset_optimizer: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_options(backbone_lr_scale, head, norm_stats, head_init, head_init_std,
                       reset_optimizer, seed)
        self.backbone_lr_scale = float(backbone_lr_scale)
        self.head = head
        self.norm_stats = norm_stats
        self.head_init, self.head_init_std = head_init, float(head_init_std)
        self.reset_optimizer, self.seed = reset_optimizer, seed
        self.initialised_classes: set[int] = set()
        self._norm_momenta: dict[nn.Module, float | None] = {}
        self._modes: dict[nn.Module, bool] = {}

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
        restore_norm_momentum(self._norm_momenta)
        self._norm_momenta = {}
        if self.norm_stats in ("slow", "frozen"):
            factor = self.backbone_lr_scale if self.norm_stats == "slow" else 0.0
            self._norm_momenta = scale_norm_momentum(strategy.model, head, factor)
        self._set_eval(strategy)

    def before_training_epoch(self, strategy, **kwargs) -> None:
        self._set_eval(strategy)

    def _set_eval(self, strategy) -> None:
        """``"eval"``: the representation to eval mode (again, if something set it to train)."""
        if self.norm_stats == "eval":
            head = model_part(strategy.model, self.head, "head")
            for module, training in backbone_to_eval(strategy.model, head).items():
                self._modes.setdefault(module, training)

    def after_training_exp(self, strategy, **kwargs) -> None:
        restore_norm_momentum(self._norm_momenta)
        self._norm_momenta = {}
        restore_modes(self._modes)
        self._modes = {}

    def state_dict(self) -> dict:
        return {
            "backbone_lr_scale": self.backbone_lr_scale,
            "head": self.head,
            "norm_stats": self.norm_stats,
            "head_init": self.head_init,
            "head_init_std": self.head_init_std,
            "reset_optimizer": self.reset_optimizer,
            "seed": self.seed,
            "initialised_classes": sorted(self.initialised_classes),
        }

    def load_state_dict(self, state: dict) -> None:
        """Load a :meth:`state_dict`; checked before anything changes."""
        if not isinstance(state, dict) or "backbone_lr_scale" not in state or "head" not in state:
            raise ValueError("state must be a SlowLearnerPlugin.state_dict()")
        options = dict(norm_stats="slow", head_init=None, head_init_std=0.02,
                       reset_optimizer=False, seed=0)
        options.update({k: state[k] for k in options if k in state})
        _check_options(state["backbone_lr_scale"], state["head"], **options)
        classes = state.get("initialised_classes", [])
        if not isinstance(classes, (list, tuple, set)) or not all(
                isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes):
            raise ValueError(f"initialised_classes must be class ids >= 0, got {classes!r}")
        self.backbone_lr_scale = float(state["backbone_lr_scale"])
        self.head = str(state["head"])
        self.norm_stats = options["norm_stats"]
        self.head_init, self.head_init_std = options["head_init"], float(options["head_init_std"])
        self.reset_optimizer, self.seed = options["reset_optimizer"], options["seed"]
        self.initialised_classes = set(classes)
