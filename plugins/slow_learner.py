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

import math

import torch
from avalanche.core import SupervisedPlugin
from torch import nn

from ..models.classifier import model_part

NORM_STATS_MODES = ("slow", "frozen", "train")

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


def _check_options(backbone_lr_scale: object, head: object, norm_stats: object) -> None:
    """A ValueError/TypeError naming the first bad option of :class:`SlowLearnerPlugin`."""
    number = isinstance(backbone_lr_scale, (int, float)) and not isinstance(backbone_lr_scale, bool)
    if not number:
        raise TypeError(
            f"backbone_lr_scale must be a finite number >= 0, got {backbone_lr_scale!r}"
        )
    if not math.isfinite(backbone_lr_scale) or backbone_lr_scale < 0:
        raise ValueError(
            f"backbone_lr_scale must be a finite number >= 0, got {backbone_lr_scale!r}"
        )
    if not isinstance(head, str) or not head:
        raise ValueError(f"head must be an attribute name, got {head!r}")
    if not isinstance(norm_stats, str) or norm_stats not in NORM_STATS_MODES:
        raise ValueError(f"norm_stats must be one of {NORM_STATS_MODES}, got {norm_stats!r}")


class SlowLearnerPlugin(SupervisedPlugin):
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
    first experience see the groups before the split: build them afterwards or
    schedule per group.

    Batch-norm running statistics (``norm_stats``): the paper's ViT has none, but
    a CNN's running means and variances follow each experience's data at full
    speed whatever the learning rate, so the representation used at evaluation
    (and by :class:`ClassifierAlignmentPlugin`'s stored class statistics) drifts
    fast. ``"slow"`` (default) multiplies the representation's batch-norm
    ``momentum`` by ``backbone_lr_scale`` during training, ``"frozen"`` sets it to
    0, ``"train"`` leaves it (plain fine-tuning). The momenta are restored after
    each experience. ``bench/slca.py`` compares the modes (results in the README).

    Paper: backbone lr 1e-4, head lr 1e-2 (scale 0.01), SGD momentum 0.9.

    Args:
        backbone_lr_scale: factor (>= 0) on the representation's learning rate;
            0 freezes it in effect (gradients are still computed).
        head: attribute name of the classifier on the model.
        norm_stats: ``"slow"``, ``"frozen"`` or ``"train"``, see above.
    """

    def __init__(
        self,
        backbone_lr_scale: float = 0.01,
        *,
        head: str = "classifier",
        norm_stats: str = "slow",
    ) -> None:
        super().__init__()
        _check_options(backbone_lr_scale, head, norm_stats)
        self.backbone_lr_scale = float(backbone_lr_scale)
        self.head = head
        self.norm_stats = norm_stats
        self._norm_momenta: dict[nn.Module, float | None] = {}

    def before_training_exp(self, strategy, **kwargs) -> None:
        head = model_part(strategy.model, self.head, "head")
        split_param_groups(strategy.optimizer, list(head.parameters()), self.backbone_lr_scale)
        if self.norm_stats != "train":
            factor = self.backbone_lr_scale if self.norm_stats == "slow" else 0.0
            restore_norm_momentum(self._norm_momenta)
            self._norm_momenta = scale_norm_momentum(strategy.model, head, factor)

    def after_training_exp(self, strategy, **kwargs) -> None:
        restore_norm_momentum(self._norm_momenta)
        self._norm_momenta = {}

    def state_dict(self) -> dict:
        return {
            "backbone_lr_scale": self.backbone_lr_scale,
            "head": self.head,
            "norm_stats": self.norm_stats,
        }

    def load_state_dict(self, state: dict) -> None:
        """Load a :meth:`state_dict`; checked before anything changes."""
        if not isinstance(state, dict) or "backbone_lr_scale" not in state or "head" not in state:
            raise ValueError("state must be a SlowLearnerPlugin.state_dict()")
        _check_options(state["backbone_lr_scale"], state["head"], state.get("norm_stats", "slow"))
        self.backbone_lr_scale = float(state["backbone_lr_scale"])
        self.head = str(state["head"])
        self.norm_stats = str(state.get("norm_stats", "slow"))

